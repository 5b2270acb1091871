//! The HTTP filter: one `InferenceFilter` per request, the request flow and its host calls. Every
//! decision is the core's: the plan (`router_core::request::plan`: body scan, model, pick, body
//! edit, or the reply), the label values (`stats::request`), the response's usage
//! (`openai::ResponseTap`).
//!
//! Request flow (docs/contract.md section 4): hold the headers, buffer the body, plan, then carry
//! the plan out (rewrite the body, set the routing headers, clear the route cache) or send its
//! reply. Two modes: the single filter pauses the headers itself (Envoy must allow it with
//! `allow_on_headers_stop_iteration`); the reader lets them go on to the gate (`crate::gate`),
//! which holds them, and sends it the header edits instead of making them.

use crate::flow::{Flow, Ticket};
use crate::gate::GateLink;
use crate::host::{self, Envoy};
use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use router_core::config::{Config, FailureMode, ListModels};
use router_core::gate::{GateAddress, HeaderEdit, Release, READER_MARK_KEY};
use router_core::openai::{self, InferenceApi, ResponseTap, Usage};
use router_core::pool::view::Members;
use router_core::request::plan::{plan_admitted, Held, Reply, RequestHeaders};
use router_core::scheduling::worker::WorkerScheduler;
use router_core::stats::{self, RequestLabels, RequestMetric};
use std::cell::RefCell;
use std::rc::Rc;

/// The largest pod `/v1/models` answer merged into the gateway's list.
const MAX_POD_MODELS_BYTES: usize = 4 * 1024 * 1024;

pub const MODEL_NAME_HEADER: &str = "x-gateway-model-name";

/// What one worker's filter instances share: the configuration and the worker's scheduler.
pub struct FilterState {
    pub(crate) config: Config,
    pub(crate) scheduler: WorkerScheduler,
    /// Metric ids per metric and label set, so a request never builds a metric name once its
    /// label set has been seen.
    metric_ids: RefCell<host_stats::IdMap<(RequestMetric, RequestLabels), Option<u32>>>,
    /// Reader mode: how the decision reaches the gate.
    gate: GateLink,
    /// `flowControl`: this worker's held requests.
    flow: Option<Flow>,
}

impl FilterState {
    pub fn new(config: Config, seed: u64) -> FilterState {
        let flow = config.flow_control.map(|settings| {
            Flow::new(
                settings,
                config.pools.iter().map(|p| p.name.clone()).collect(),
                &router_core::shared::Keys::new(&config.instance),
                seed,
            )
        });
        let state = FilterState {
            scheduler: WorkerScheduler::new(&config, seed),
            config,
            metric_ids: RefCell::new(host_stats::IdMap::default()),
            gate: GateLink::default(),
            flow,
        };
        if let Some(flow) = &state.flow {
            let mut priorities: Vec<i32> = state.config.models.iter().map(|m| m.priority).collect();
            priorities.extend(state.config.objectives.iter().map(|o| o.priority));
            priorities.push(state.config.default_priority);
            priorities.sort_unstable();
            priorities.dedup();
            flow.ready_stats(&priorities);
        }
        // The outcomes alerts watch exist at zero from the start, per pool, so `increase()` and
        // `rate()` see the first one rather than "no data".
        for pool in 0..state.config.pools.len() {
            for outcome in ["shed", "unavailable", "failed_open", "rejected"] {
                let labels = RequestLabels {
                    pool: Some(pool),
                    ..RequestLabels::default()
                };
                state.add(RequestMetric::Requests(outcome), labels, 0);
            }
        }
        state
    }

    /// Add to a counter or record in a histogram, defining its id on the first use of its label set.
    fn add(&self, metric: RequestMetric, labels: RequestLabels, value: u64) {
        if crate::probe::skips("stats") {
            return;
        }
        let mut ids = self.metric_ids.borrow_mut();
        let id = *ids.entry((metric, labels)).or_insert_with(|| {
            let name = metric.name(&self.config, labels);
            if metric.is_histogram() {
                host_stats::define_histogram(&name)
            } else {
                host_stats::define_counter(&name)
            }
        });
        match (id, metric.is_histogram()) {
            (Some(id), true) => host_stats::record_id(id, value),
            (Some(id), false) => host_stats::increment_id(id, value),
            (None, _) => {}
        }
    }

    /// Count a request in `inference_router_requests_total` with its outcome.
    pub(crate) fn count(&self, outcome: &'static str, labels: RequestLabels) {
        self.add(RequestMetric::Requests(outcome), labels, 1);
    }

    /// Send `reply` on the current stream (this context's, or the one the root made effective).
    fn send_reply(&self, reply: &Reply, labels: RequestLabels) -> Decided {
        log::debug!("{} {}: {}", reply.status, reply.kind, reply.message);
        self.count(reply.outcome(), labels);
        let sent = hostcalls::send_http_response(
            u32::from(reply.status),
            vec![("content-type", "application/json")],
            Some(reply.body().as_bytes()),
        );
        if let Err(e) = sent {
            log::warn!("reply {} not sent: {e:?}", reply.status);
        }
        Decided {
            labels,
            outcome: reply.outcome(),
            inference: true,
            ..Decided::default()
        }
    }

    pub(crate) fn flow(&self) -> Option<&Flow> {
        self.flow.as_ref()
    }

    /// Plan the request whose whole body is `body` and carry the plan out on the current stream:
    /// rewrite the body, set the routing headers (here, or through the reader's `gate`), or reply.
    /// `arriving`: the request's context id when it has just arrived, and flow control (if on) is
    /// asked whether it goes on now or is held.
    pub(crate) fn carry_out(
        &self,
        inputs: &Inputs,
        gate: Option<GateAddress>,
        body: &[u8],
        arriving: Option<u32>,
    ) -> Carried {
        let config = &self.config;
        let now = host::now_ms();
        let flow = self.flow.as_ref().filter(|_| arriving.is_some());
        let mut admit = |h: &Held| {
            flow.is_none_or(|f| {
                f.admits(
                    self.scheduler.load(&Envoy, &Envoy, h.pool, now),
                    h.pool,
                    h.priority,
                    now,
                )
            })
        };
        let admit: Option<&mut dyn FnMut(&Held) -> bool> = match flow {
            Some(_) => Some(&mut admit),
            None => None,
        };
        let planned = plan_admitted(
            config,
            &self.scheduler,
            &Envoy,
            &Envoy,
            inputs.api,
            body,
            RequestHeaders {
                session: inputs.session.as_deref(),
                objective: inputs.objective.as_deref(),
                fairness: inputs.fairness.as_deref(),
            },
            now,
            admit,
        );
        let plan = match (planned, flow, arriving) {
            (Ok(plan), _, _) => plan,
            (Err(held), Some(flow), Some(id)) => {
                return match self.hold(flow, id, inputs, gate, body.len(), held) {
                    Some(ticket) => Carried::Held(ticket),
                    None => Carried::Replied(Decided::default()),
                }
            }
            (Err(held), _, _) => {
                let reply = Reply::new(503, "service_unavailable", "request held");
                let mut decided = self.send_reply(&reply, held.labels);
                decided.requested_model = held.requested;
                return Carried::Replied(decided);
            }
        };
        let route = match plan.action {
            Ok(route) => route,
            Err(reply) => {
                let mut decided = self.send_reply(&reply, plan.labels);
                decided.requested_model = plan.requested;
                return Carried::Replied(decided);
            }
        };
        if let Some((members, index)) = &route.member {
            count_pick(members, *index);
        }
        let mut decided = Decided {
            labels: plan.labels,
            requested_model: plan.requested,
            inference: true,
            ..Decided::default()
        };
        let mut headers = Vec::with_capacity(3);
        if let Some(endpoint) = route.endpoint() {
            headers.push((config.destination_header.clone(), endpoint.to_string()));
            decided.endpoint = Some(endpoint.to_string());
        }
        if let Some(edit) = &route.body {
            let set =
                hostcalls::set_buffer(BufferType::HttpRequestBody, 0, edit.replaced, &edit.bytes);
            if let Err(e) = set {
                log::warn!("request body not rewritten: {e:?}");
            }
            decided.usage_injected = edit.usage_injected;
            if inputs.had_content_length {
                headers.push(("content-length".to_string(), edit.new_len.to_string()));
            }
        }
        // Envoy refuses header values with control characters; such a name simply goes without it.
        if route.model.bytes().all(|b| b >= 0x20 && b != 0x7f) {
            headers.push((MODEL_NAME_HEADER.to_string(), route.model.clone()));
        }
        if let Err(reply) = self.set_routing_headers(gate, headers) {
            // The pick was counted in flight: nothing will release it but this.
            if let (true, Some((members, i))) = (route.counted, &route.member) {
                members.counters.release(&Envoy, *i);
            }
            let mut replied = self.send_reply(&reply, decided.labels);
            replied.requested_model = decided.requested_model;
            return Carried::Replied(replied);
        }
        self.count(route.outcome, decided.labels);
        decided.outcome = route.outcome;
        decided.target_model = Some(route.model);
        if route.counted {
            decided.counted = route.member;
        }
        decided.routed = true;
        decided.streaming = route.streaming;
        Carried::Routed(decided)
    }

    /// Set the decision's headers and have the route picked again: here (single filter), or by
    /// the gate, which then resumes the request.
    fn set_routing_headers(
        &self,
        gate: Option<GateAddress>,
        headers: Vec<(String, String)>,
    ) -> Result<(), Reply> {
        let Some(gate) = gate else {
            host::edit_request_headers(
                headers.iter().map(|(n, v)| (n.as_str(), Some(v.as_str()))),
                true,
            );
            return Ok(());
        };
        let release = Release {
            context_id: gate.context_id,
            edits: headers
                .into_iter()
                .map(|(name, value)| HeaderEdit {
                    name,
                    value: Some(value),
                })
                .collect(),
            clear_route_cache: true,
        };
        self.gate.send(&gate, &release).map_err(|e| {
            log::warn!("reader: the gate is not reachable: {e}");
            Reply::new(
                503,
                "service_unavailable",
                "inference-router: the gate filter is not reachable",
            )
        })
    }

    /// Whether this worker runs a prefix index that wants `share_prefixes` on a timer.
    pub fn shares_prefixes(&self) -> bool {
        self.scheduler.shares_prefixes()
    }

    /// Exchange prefix-index records with the other workers (rate-limited by the scheduler).
    pub fn share_prefixes(&self, now_ms: u64) {
        self.scheduler.share_prefixes(&Envoy, &Envoy, now_ms);
    }
}

/// How the filter holds the request while it reads the body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Pause the headers here (`allow_on_headers_stop_iteration: true`).
    Single,
    /// Let the headers go on to the gate, which holds them; send it the header edits.
    Reader,
}

/// A request's inputs to its decision: kept while it waits, so the decision can be made later
/// from the worker's root context.
#[derive(Default, Clone)]
pub(crate) struct Inputs {
    mode: Option<Mode>,
    api: Option<InferenceApi>,
    had_content_length: bool,
    session: Option<Vec<u8>>,
    objective: Option<Vec<u8>>,
    fairness: Option<Vec<u8>>,
}

/// What a request's decision leaves for its response side.
#[derive(Default)]
pub struct Decided {
    /// Bounded label values of this request's stats.
    labels: RequestLabels,
    outcome: &'static str,
    /// An inference request (routed or answered by the filter): its fields go to the access log.
    inference: bool,
    /// Routed: its response is timed and its tokens counted.
    routed: bool,
    streaming: bool,
    usage_injected: bool,
    /// The member counted in flight, released in `on_log`.
    counted: Option<(Rc<Members>, usize)>,
    requested_model: Option<String>,
    target_model: Option<String>,
    endpoint: Option<String>,
}

impl Decided {
    /// A request the filter answered itself.
    pub(crate) fn replied(
        labels: RequestLabels,
        outcome: &'static str,
        requested_model: Option<String>,
    ) -> Decided {
        Decided {
            labels,
            outcome,
            inference: true,
            requested_model,
            ..Decided::default()
        }
    }
}

/// How a decision was carried out on the stream.
pub(crate) enum Carried {
    /// Routed: the request goes on.
    Routed(Decided),
    /// Answered by the filter (the reply is sent).
    Replied(Decided),
    /// Held by flow control: the decision comes later, through the ticket.
    Held(Ticket),
}

pub struct InferenceFilter {
    state: Rc<FilterState>,
    context_id: u32,
    /// Held by flow control: where the decision will be left.
    ticket: Option<Ticket>,
    /// An inference request whose body is being buffered.
    buffering: bool,
    inputs: Inputs,
    decided: Decided,
    tap: ResponseTap,
    usage: Option<Usage>,
    /// When the request headers arrived, the first response body byte, the first token (ms).
    started_ms: u64,
    first_byte_ms: Option<u64>,
    first_token_ms: Option<u64>,
    /// `GET /v1/models` in merge mode: the call asking a pod for its own list.
    models_call: Option<u32>,
}

impl InferenceFilter {
    pub fn new(state: Rc<FilterState>, mode: Mode, context_id: u32) -> InferenceFilter {
        InferenceFilter {
            state,
            context_id,
            ticket: None,
            buffering: false,
            inputs: Inputs {
                mode: Some(mode),
                ..Inputs::default()
            },
            decided: Decided::default(),
            tap: ResponseTap::None,
            usage: None,
            started_ms: 0,
            first_byte_ms: None,
            first_token_ms: None,
            models_call: None,
        }
    }

    /// Send an OpenAI-shaped error and stop the request here.
    fn reply(&mut self, reply: &Reply) -> Action {
        self.decided = self.state.send_reply(reply, self.decided.labels);
        self.buffering = false;
        Action::Pause
    }

    fn too_large(&mut self) -> Action {
        let max = self.state.config.max_request_body_bytes;
        self.reply(&Reply::new(
            413,
            "invalid_request_error",
            format!("request body is larger than {max} bytes"),
        ))
    }

    /// The whole body is here: plan, then carry the plan out.
    fn on_full_body(&mut self, body: &[u8]) -> Action {
        // The reader changes nothing unless a gate waits to carry the decision out.
        let gate = match self.inputs.mode {
            Some(Mode::Reader) => match GateLink::find() {
                Some(gate) => Some(gate),
                None => return self.without_gate(body),
            },
            _ => None,
        };
        self.buffering = false;
        match self
            .state
            .carry_out(&self.inputs, gate, body, Some(self.context_id))
        {
            Carried::Routed(decided) => {
                self.decided = decided;
                Action::Continue
            }
            Carried::Replied(decided) => {
                self.decided = decided;
                Action::Pause
            }
            // Envoy keeps the body; the root resumes the stream when it dispatches the request.
            Carried::Held(ticket) => {
                self.ticket = Some(ticket);
                self.settle();
                Action::Pause
            }
        }
    }

    /// The `plan` cost probe: route to the first endpoint of the first pool, nothing else.
    fn probe_route(&mut self, body_size: usize) -> Action {
        if !crate::probe::skips("read") {
            let _ = self.get_http_request_body(0, body_size);
        }
        let state = Rc::clone(&self.state);
        let endpoint = state.config.pools.first().and_then(|p| p.endpoints.first());
        if let Some(endpoint) = endpoint {
            host::edit_request_headers(
                [(
                    state.config.destination_header.as_str(),
                    Some(endpoint.as_str()),
                )],
                false,
            );
        }
        self.buffering = false;
        Action::Continue
    }

    /// Take a held request's decision once the root has made it.
    fn settle(&mut self) {
        let decided = self.ticket.as_ref().and_then(|t| t.borrow_mut().take());
        if let Some(decided) = decided {
            self.decided = decided;
            self.ticket = None;
        }
    }

    /// Reader mode with no gate on the request's filter chain: the router has already chosen a
    /// host and the headers are gone, so nothing may change (not even the body: its length is
    /// announced). A bad body still gets its 400; otherwise `failureMode` decides: pass the
    /// request on untouched, or answer 503.
    fn without_gate(&mut self, body: &[u8]) -> Action {
        if let Err(e) = openai::scan_request(body) {
            return self.reply(&Reply::new(400, "invalid_request_error", e.message()));
        }
        host_stats::increment(stats::READER_GATE_MISSING_TOTAL, 1);
        log_gate_missing_once();
        self.buffering = false;
        match self.state.config.failure_mode {
            FailureMode::FailOpen => Action::Continue,
            FailureMode::FailClose => self.reply(&Reply::new(
                503,
                "service_unavailable",
                "inference-router: no gate filter on this route to carry out the decision",
            )),
        }
    }

    /// `GET /v1/models`: the gateway's served names, merged (if configured) with what a pod of the
    /// default pool lists, which is asked first.
    fn list_models(&mut self) -> Action {
        let state = Rc::clone(&self.state);
        let config = &state.config;
        if config.list_models == ListModels::Merge {
            let pool = config.default_pool.unwrap_or(0);
            let members = state.scheduler.members(&Envoy, &Envoy, pool);
            let endpoint = members.as_ref().and_then(|m| {
                let n = m.endpoints.len();
                (n > 0).then(|| m.endpoints.get(state.scheduler.random() as usize % n))?
            });
            if let (Some(endpoint), Some(p)) = (endpoint, config.pools.get(pool)) {
                let headers = vec![
                    (":method", "GET"),
                    (":path", "/v1/models"),
                    (":authority", endpoint.as_str()),
                    (config.destination_header.as_str(), endpoint.as_str()),
                ];
                let timeout = std::time::Duration::from_millis(1000);
                match self.dispatch_http_call(&p.cluster, headers, None, vec![], timeout) {
                    Ok(token) => {
                        self.models_call = Some(token);
                        return Action::Pause;
                    }
                    Err(e) => log::debug!("models list of {endpoint} not asked: {e:?}"),
                }
            }
        }
        self.send_models_list(None)
    }

    fn send_models_list(&mut self, pod_list: Option<&[u8]>) -> Action {
        let list = openai::models_list(&self.state.config, pod_list, host::now_ms() / 1000);
        self.send_http_response(
            200,
            vec![("content-type", "application/json")],
            Some(list.as_bytes()),
        );
        Action::Pause
    }

    /// The response is over: count its tokens (once).
    fn finish_usage(&mut self) {
        let Some(usage) = self.tap.finish() else {
            return;
        };
        let state = Rc::clone(&self.state);
        state.add(
            RequestMetric::PromptTokens,
            self.decided.labels,
            usage.prompt_tokens,
        );
        state.add(
            RequestMetric::CompletionTokens,
            self.decided.labels,
            usage.completion_tokens,
        );
        self.usage = Some(usage);
    }

    /// The decision, for Envoy's access log: filter state `wasm.inference_router.<field>`
    /// (`%FILTER_STATE(wasm.inference_router.model:PLAIN)%`). Set once, when the request ends.
    fn publish_log_fields(&self) {
        if !self.state.config.access_log_fields || crate::probe::skips("log") {
            return;
        }
        let tokens = self
            .usage
            .map(|u| (u.prompt_tokens.to_string(), u.completion_tokens.to_string()));
        let fields = [
            ("inference_router.outcome", Some(self.decided.outcome)),
            (
                "inference_router.model",
                self.decided.requested_model.as_deref(),
            ),
            (
                "inference_router.target_model",
                self.decided.target_model.as_deref(),
            ),
            (
                "inference_router.endpoint",
                self.decided.endpoint.as_deref(),
            ),
            (
                "inference_router.prompt_tokens",
                tokens.as_ref().map(|t| t.0.as_str()),
            ),
            (
                "inference_router.completion_tokens",
                tokens.as_ref().map(|t| t.1.as_str()),
            ),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                host::set_property(key, value.as_bytes());
            }
        }
    }
}

/// Count a pick in `inference_router_endpoint_picks_total`; the metric id is cached with the
/// member list, so a pick costs one host call and no name building.
fn count_pick(members: &Members, index: usize) {
    if crate::probe::skips("stats") {
        return;
    }
    let Some(cell) = members.host_ids.get(index) else {
        return;
    };
    let id = cell.get().or_else(|| {
        let pool = members.pool.as_str();
        let endpoint = members.endpoints.get(index).map_or("?", String::as_str);
        let name = stats::name_with_labels(
            stats::ENDPOINT_PICKS_TOTAL,
            &[("pool", pool), ("endpoint", endpoint)],
        );
        let id = host_stats::define_counter(&name);
        cell.set(id);
        id
    });
    if let Some(id) = id {
        host_stats::increment_id(id, 1);
    }
}

fn log_gate_missing_once() {
    thread_local! {
        static LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOGGED.with(|l| l.replace(true)) {
        log::error!(
            "reader: no inference-router-gate on this request's filter chain: install the gate \
             after the reader and before the router; until then failureMode decides: requests go \
             on untouched (FailOpen) or get 503 (FailClose)"
        );
    }
}

impl Context for InferenceFilter {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _: usize) {
        if self.models_call != Some(token) {
            return;
        }
        self.models_call = None;
        // No headers: the call failed, and any getter would trap (see Plugin's). As bytes: the
        // SDK's string getter traps on a value that is not UTF-8.
        let ok = headers > 0
            && self
                .get_http_call_response_header_bytes(":status")
                .is_some_and(|s| s == b"200");
        // A pod's model list is a few KB; a bigger answer is left out rather than copied in.
        let body = if ok && body_size <= MAX_POD_MODELS_BYTES {
            self.get_http_call_response_body(0, body_size)
        } else {
            None
        };
        self.send_models_list(body.as_deref());
    }
}

impl HttpContext for InferenceFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let config = &state.config;
        // One host call for the headers we look at: each header read alone is a call into Envoy
        // and, when present, a second one back into the module to allocate its value.
        let headers = self.get_http_request_headers_bytes();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
        };
        #[cfg(feature = "fault-injection")]
        crate::fault::trap_if(find(crate::fault::TRAP_HEADER) == Some(b"trap"));
        // Routing headers are ours alone: a client's copy is never honoured, on any request.
        // A removal clears the route cache itself: no refresh asked.
        host::edit_request_headers(
            [config.destination_header.as_str(), MODEL_NAME_HEADER]
                .into_iter()
                .filter(|name| find(name).is_some())
                .map(|name| (name, None)),
            false,
        );
        let text =
            |name: &str| String::from_utf8_lossy(find(name).unwrap_or_default()).into_owned();
        let (method, path) = (text(":method"), text(":path"));
        if config.list_models != ListModels::Pool && openai::is_models_list(&method, &path) {
            return self.list_models();
        }
        self.inputs.api = openai::inference_api(&method, &path);
        if self.inputs.api.is_none() {
            // A removed header has already cleared the route cache (see host::edit_request_headers).
            return Action::Continue;
        }
        if end_of_stream {
            return self.reply(&Reply::new(
                400,
                "invalid_request_error",
                "request body is empty",
            ));
        }
        let content_length = find("content-length");
        self.inputs.had_content_length = content_length.is_some();
        let announced = content_length
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|len| len > config.max_request_body_bytes) {
            return self.too_large();
        }
        // As bytes: the SDK's string getter traps on a value that is not UTF-8.
        let header = |name: Option<&str>| name.and_then(&find).map(<[u8]>::to_vec);
        self.inputs.session = header(config.session_header.as_deref());
        self.inputs.objective = header(config.objective_header.as_deref());
        self.inputs.fairness = header(config.fairness_header.as_deref());
        self.buffering = true;
        self.started_ms = host::now_ms();
        match self.inputs.mode.unwrap_or(Mode::Single) {
            Mode::Single => Action::Pause,
            // The gate pauses the headers for us once it sees the mark; from here on this
            // filter may not touch the request headers (Envoy refuses, the SDK would trap).
            Mode::Reader => {
                host::set_property(READER_MARK_KEY, b"1");
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.buffering {
            return Action::Continue;
        }
        if body_size as u64 > self.state.config.max_request_body_bytes {
            return self.too_large();
        }
        if !end_of_stream {
            // Keep buffering: Envoy holds the chunks until the body is complete.
            return Action::Pause;
        }
        if crate::probe::skips("plan") {
            return self.probe_route(body_size);
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.on_full_body(&body)
    }

    /// A body that ends with trailers (HTTP/2, or chunked HTTP/1.1 with a trailer section): its
    /// last DATA frame did not end the stream, the trailers do. Decide now.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if !self.buffering {
            return Action::Continue;
        }
        let max = self.state.config.max_request_body_bytes;
        let limit = usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1);
        let body = self.get_http_request_body(0, limit).unwrap_or_default();
        if body.len() as u64 > max {
            return self.too_large();
        }
        self.on_full_body(&body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.settle();
        if !self.decided.routed || crate::probe::skips("response") {
            return Action::Continue;
        }
        // A compressed body cannot be read as it passes; its tokens go uncounted.
        // As bytes: the SDK's string getter traps on a value that is not UTF-8.
        let encoded = self
            .get_http_response_header_bytes("content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
        self.tap = ResponseTap::new(encoded, self.decided.streaming, self.decided.usage_injected);
        if self.tap.changes_length() {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.decided.routed || crate::probe::skips("response") {
            return Action::Continue;
        }
        // Only a stream's time to first token falls back on the first byte: no clock read otherwise.
        if self.decided.streaming && self.first_byte_ms.is_none() && body_size > 0 {
            self.first_byte_ms = Some(host::now_ms());
        }
        // Each chunk is read (and, when we added the usage event, filtered) as it passes; never
        // buffered: what came goes on to the client now.
        if self.tap.reads() {
            let chunk = match body_size {
                0 => None,
                n => self.get_http_response_body(0, n),
            };
            let step = self
                .tap
                .feed(chunk.as_deref().unwrap_or_default(), end_of_stream);
            if step.first_token && self.first_token_ms.is_none() {
                self.first_token_ms = Some(host::now_ms());
            }
            if step.replace {
                let bytes = self.tap.replacement().to_vec();
                self.set_http_response_body(0, body_size, &bytes);
            }
        }
        if end_of_stream {
            self.finish_usage();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.settle();
        if self.ticket.take().is_some() {
            // Still held: its client left.
            self.state.abandon(self.context_id);
        }
        // A response cut short still counts what it reported.
        self.finish_usage();
        if let Some((members, i)) = self.decided.counted.take() {
            members.counters.release(&Envoy, i);
        }
        if self.decided.inference {
            self.publish_log_fields();
        }
        if !self.decided.routed {
            return;
        }
        let state = Rc::clone(&self.state);
        let now = host::now_ms();
        let since_start = |t: u64| t.saturating_sub(self.started_ms);
        state.add(
            RequestMetric::Duration,
            self.decided.labels,
            since_start(now),
        );
        // The first token when the stream shows one, else its first byte.
        if let (true, Some(first)) = (
            self.decided.streaming,
            self.first_token_ms.or(self.first_byte_ms),
        ) {
            state.add(
                RequestMetric::TimeToFirstToken,
                self.decided.labels,
                since_start(first),
            );
            let tokens = self.usage.map_or(0, |u| u.completion_tokens);
            if tokens > 1 {
                let per_token = now.saturating_sub(first) / (tokens - 1);
                state.add(
                    RequestMetric::TimePerOutputToken,
                    self.decided.labels,
                    per_token,
                );
            }
        }
    }
}
