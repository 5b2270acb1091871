//! The whole request decision, from the buffered body to what the host must do: the body scan,
//! the model decision, the pick, the body edit and the headers, or the reply that ends the
//! request. The host carries the plan out (`src/filter.rs`); nothing here calls the proxy except
//! through the shared store the pick counts in.

use super::{decide_model, ModelDecision};
use crate::config::{find_objective, Config, Criticality, FailureMode};
use crate::host::{Say, SharedStore};
use crate::openai::{self, BodyEdit, InferenceApi};
use crate::pool::view::Members;
use crate::scheduling::worker::{Pick, RequestFacts, WorkerScheduler};
use crate::stats::RequestLabels;
use std::rc::Rc;

/// An error reply the filter sends itself (docs/contract.md section 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl Reply {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            kind,
            message: message.into(),
        }
    }

    /// Its `inference_router_requests_total` outcome.
    pub fn outcome(&self) -> &'static str {
        match self.status {
            429 => "shed",
            503 => "unavailable",
            _ => "rejected",
        }
    }

    pub fn body(&self) -> String {
        openai::error_body(self.status, self.kind, &self.message)
    }
}

/// The request headers the decision reads (their configured names), as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHeaders<'a> {
    /// `sessionHeader`: makes the weighted pick sticky.
    pub session: Option<&'a [u8]>,
    /// `objectiveHeader`: an objective's name, ranking the request.
    pub objective: Option<&'a [u8]>,
    /// `fairnessHeader`: the flow (tenant) the request belongs to.
    pub fairness: Option<&'a [u8]>,
}

/// Where the request goes and how it changes on the way.
#[derive(Debug)]
pub struct Route {
    /// The picked member (`Members::endpoints[index]`); None when no pool was decided (a
    /// passthrough without `defaultPool`: Envoy's own route decides).
    pub member: Option<(Rc<Members>, usize)>,
    /// The pick is counted in flight: release it when the request ends.
    pub counted: bool,
    /// The body's edit (model value, and the usage request of a stream), if any.
    pub body: Option<BodyEdit>,
    /// The `x-gateway-model-name` value: the target model.
    pub model: String,
    /// The client asked for a stream.
    pub streaming: bool,
    /// `routed`, `failed_open` or `passthrough`.
    pub outcome: &'static str,
    /// Its rank: the objective header's, else its model entry's, else the default.
    pub priority: i32,
    /// Its flow for fairness: a hash of the fairness header (0: none sent).
    pub fairness: u64,
}

impl Route {
    /// The picked endpoint's `ip:port`.
    pub fn endpoint(&self) -> Option<&str> {
        self.member
            .as_ref()
            .and_then(|(m, i)| m.endpoints.get(*i))
            .map(String::as_str)
    }
}

/// The decision for one request.
#[derive(Debug)]
pub struct Plan {
    /// Label values for its stats.
    pub labels: RequestLabels,
    /// The model the client asked for (None: the body had none).
    pub requested: Option<String>,
    pub action: Result<Route, Reply>,
}

/// A request flow control holds before its pick: what its queue needs.
#[derive(Debug, Clone)]
pub struct Held {
    pub pool: usize,
    pub priority: i32,
    /// Its fairness id (`Route::fairness`).
    pub flow: u64,
    pub labels: RequestLabels,
    pub requested: Option<String>,
}

/// Decide what to do with a request whose whole body is `body`. `headers`: the configured request
/// headers, if sent; `api`: which inference API the path is.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    config: &Config,
    scheduler: &WorkerScheduler,
    store: &(impl SharedStore + ?Sized),
    say: &(impl Say + ?Sized),
    api: Option<InferenceApi>,
    body: &[u8],
    headers: RequestHeaders<'_>,
    now_ms: u64,
) -> Plan {
    let admit_all: Option<&mut dyn FnMut(&Held) -> bool> = None;
    plan_admitted(
        config, scheduler, store, say, api, body, headers, now_ms, admit_all,
    )
    .unwrap_or_else(|held| Plan {
        labels: held.labels,
        requested: held.requested,
        action: Err(Reply::new(503, "service_unavailable", "request held")),
    })
}

/// `plan`, asking `admit` (flow control) before the pick whether a request bound for a pool goes
/// on now; a request it refuses comes back as `Held`, to be planned again when dispatched.
#[allow(clippy::too_many_arguments)]
pub fn plan_admitted(
    config: &Config,
    scheduler: &WorkerScheduler,
    store: &(impl SharedStore + ?Sized),
    say: &(impl Say + ?Sized),
    api: Option<InferenceApi>,
    body: &[u8],
    headers: RequestHeaders<'_>,
    now_ms: u64,
    admit: Option<&mut dyn FnMut(&Held) -> bool>,
) -> Result<Plan, Held> {
    let fields = match openai::scan_request(body) {
        Ok(f) => f,
        Err(e) => {
            return Ok(Plan {
                labels: RequestLabels::default(),
                requested: None,
                action: Err(Reply::new(400, "invalid_request_error", e.message())),
            })
        }
    };
    let session = headers
        .session
        .or(fields.user.as_deref().map(str::as_bytes));
    let decision = decide_model(config, &fields.model, session, scheduler.random());
    let labels = RequestLabels::of(config, &decision);
    let mut requested = Some(crate::openai::errors::bounded_quote(&fields.model).into_owned());
    let (pool, target, priority, passthrough) = match decision {
        ModelDecision::Reject => {
            let msg = format!(
                "The model `{}` does not exist.",
                crate::openai::errors::bounded_quote(&fields.model)
            );
            return Ok(Plan {
                labels,
                requested,
                action: Err(Reply::new(404, "NotFoundError", msg)),
            });
        }
        ModelDecision::Passthrough { pool } => (pool, None, config.default_priority, true),
        ModelDecision::Fallback { pool, target } => {
            (Some(pool), Some(target), config.default_priority, false)
        }
        ModelDecision::Configured { model, target } => {
            (Some(model.pool), target, model.priority, false)
        }
    };
    // A known objective of this pool outranks the model's own; an unknown one changes nothing.
    let priority = headers
        .objective
        .and_then(|name| find_objective(&config.objectives, name, pool))
        .map_or(priority, |o| o.priority);
    let criticality = Criticality::of_priority(priority);
    let mut route = Route {
        member: None,
        counted: false,
        body: None,
        model: target.unwrap_or(&fields.model).to_string(),
        streaming: fields.stream,
        outcome: if passthrough { "passthrough" } else { "routed" },
        priority,
        fairness: headers
            .fairness
            .filter(|f| !f.is_empty())
            .map_or(0, crate::rollout::stable_hash),
    };
    if let (Some(pool), Some(admit)) = (pool, admit) {
        let held = Held {
            pool,
            priority,
            flow: route.fairness,
            labels,
            requested,
        };
        if !admit(&held) {
            return Err(held);
        }
        requested = held.requested;
    }
    if let Some(pool) = pool {
        // Only PREFIX_CACHE reads the prompt; other strategies never hash it.
        let prompt: &[u8] = match (&fields.prompt_span, config.strategy.needs_prefix()) {
            (Some(span), true) => body.get(span.clone()).unwrap_or_default(),
            _ => &[],
        };
        let facts = RequestFacts {
            target_model: &route.model,
            criticality,
            prompt,
        };
        let name = config.pools.get(pool).map_or("?", |p| p.name.as_str());
        match scheduler.pick(store, say, pool, &facts, now_ms) {
            Pick::Endpoint {
                members,
                index,
                counted,
                fail_open,
            } => {
                route.member = Some((members, index));
                route.counted = counted;
                if fail_open && !passthrough {
                    route.outcome = "failed_open";
                }
            }
            Pick::Shed => {
                let msg = format!("pool \"{name}\" is saturated; sheddable request dropped");
                return Ok(Plan {
                    labels,
                    requested,
                    action: Err(Reply::new(429, "rate_limit_exceeded", msg)),
                });
            }
            // Nothing is known of a discovered pool until its collector publishes it: failing
            // open leaves the pick to the cluster's own load balancing.
            Pick::MembersUnknown if config.failure_mode == FailureMode::FailOpen => {
                route.outcome = "failed_open";
            }
            Pick::MembersUnknown => {
                let msg = format!(
                    "no members of pool \"{name}\" known yet: no collector has published its discovery"
                );
                return Ok(Plan {
                    labels,
                    requested,
                    action: Err(Reply::new(503, "service_unavailable", msg)),
                });
            }
            Pick::Unavailable => {
                let msg = format!("no endpoint available in pool \"{name}\"");
                return Ok(Plan {
                    labels,
                    requested,
                    action: Err(Reply::new(503, "service_unavailable", msg)),
                });
            }
        }
    }
    // Streams report usage only when asked: ask on the client's behalf (the response tap takes
    // it out again).
    let ask_usage = fields.stream
        && matches!(
            api,
            Some(InferenceApi::Completions | InferenceApi::ChatCompletions)
        );
    route.body = openai::plan_body_edit(body, &fields, target, ask_usage);
    Ok(Plan {
        labels,
        requested,
        action: Ok(route),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::MemHost;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config(extra: &str) -> Config {
        let doc = format!(
            r#"{{"pools":[{{"name":"p","endpoints":["10.0.0.1:80"]}},{{"name":"empty","endpoints":[]}}],
                 "models":[{{"modelName":"lora","poolRef":"p","targetModels":[{{"name":"sql","weight":1}}]}},
                           {{"modelName":"orphan","poolRef":"empty"}}],
                 "scheduling":{{"strategy":"ROUND_ROBIN"}}{extra}}}"#
        );
        Config::parse(doc.as_bytes()).unwrap()
    }

    fn run(c: &Config, body: &str) -> Plan {
        let host = MemHost::default();
        let s = WorkerScheduler::new(c, 7);
        plan(
            c,
            &s,
            &host,
            &host,
            Some(InferenceApi::Completions),
            body.as_bytes(),
            RequestHeaders::default(),
            0,
        )
    }

    #[test]
    fn a_configured_model_is_routed_with_its_target_and_edit() {
        let c = config("");
        let body = r#"{"model":"lora","prompt":"hi","stream":true}"#;
        let p = run(&c, body);
        let route = p.action.unwrap();
        assert_eq!(route.endpoint(), Some("10.0.0.1:80"));
        assert_eq!(route.model, "sql");
        assert_eq!(route.outcome, "routed");
        let edit = route.body.unwrap();
        assert!(edit.usage_injected);
        let out: serde_json::Value = serde_json::from_slice(&edit.apply(body.as_bytes())).unwrap();
        assert_eq!(out["model"], "sql");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(p.requested.as_deref(), Some("lora"));
    }

    #[test]
    fn every_reply_of_the_contract() {
        let c = config(r#","unknownModels":"reject""#);
        for (body, status) in [
            ("{oops", 400),
            (r#"{"prompt":"x"}"#, 400),
            (r#"{"model":"nope"}"#, 404),
            (r#"{"model":"orphan"}"#, 503),
        ] {
            let reply = run(&c, body).action.unwrap_err();
            assert_eq!(reply.status, status, "{body}");
            let v: serde_json::Value = serde_json::from_str(&reply.body()).unwrap();
            assert_eq!(v["error"]["code"], status);
        }
    }

    #[test]
    fn a_discovered_pool_nobody_published_fails_open_or_closed_as_configured() {
        let doc = |mode: &str| {
            Config::parse(
                format!(
                    r#"{{"pools":[{{"name":"d","discovery":{{"cluster":"c","adminCluster":"a"}}}}],
                        "defaultPool":"d","failureMode":"{mode}"}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let open = run(&doc("FailOpen"), r#"{"model":"m"}"#).action.unwrap();
        assert!(open.member.is_none(), "left to the cluster");
        assert_eq!(open.outcome, "failed_open");
        let closed = run(&doc("FailClose"), r#"{"model":"m"}"#)
            .action
            .unwrap_err();
        assert_eq!(closed.status, 503);
        assert!(
            closed.message.contains("no collector has published"),
            "{}",
            closed.message
        );
    }

    #[test]
    fn a_passthrough_without_default_pool_is_left_to_envoy_unchanged() {
        let c = config("");
        let route = run(&c, r#"{"model":"other","prompt":"x"}"#).action.unwrap();
        assert!(route.member.is_none());
        assert!(route.body.is_none());
        assert_eq!(
            (route.model.as_str(), route.outcome),
            ("other", "passthrough")
        );
    }

    #[test]
    fn the_objective_header_ranks_a_request_and_the_fairness_header_names_its_flow() {
        let c = config(
            r#","defaultPool":"p","objectives":[{"name":"gold","priority":7},{"name":"elsewhere","priority":9,"poolRef":"empty"}]"#,
        );
        let host = MemHost::default();
        let s = WorkerScheduler::new(&c, 7);
        let run_with = |objective: Option<&[u8]>, fairness: Option<&[u8]>| {
            let headers = RequestHeaders {
                session: None,
                objective,
                fairness,
            };
            let body = br#"{"model":"lora","prompt":"x"}"#;
            plan(&c, &s, &host, &host, None, body, headers, 0)
                .action
                .unwrap()
        };
        assert_eq!(
            run_with(None, None).priority,
            0,
            "the model's own: Standard"
        );
        assert_eq!(run_with(Some(b"gold"), None).priority, 7);
        // Unknown names and objectives of other pools change nothing.
        assert_eq!(run_with(Some(b"no-such"), None).priority, 0);
        assert_eq!(run_with(Some(b"elsewhere"), None).priority, 0);
        let (a, b) = (
            run_with(None, Some(b"tenant-a")),
            run_with(None, Some(b"tenant-b")),
        );
        assert_ne!(a.fairness, b.fairness);
        assert_eq!(a.fairness, run_with(None, Some(b"tenant-a")).fairness);
        assert_eq!(run_with(None, None).fairness, 0);
    }

    #[test]
    fn flow_control_is_asked_before_the_pick_and_a_held_request_is_not_counted() {
        let c = config(r#","objectives":[{"name":"gold","priority":7}]"#);
        let host = MemHost::default();
        let s = WorkerScheduler::new(&c, 7);
        let headers = RequestHeaders {
            session: None,
            objective: Some(b"gold"),
            fairness: Some(b"t"),
        };
        let mut asked = Vec::new();
        let mut run = |body: &[u8], go: bool| {
            let mut admit = |h: &Held| {
                asked.push((h.pool, h.priority));
                go
            };
            plan_admitted(
                &c,
                &s,
                &host,
                &host,
                None,
                body,
                headers,
                0,
                Some(&mut admit),
            )
        };
        let held = run(br#"{"model":"lora","prompt":"x"}"#, false).unwrap_err();
        assert_eq!((held.pool, held.priority), (0, 7));
        assert_eq!(held.requested.as_deref(), Some("lora"));
        assert_ne!(held.flow, 0);
        assert!(run(br#"{"model":"lora","prompt":"x"}"#, true)
            .unwrap()
            .action
            .is_ok());
        // Bad bodies are answered, never held; nor is a passthrough with no pool.
        assert_eq!(run(b"{", false).unwrap().action.unwrap_err().status, 400);
        let passthrough = run(br#"{"model":"nope"}"#, false).unwrap().action.unwrap();
        assert_eq!(passthrough.outcome, "passthrough");
        assert_eq!(asked, vec![(0, 7), (0, 7)]);
    }

    #[test]
    fn rewrite_rules_rename_matched_and_unmatched_models() {
        let c = config(
            r#","defaultPool":"p","unknownModels":"reject","modelRewrites":[{"poolRef":"p","rules":[
                {"matches":[{"model":{"value":"food"}}],"targets":[{"modelRewrite":"food-v2"}]},
                {"matches":[],"targets":[{"modelRewrite":"base"}]}]}]"#,
        );
        let body = r#"{"model":"food","prompt":"x"}"#;
        let route = run(&c, body).action.unwrap();
        assert_eq!((route.model.as_str(), route.outcome), ("food-v2", "routed"));
        let out = route.body.unwrap().apply(body.as_bytes());
        assert_eq!(out, br#"{"model":"food-v2","prompt":"x"}"#);
        // Anything else the default pool gets goes to the match-everything rule's target, even
        // under unknownModels: reject; its labels stay bounded.
        let p = run(&c, r#"{"model":"whatever-a-client-sends","prompt":"x"}"#);
        let name = crate::stats::RequestMetric::Requests("routed").name(&c, p.labels);
        assert!(
            name.contains("model=.=other;.;target_model=.=base;.;"),
            "{name}"
        );
        assert_eq!(p.action.unwrap().model, "base");
    }
}
