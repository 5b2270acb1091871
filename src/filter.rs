//! The HTTP filter role: one `InferenceFilter` per request. Request flow (CONTRACT section 4):
//! headers are held, the body is buffered, the core decides (model, target, endpoint), and this
//! layer carries the decision out: rewrite the model bytes, set the routing headers, clear the
//! route cache, or send the error reply. Responses pass through untouched, never buffered.
//!
//! Two modes (`Mode`): the single filter pauses the headers itself (Envoy must allow it with
//! `allow_on_headers_stop_iteration`); the reader lets them go on to the gate (`crate::gate`),
//! which holds them, and sends the header edits there instead of making them.

use crate::host;
use crate::pool_view::{Members, PoolView};
use crate::prefix_share::{PrefixShare, SHARE_PERIOD};
use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use router_core::config::{Config, Criticality, FailureMode};
use router_core::gate::{GateAddress, HeaderEdit, Release, GATE_ADDRESS_KEY, READER_MARK_KEY};
use router_core::openai::{self, InferenceApi, SseParser, Usage, UsageScanner, UsageStripper};
use router_core::request::{decide_model, ModelDecision};
use router_core::scheduling::{
    self, endpoint_id, schedule_claiming, AdapterClaims, Candidate, Decision, PrefixIndex, Rng,
    SchedulingRequest, Strategy, TargetKind,
};
use router_core::stats;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

pub const MODEL_NAME_HEADER: &str = "x-gateway-model-name";

/// What one worker's filter instances share: the compiled configuration and per-worker state.
pub struct FilterState {
    config: Config,
    rng: RefCell<Rng>,
    /// Per-pool round-robin position of this worker.
    round_robin: Vec<Cell<u64>>,
    /// Per-pool view of the collector's published snapshot.
    views: Vec<PoolView>,
    /// Per-pool prefix index (PREFIX_CACHE only), learned from this worker's own routing and,
    /// through `shares`, from the other workers'.
    prefixes: Vec<RefCell<PrefixIndex>>,
    shares: Vec<PrefixShare>,
    last_share_ms: Cell<u64>,
    /// Per-pool member-list generation the prefix index was last synced to (discovery).
    prefix_generation: Vec<Cell<u64>>,
    /// Metric ids per metric and label set, so a request never builds a metric name once its
    /// label set has been seen.
    metric_ids: RefCell<host_stats::IdMap<(Metric, Labels), Option<u32>>>,
    /// Reader mode: gate queues resolved so far, by (vm_id, queue name).
    gate_queues: RefCell<HashMap<(String, String), u32>>,
    /// Reader mode: whether this worker has said once how it found its gates.
    gate_logged: Cell<bool>,
}

/// How the filter holds the request while it reads the body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Pause the headers here (`allow_on_headers_stop_iteration: true`).
    Single,
    /// Let the headers go on to the gate, which holds them; send it the header edits.
    Reader,
}

/// How an endpoint was chosen, or why none was.
pub enum Pick {
    /// Endpoint `index` of `members`; `counted`: in the shared in-flight count, to release at the end.
    Endpoint {
        members: Rc<Members>,
        index: usize,
        counted: bool,
        fail_open: bool,
    },
    Shed,
    Unavailable,
}

/// What the scheduler needs to know of the request.
pub struct RequestFacts<'a> {
    pub target_model: &'a str,
    pub criticality: Criticality,
    /// Raw bytes of the prompt (or messages), for the prefix scorer.
    pub prompt: &'a [u8],
}

impl FilterState {
    pub fn new(config: Config, seed: u64) -> FilterState {
        let mut rng = Rng::new(seed);
        let round_robin = config
            .pools
            .iter()
            // Workers start at different places so the first requests of each do not collide.
            .map(|p| Cell::new(rng.below(p.endpoints.len().max(1)) as u64))
            .collect();
        let views = config.pools.iter().map(PoolView::new).collect();
        let prefixes = if config.strategy.needs_prefix() {
            config
                .pools
                .iter()
                .map(|p| {
                    let ids: Vec<u64> = p.endpoints.iter().map(|e| endpoint_id(e)).collect();
                    RefCell::new(PrefixIndex::new(&config.profile.prefix, &ids))
                })
                .collect()
        } else {
            Vec::new()
        };
        let worker = rng.next_u64();
        let shares = if config.strategy.needs_prefix() {
            config
                .pools
                .iter()
                .map(|p| PrefixShare::new(&p.name, worker))
                .collect()
        } else {
            Vec::new()
        };
        let prefix_generation = config.pools.iter().map(|_| Cell::new(0)).collect();
        FilterState {
            prefix_generation,
            metric_ids: RefCell::new(host_stats::IdMap::default()),
            config,
            rng: RefCell::new(rng),
            round_robin,
            views,
            prefixes,
            shares,
            last_share_ms: Cell::new(0),
            gate_queues: RefCell::new(HashMap::new()),
            gate_logged: Cell::new(false),
        }
    }

    /// The shared queue of the gate at `address`, resolved once per gate VM.
    fn gate_queue(&self, address: &GateAddress) -> Option<u32> {
        let key = (address.vm_id.clone(), address.queue.clone());
        if let Some(&id) = self.gate_queues.borrow().get(&key) {
            return Some(id);
        }
        let id = hostcalls::resolve_shared_queue(&address.vm_id, &address.queue)
            .ok()
            .flatten()?;
        if !self.gate_logged.replace(true) {
            // Istio gives both filters the same VM (no vm_id), Envoy Gateway one VM each.
            log::info!(
                "reader: gate queue {} found in vm_id \"{}\" ({} VM)",
                address.queue,
                address.vm_id,
                if address.instance == host::vm_instance() {
                    "this reader's"
                } else {
                    "another"
                }
            );
        }
        self.gate_queues.borrow_mut().insert(key, id);
        Some(id)
    }

    fn count_request(&self, labels: Labels, outcome: &'static str) {
        self.add(Metric::Requests(outcome), labels, 1);
    }

    /// Add to a counter or record in a histogram, defining its id on the first use of its label set.
    fn add(&self, metric: Metric, labels: Labels, value: u64) {
        let mut ids = self.metric_ids.borrow_mut();
        let id = *ids
            .entry((metric, labels))
            .or_insert_with(|| metric.define(&self.config, labels));
        match (id, metric.is_histogram()) {
            (Some(id), true) => host_stats::record_id(id, value),
            (Some(id), false) => host_stats::increment_id(id, value),
            (None, _) => {}
        }
    }

    /// Whether this worker runs a prefix index that wants `share_prefixes` on a timer.
    pub fn shares_prefixes(&self) -> bool {
        !self.shares.is_empty()
    }

    /// Exchange prefix-index records with the other workers, at most once per `SHARE_PERIOD`.
    pub fn share_prefixes(&self, now_ms: u64) {
        if self.shares.is_empty()
            || now_ms < self.last_share_ms.get() + SHARE_PERIOD.as_millis() as u64
        {
            return;
        }
        self.last_share_ms.set(now_ms);
        for (share, index) in self.shares.iter().zip(&self.prefixes) {
            share.sync(&mut index.borrow_mut());
        }
    }

    fn random(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }

    /// Pick an endpoint of `pool` by the configured strategy.
    fn pick_endpoint(&self, pool: usize, facts: &RequestFacts) -> Pick {
        let (Some(p), Some(view)) = (self.config.pools.get(pool), self.views.get(pool)) else {
            return Pick::Unavailable;
        };
        let members = view.members(self.config.strategy.needs_metrics());
        let n = members.endpoints.len();
        let mut rng = self.rng.borrow_mut();
        let result = |members: &Rc<Members>, r: Result<(usize, bool), Pick>, counted: bool| match r
        {
            Ok((index, fail_open)) => Pick::Endpoint {
                members: Rc::clone(members),
                index,
                counted,
                fail_open,
            },
            Err(p) => p,
        };
        let counters = &members.counters;
        match self.config.strategy {
            Strategy::RoundRobin => {
                let Some(cell) = self.round_robin.get(pool) else {
                    return Pick::Unavailable;
                };
                let mut c = cell.get();
                let i = scheduling::round_robin(n, &mut c);
                cell.set(c);
                result(
                    &members,
                    i.map(|i| (i, false)).ok_or(Pick::Unavailable),
                    false,
                )
            }
            Strategy::Random => {
                let i = scheduling::random(n, &mut rng);
                result(
                    &members,
                    i.map(|i| (i, false)).ok_or(Pick::Unavailable),
                    false,
                )
            }
            Strategy::LeastRequest => {
                let r = counters.pick_and_count(|c| {
                    scheduling::least_request(&c.in_flight, &mut rng)
                        .map(|i| (i, false))
                        .ok_or(Pick::Unavailable)
                });
                result(&members, r, true)
            }
            Strategy::Default | Strategy::PrefixCache => {
                let states = &members.states;
                self.sync_prefix_members(pool, &members);
                let prefix = self.prefixes.get(pool).map(RefCell::borrow);
                let mut hashes = Vec::new();
                if prefix.is_some() {
                    self.config.profile.prefix.hash_prompt(
                        facts.target_model,
                        facts.prompt,
                        &mut hashes,
                    );
                }
                let request = SchedulingRequest {
                    target_model: facts.target_model,
                    target_kind: TargetKind::Detect,
                    criticality: facts.criticality,
                    failure_mode: self.config.failure_mode,
                    now_ms: host::now_ms(),
                    staleness_ms: p.metrics.staleness_ms,
                    prefix_hashes: &hashes,
                };
                let picked = counters.pick_count_and_claim(|c| {
                    let candidates: Vec<Candidate> = (0..n)
                        .map(|i| {
                            let state = states.get(i).and_then(Option::as_ref);
                            let picks = c.picks.get(i).copied().unwrap_or(0);
                            Candidate {
                                state,
                                picks_since_scrape: state
                                    .map(|s| picks.wrapping_sub(s.picks_at_scrape))
                                    .unwrap_or(0),
                                in_flight: c.in_flight.get(i).copied().unwrap_or(0),
                                claims: c.claims.get(i).map_or(&[], AdapterClaims::as_slice),
                            }
                        })
                        .collect();
                    let (decision, claim) = schedule_claiming(
                        &self.config.profile,
                        &request,
                        &candidates,
                        prefix.as_deref(),
                        &mut rng,
                    );
                    match decision {
                        Decision::Pick {
                            endpoint,
                            fail_open,
                        } => Ok((endpoint, claim, fail_open)),
                        Decision::Shed => Err(Pick::Shed),
                        Decision::Unavailable => Err(Pick::Unavailable),
                    }
                });
                drop(prefix);
                if let (Ok((index, _)), Some(cell)) = (&picked, self.prefixes.get(pool)) {
                    cell.borrow_mut().record(*index, &hashes);
                }
                result(&members, picked, true)
            }
        }
    }

    /// A discovered pool's members changed: the prefix index follows them by address.
    fn sync_prefix_members(&self, pool: usize, members: &Members) {
        let (Some(cell), Some(seen)) = (self.prefixes.get(pool), self.prefix_generation.get(pool))
        else {
            return;
        };
        if seen.get() != members.generation {
            let ids: Vec<u64> = members.endpoints.iter().map(|e| endpoint_id(e)).collect();
            cell.borrow_mut().sync_endpoints(&ids);
            seen.set(members.generation);
        }
    }
}

enum Stage {
    /// Not an inference request, or already decided: nothing more to do.
    Done,
    /// An inference request whose body is being buffered.
    Buffering,
}

pub struct InferenceFilter {
    state: Rc<FilterState>,
    mode: Mode,
    /// Reader mode: the request-header edits the gate is to make, and where that gate waits.
    edits: Vec<HeaderEdit>,
    gate: Option<GateAddress>,
    stage: Stage,
    had_content_length: bool,
    session: Option<String>,
    /// The members and endpoint counted in flight, released in `on_log`.
    counted: Option<(Rc<Members>, usize)>,
    /// The pick was made without fresh metrics.
    fail_open: bool,
    /// Bounded label values of this request's stats, filled in as the decision is made.
    labels: Labels,
    /// Routed to an endpoint: its response is timed (and, later, its tokens counted).
    routed: bool,
    /// The client asked for a stream.
    streaming: bool,
    /// An inference request (routed or answered by the filter): its fields go to the access log.
    inference: bool,
    api: Option<InferenceApi>,
    /// We asked the server for stream usage the client did not ask for: strip it from the reply.
    usage_injected: bool,
    /// Reads token usage from the response as it passes (JSON, SSE, or SSE with our usage event
    /// taken out); None until routed, or when the response is not readable (compressed).
    usage: UsageReader,
    usage_result: Option<Usage>,
    outcome: &'static str,
    requested_model: Option<String>,
    target_model: Option<String>,
    endpoint: Option<String>,
    /// When the request headers arrived, and when the first response body byte did (ms).
    started_ms: u64,
    first_byte_ms: Option<u64>,
    /// When the first generated token arrived (streams).
    first_token_ms: Option<u64>,
}

/// Label values for the request's stats, as indices into the configuration. Model labels are
/// bounded: configured names, else `other`.
#[derive(Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Labels {
    pool: Option<usize>,
    /// Index into `config.models`.
    model: Option<usize>,
    target: TargetLabel,
}

/// The per-request metrics of CONTRACT section 5 (and the time per output token).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Metric {
    Requests(&'static str),
    PromptTokens,
    CompletionTokens,
    Duration,
    TimeToFirstToken,
    TimePerOutputToken,
}

impl Metric {
    fn is_histogram(self) -> bool {
        matches!(
            self,
            Metric::Duration | Metric::TimeToFirstToken | Metric::TimePerOutputToken
        )
    }

    /// Define the metric for `labels`: its name carries the label values for Envoy's stats_tags.
    fn define(self, config: &Config, labels: Labels) -> Option<u32> {
        let pool = labels
            .pool
            .and_then(|i| config.pools.get(i))
            .map_or("none", |p| p.name.as_str());
        let model = labels.model.and_then(|i| config.models.get(i));
        let target = match (labels.target, model) {
            (TargetLabel::Same, Some(m)) => Some(m.name.as_str()),
            (TargetLabel::Target(i), Some(m)) => m
                .targets
                .as_ref()
                .and_then(|t| t.names().get(i))
                .map(String::as_str),
            _ => None,
        };
        let model = model.map_or(OTHER, |m| m.name.as_str());
        let target = target.unwrap_or(OTHER);
        let name = match self {
            Metric::Requests(outcome) => stats::name_with_labels(
                stats::REQUESTS_TOTAL,
                &[
                    ("pool", pool),
                    ("model", model),
                    ("target_model", target),
                    ("outcome", outcome),
                ],
            ),
            Metric::PromptTokens | Metric::CompletionTokens => stats::name_with_labels(
                if self == Metric::PromptTokens {
                    stats::PROMPT_TOKENS_TOTAL
                } else {
                    stats::COMPLETION_TOKENS_TOTAL
                },
                &[("pool", pool), ("model", model), ("target_model", target)],
            ),
            Metric::Duration | Metric::TimeToFirstToken | Metric::TimePerOutputToken => {
                let base = match self {
                    Metric::Duration => stats::REQUEST_DURATION_MS,
                    Metric::TimeToFirstToken => stats::TIME_TO_FIRST_TOKEN_MS,
                    _ => stats::TIME_PER_OUTPUT_TOKEN_MS,
                };
                // `model` too, ahead of `target_model`: the `model` tag rule takes the leftmost
                // `model=` (see `router_core::stats`), which must not be inside `target_model=`.
                stats::name_with_labels(
                    base,
                    &[("pool", pool), ("model", model), ("target_model", target)],
                )
            }
        };
        if self.is_histogram() {
            host_stats::define_histogram(&name)
        } else {
            host_stats::define_counter(&name)
        }
    }
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Hash)]
enum TargetLabel {
    #[default]
    Other,
    /// The model is served as named.
    Same,
    /// Index into the model's target names.
    Target(usize),
}

const OTHER: &str = "other";

impl InferenceFilter {
    pub fn new(state: Rc<FilterState>, mode: Mode) -> InferenceFilter {
        InferenceFilter {
            state,
            mode,
            edits: Vec::new(),
            gate: None,
            stage: Stage::Done,
            had_content_length: false,
            session: None,
            counted: None,
            labels: Labels::default(),
            fail_open: false,
            routed: false,
            inference: false,
            api: None,
            usage_injected: false,
            usage: UsageReader::None,
            usage_result: None,
            outcome: "",
            requested_model: None,
            target_model: None,
            endpoint: None,
            streaming: false,
            started_ms: 0,
            first_byte_ms: None,
            first_token_ms: None,
        }
    }

    /// Count the request in `inference_router_requests_total` with its outcome.
    fn count(&mut self, outcome: &'static str) {
        self.outcome = outcome;
        self.state.count_request(self.labels, outcome);
    }

    /// The decision, for Envoy's access log: filter state `wasm.inference_router.<field>`
    /// (`%FILTER_STATE(wasm.inference_router.model:PLAIN)%`). Set once, when the request ends.
    fn publish_log_fields(&self) {
        let fields = [
            ("inference_router.outcome", Some(self.outcome)),
            ("inference_router.model", self.requested_model.as_deref()),
            (
                "inference_router.target_model",
                self.target_model.as_deref(),
            ),
            ("inference_router.endpoint", self.endpoint.as_deref()),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                host::set_property(key, value.as_bytes());
            }
        }
        if let Some(u) = self.usage_result {
            let prompt = u.prompt_tokens.to_string();
            let completion = u.completion_tokens.to_string();
            host::set_property("inference_router.prompt_tokens", prompt.as_bytes());
            host::set_property("inference_router.completion_tokens", completion.as_bytes());
        }
    }

    /// Send an OpenAI-shaped error and stop the request here.
    fn reply(&mut self, status: u32, kind: &str, message: &str) -> Action {
        log::info!("{status} {kind}: {message}");
        self.count(match status {
            429 => "shed",
            503 => "unavailable",
            _ => "rejected",
        });
        self.inference = true;
        let body = openai::error_body(status as u16, kind, message);
        self.send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        self.stage = Stage::Done;
        Action::Pause
    }

    /// Route to an endpoint of `pool`: set the destination header, or reply 429 / 503.
    fn route_to_pool(&mut self, pool: usize, facts: &RequestFacts) -> Result<(), Action> {
        let state = Rc::clone(&self.state);
        let Some(p) = state.config.pools.get(pool) else {
            return Err(self.reply(503, "service_unavailable", "pool not found"));
        };
        match state.pick_endpoint(pool, facts) {
            Pick::Endpoint {
                members,
                index,
                counted,
                fail_open,
            } => {
                if fail_open {
                    log::debug!("pool {}: no fresh metrics, failing open", p.name);
                    self.fail_open = true;
                }
                members.count_pick(index);
                let endpoint = members
                    .endpoints
                    .get(index)
                    .map(String::as_str)
                    .unwrap_or_default();
                self.edit_header(&state.config.destination_header, endpoint);
                self.endpoint = Some(endpoint.to_string());
                if counted {
                    self.counted = Some((members, index));
                }
                Ok(())
            }
            Pick::Shed => {
                let msg = format!(
                    "pool \"{}\" is saturated; sheddable request dropped",
                    p.name
                );
                Err(self.reply(429, "rate_limit_exceeded", &msg))
            }
            Pick::Unavailable => {
                let msg = format!("no endpoint available in pool \"{}\"", p.name);
                Err(self.reply(503, "service_unavailable", &msg))
            }
        }
    }

    /// Change the body as little as needed: the model value (a prefix edit: Envoy's buffer API
    /// replaces a prefix, so only the bytes up to the model value move) and, for a stream whose
    /// client did not ask for usage, `stream_options.include_usage` so the server reports the
    /// tokens (the extra usage event is taken out of the response again).
    fn rewrite_body(&mut self, body: &[u8], fields: &openai::RequestFields, target: Option<&str>) {
        let wants_usage = fields.stream
            && matches!(
                self.api,
                Some(InferenceApi::Completions | InferenceApi::ChatCompletions)
            );
        let with_usage = if wants_usage {
            openai::request_usage_rewrite(body)
        } else {
            None
        };
        let new_len = match (with_usage, target) {
            (None, None) => return,
            (None, Some(target)) => {
                let span = fields.model_span.clone();
                let prefix = openai::model_prefix_replacement(body, span.clone(), target);
                self.set_http_request_body(0, span.end, &prefix);
                body.len() - span.end + prefix.len()
            }
            (Some(new), target) => {
                let new = match (target, openai::scan_request(&new)) {
                    (Some(t), Ok(f)) => openai::rewrite_model(&new, f.model_span, t),
                    _ => new,
                };
                self.set_http_request_body(0, body.len(), &new);
                self.usage_injected = true;
                new.len()
            }
        };
        if self.had_content_length {
            self.edit_header("content-length", &new_len.to_string());
        }
    }

    fn set_model_header(&mut self, model: &str) {
        self.target_model = Some(model.to_string());
        // Envoy refuses header values with control characters; such a name simply goes without it.
        if model.bytes().all(|b| b >= 0x20 && b != 0x7f) {
            self.edit_header(MODEL_NAME_HEADER, model);
        }
    }

    /// The whole body is here: decide and act.
    fn on_full_body(&mut self, body: &[u8]) -> Action {
        let fields = match openai::scan_request(body) {
            Ok(f) => f,
            Err(e) => return self.reply(400, "invalid_request_error", &e.message()),
        };
        if self.mode == Mode::Reader {
            self.gate = host::property(GATE_ADDRESS_KEY).and_then(|b| GateAddress::decode(&b).ok());
            if self.gate.is_none() {
                return self.without_gate();
            }
        }
        let state = Rc::clone(&self.state);
        let session = self
            .session
            .as_deref()
            .map(str::as_bytes)
            .or(fields.user.as_deref().map(str::as_bytes));
        let decision = decide_model(&state.config, &fields.model, session, state.random());
        self.requested_model = Some(fields.model.to_string());
        // Only PREFIX_CACHE reads the prompt; other strategies never hash it.
        let prompt: &[u8] = match (&fields.prompt_span, state.config.strategy.needs_prefix()) {
            (Some(span), true) => body.get(span.clone()).unwrap_or_default(),
            _ => &[],
        };
        let passthrough = matches!(decision, ModelDecision::Passthrough { .. });
        match &decision {
            ModelDecision::Configured { model, target } => {
                let names = model
                    .targets
                    .as_ref()
                    .map(|t| t.names())
                    .unwrap_or_default();
                self.labels = Labels {
                    pool: Some(model.pool),
                    model: state.config.model_index(&model.name),
                    target: match target {
                        None => TargetLabel::Same,
                        Some(t) => names
                            .iter()
                            .position(|n| n == t)
                            .map_or(TargetLabel::Same, TargetLabel::Target),
                    },
                };
            }
            ModelDecision::Passthrough { pool } => self.labels.pool = *pool,
            ModelDecision::Reject => {}
        }
        match decision {
            ModelDecision::Reject => {
                let msg = format!("The model `{}` does not exist.", fields.model);
                return self.reply(404, "NotFoundError", &msg);
            }
            ModelDecision::Passthrough { pool } => {
                self.rewrite_body(body, &fields, None);
                if let Some(pool) = pool {
                    let facts = RequestFacts {
                        target_model: &fields.model,
                        criticality: Criticality::Standard,
                        prompt,
                    };
                    if let Err(action) = self.route_to_pool(pool, &facts) {
                        return action;
                    }
                }
                self.set_model_header(&fields.model);
            }
            ModelDecision::Configured { model, target } => {
                let facts = RequestFacts {
                    target_model: target.unwrap_or(&fields.model),
                    criticality: model.criticality,
                    prompt,
                };
                if let Err(action) = self.route_to_pool(model.pool, &facts) {
                    return action;
                }
                self.rewrite_body(body, &fields, target);
                self.set_model_header(target.unwrap_or(&fields.model));
            }
        }
        if let Err(action) = self.carry_out_routing() {
            return action;
        }
        self.routed = true;
        self.inference = true;
        self.streaming = fields.stream;
        self.count(if passthrough {
            "passthrough"
        } else if self.fail_open {
            "failed_open"
        } else {
            "routed"
        });
        self.stage = Stage::Done;
        Action::Continue
    }
}

impl Context for InferenceFilter {}

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
                .map(|(_, v)| String::from_utf8_lossy(v))
        };
        // Routing headers are ours alone: a client's copy is never honoured, on any request.
        let mut removed = false;
        for name in [config.destination_header.as_str(), MODEL_NAME_HEADER] {
            if find(name).is_some() {
                self.set_http_request_header(name, None);
                removed = true;
            }
        }
        let method = find(":method").unwrap_or_default();
        let path = find(":path").unwrap_or_default();
        self.api = openai::inference_api(&method, &path);
        if self.api.is_none() {
            if removed {
                host::clear_route_cache();
            }
            return Action::Continue;
        }
        if end_of_stream {
            return self.reply(400, "invalid_request_error", "request body is empty");
        }
        let content_length = find("content-length");
        self.had_content_length = content_length.is_some();
        if let Some(len) = content_length.and_then(|v| v.trim().parse::<u64>().ok()) {
            if len > config.max_request_body_bytes {
                return self.too_large();
            }
        }
        self.session = config
            .session_header
            .as_deref()
            // As bytes: the SDK's string getter traps on a value that is not UTF-8.
            .and_then(|h| self.get_http_request_header_bytes(h))
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        self.stage = Stage::Buffering;
        self.started_ms = host::now_ms();
        match self.mode {
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
        if !matches!(self.stage, Stage::Buffering) {
            return Action::Continue;
        }
        if body_size as u64 > self.state.config.max_request_body_bytes {
            return self.too_large();
        }
        if !end_of_stream {
            // Keep buffering: Envoy holds the chunks until the body is complete.
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.on_full_body(&body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.routed {
            return Action::Continue;
        }
        // A compressed body cannot be read as it passes; its tokens go uncounted.
        // As bytes: the SDK's string getter traps on a value that is not UTF-8.
        let encoded = self
            .get_http_response_header_bytes("content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
        self.usage = match (encoded, self.streaming, self.usage_injected) {
            (true, _, _) => UsageReader::None,
            (false, false, _) => UsageReader::Json(UsageScanner::new()),
            (false, true, false) => UsageReader::Sse(SseParser::new()),
            (false, true, true) => {
                // The body changes length: the client's copy must not announce the server's length.
                self.set_http_response_header("content-length", None);
                UsageReader::Strip(UsageStripper::new(), Vec::new())
            }
        };
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.routed {
            return Action::Continue;
        }
        // Only a stream's time to first token falls back on the first byte: no clock read otherwise.
        if self.streaming && self.first_byte_ms.is_none() && body_size > 0 {
            self.first_byte_ms = Some(host::now_ms());
        }
        // Each chunk is read (and, when we added the usage event, filtered) as it passes; never
        // buffered: what came goes on to the client now.
        let chunk = if matches!(self.usage, UsageReader::None) || body_size == 0 {
            None
        } else {
            self.get_http_response_body(0, body_size)
        };
        let mut replace = None;
        match (&mut self.usage, chunk) {
            (UsageReader::Json(scanner), Some(chunk)) => scanner.feed(&chunk),
            (UsageReader::Sse(parser), Some(chunk)) => {
                let progress = parser.feed(&chunk);
                if progress.first_token && self.first_token_ms.is_none() {
                    self.first_token_ms = Some(host::now_ms());
                }
            }
            (UsageReader::Strip(stripper, out), chunk) => {
                out.clear();
                let progress = stripper.feed_progress(chunk.as_deref().unwrap_or_default(), out);
                if progress.first_token && self.first_token_ms.is_none() {
                    self.first_token_ms = Some(host::now_ms());
                }
                if end_of_stream {
                    stripper.finish(out);
                }
                replace = Some(std::mem::take(out));
            }
            _ => {}
        }
        if let Some(bytes) = replace {
            self.set_http_response_body(0, body_size, &bytes);
            if let UsageReader::Strip(_, out) = &mut self.usage {
                *out = bytes;
            }
        }
        if end_of_stream {
            self.finish_usage();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A response cut short still counts what it reported.
        self.finish_usage();
        if let Some((members, i)) = self.counted.take() {
            members.counters.release(i);
        }
        if self.inference {
            self.publish_log_fields();
        }
        if self.routed {
            let state = Rc::clone(&self.state);
            let now = host::now_ms();
            state.add(
                Metric::Duration,
                self.labels,
                now.saturating_sub(self.started_ms),
            );
            // The first token when the stream shows one, else its first byte.
            if let (true, Some(first)) =
                (self.streaming, self.first_token_ms.or(self.first_byte_ms))
            {
                state.add(
                    Metric::TimeToFirstToken,
                    self.labels,
                    first.saturating_sub(self.started_ms),
                );
                let tokens = self.usage_result.map_or(0, |u| u.completion_tokens);
                if tokens > 1 {
                    let per_token = now.saturating_sub(first) / (tokens - 1);
                    state.add(Metric::TimePerOutputToken, self.labels, per_token);
                }
            }
        }
    }
}

/// How the response's token usage is read.
enum UsageReader {
    None,
    Json(UsageScanner),
    Sse(SseParser),
    /// A stream with our injected usage event, taken out of what the client gets; the buffer is
    /// reused for each chunk's filtered bytes.
    Strip(UsageStripper, Vec<u8>),
}

impl InferenceFilter {
    /// The response is over: count its tokens (once).
    fn finish_usage(&mut self) {
        let usage = match std::mem::replace(&mut self.usage, UsageReader::None) {
            UsageReader::None => return,
            UsageReader::Json(scanner) => scanner.finish(),
            UsageReader::Sse(parser) => parser.usage(),
            UsageReader::Strip(stripper, _) => stripper.parser().usage(),
        };
        let Some(usage) = usage else { return };
        let state = Rc::clone(&self.state);
        state.add(Metric::PromptTokens, self.labels, usage.prompt_tokens);
        state.add(
            Metric::CompletionTokens,
            self.labels,
            usage.completion_tokens,
        );
        self.usage_result = Some(usage);
    }

    /// A request-header change of the decision: made now (single filter), or sent to the gate.
    fn edit_header(&mut self, name: &str, value: &str) {
        match self.mode {
            Mode::Single => self.set_http_request_header(name, Some(value)),
            Mode::Reader => self.edits.push(HeaderEdit {
                name: name.to_string(),
                value: Some(value.to_string()),
            }),
        }
    }

    /// The headers are set: make Envoy pick the route again (single filter), or hand the edits to
    /// the gate, which makes them, clears the route cache and resumes the request.
    fn carry_out_routing(&mut self) -> Result<(), Action> {
        if self.mode == Mode::Single {
            host::clear_route_cache();
            return Ok(());
        }
        let Some(address) = self.gate.take() else {
            return Ok(());
        };
        let release = Release {
            context_id: address.context_id,
            edits: std::mem::take(&mut self.edits),
            clear_route_cache: true,
        };
        let sent = self
            .state
            .gate_queue(&address)
            .map(|q| hostcalls::enqueue_shared_queue(q, Some(&release.encode())));
        match sent {
            Some(Ok(())) => Ok(()),
            other => {
                log::warn!(
                    "reader: the gate's queue {} is not reachable: {other:?}",
                    address.queue
                );
                Err(self.reply(
                    503,
                    "service_unavailable",
                    "inference-router: the gate filter is not reachable",
                ))
            }
        }
    }

    /// Reader mode with no gate on the request's filter chain: the router has already chosen a
    /// host and the headers are gone, so nothing may change (not even the body: its length is
    /// announced). `failureMode` decides: pass the request on untouched, or answer 503.
    fn without_gate(&mut self) -> Action {
        host_stats::increment(stats::READER_GATE_MISSING_TOTAL, 1);
        log_gate_missing_once();
        self.stage = Stage::Done;
        match self.state.config.failure_mode {
            FailureMode::FailOpen => Action::Continue,
            FailureMode::FailClose => self.reply(
                503,
                "service_unavailable",
                "inference-router: no gate filter on this route to carry out the decision",
            ),
        }
    }

    fn too_large(&mut self) -> Action {
        let max = self.state.config.max_request_body_bytes;
        let msg = format!("request body is larger than {max} bytes");
        self.reply(413, "invalid_request_error", &msg)
    }
}

fn log_gate_missing_once() {
    thread_local! {
        static LOGGED: Cell<bool> = const { Cell::new(false) };
    }
    if !LOGGED.with(|l| l.replace(true)) {
        log::error!(
            "reader: no inference-router-gate on this request's filter chain: install the gate \
             after the reader and before the router; until then failureMode decides: requests go \
             on untouched (FailOpen) or get 503 (FailClose)"
        );
    }
}
