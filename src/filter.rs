//! The HTTP filter: one `InferenceFilter` per request, the request flow and its host calls. The
//! decisions are the core's (`router_core`): the body scan and the edit plan (`openai`), the model
//! decision (`request`), the pick (`scheduling::worker`), the label values (`stats::request`), the
//! response's usage (`openai::ResponseTap`).
//!
//! Request flow (docs/contract.md section 4): hold the headers, buffer the body, decide, then carry
//! it out (rewrite the body, set the routing headers, clear the route cache) or send the error
//! reply. Two modes: the single filter pauses the headers itself (Envoy must allow it with
//! `allow_on_headers_stop_iteration`); the reader lets them go on to the gate (`crate::gate`), which
//! holds them, and sends the header edits there instead of making them.

use crate::host::{self, Envoy};
use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use router_core::config::{Config, Criticality, FailureMode};
use router_core::gate::{GateAddress, HeaderEdit, Release, GATE_ADDRESS_KEY, READER_MARK_KEY};
use router_core::openai::{self, BodyEdit, InferenceApi, ResponseTap, Usage};
use router_core::pool::view::Members;
use router_core::request::{decide_model, ModelDecision};
use router_core::scheduling::worker::{Pick, RequestFacts, WorkerScheduler};
use router_core::stats::{self, RequestLabels, RequestMetric};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

pub const MODEL_NAME_HEADER: &str = "x-gateway-model-name";

/// What one worker's filter instances share: the configuration and the worker's scheduler.
pub struct FilterState {
    config: Config,
    scheduler: WorkerScheduler,
    /// Metric ids per metric and label set, so a request never builds a metric name once its
    /// label set has been seen.
    metric_ids: RefCell<host_stats::IdMap<(RequestMetric, RequestLabels), Option<u32>>>,
    /// Reader mode: gate queues resolved so far, by (vm_id, queue name).
    gate_queues: RefCell<HashMap<(String, String), u32>>,
    gate_logged: Cell<bool>,
}

impl FilterState {
    pub fn new(config: Config, seed: u64) -> FilterState {
        FilterState {
            scheduler: WorkerScheduler::new(&config, seed),
            config,
            metric_ids: RefCell::new(host_stats::IdMap::default()),
            gate_queues: RefCell::new(HashMap::new()),
            gate_logged: Cell::new(false),
        }
    }

    /// Add to a counter or record in a histogram, defining its id on the first use of its label set.
    fn add(&self, metric: RequestMetric, labels: RequestLabels, value: u64) {
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

    /// Whether this worker runs a prefix index that wants `share_prefixes` on a timer.
    pub fn shares_prefixes(&self) -> bool {
        self.scheduler.shares_prefixes()
    }

    /// Exchange prefix-index records with the other workers (rate-limited by the scheduler).
    pub fn share_prefixes(&self, now_ms: u64) {
        self.scheduler.share_prefixes(&Envoy, &Envoy, now_ms);
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
}

/// How the filter holds the request while it reads the body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Pause the headers here (`allow_on_headers_stop_iteration: true`).
    Single,
    /// Let the headers go on to the gate, which holds them; send it the header edits.
    Reader,
}

pub struct InferenceFilter {
    state: Rc<FilterState>,
    mode: Mode,
    /// Reader mode: the request-header edits the gate is to make, and where that gate waits.
    edits: Vec<HeaderEdit>,
    gate: Option<GateAddress>,
    /// An inference request whose body is being buffered.
    buffering: bool,
    had_content_length: bool,
    session: Option<String>,
    api: Option<InferenceApi>,
    /// The members and member counted in flight, released in `on_log`.
    counted: Option<(Rc<Members>, usize)>,
    /// Bounded label values of this request's stats, filled in as the decision is made.
    labels: RequestLabels,
    outcome: &'static str,
    /// An inference request (routed or answered by the filter): its fields go to the access log.
    inference: bool,
    /// Routed to an endpoint: its response is timed and its tokens counted.
    routed: bool,
    streaming: bool,
    usage_injected: bool,
    tap: ResponseTap,
    usage: Option<Usage>,
    requested_model: Option<String>,
    target_model: Option<String>,
    endpoint: Option<String>,
    /// When the request headers arrived, the first response body byte, the first token (ms).
    started_ms: u64,
    first_byte_ms: Option<u64>,
    first_token_ms: Option<u64>,
}

impl InferenceFilter {
    pub fn new(state: Rc<FilterState>, mode: Mode) -> InferenceFilter {
        InferenceFilter {
            state,
            mode,
            edits: Vec::new(),
            gate: None,
            buffering: false,
            had_content_length: false,
            session: None,
            api: None,
            counted: None,
            labels: RequestLabels::default(),
            outcome: "",
            inference: false,
            routed: false,
            streaming: false,
            usage_injected: false,
            tap: ResponseTap::None,
            usage: None,
            requested_model: None,
            target_model: None,
            endpoint: None,
            started_ms: 0,
            first_byte_ms: None,
            first_token_ms: None,
        }
    }

    /// Count the request in `inference_router_requests_total` with its outcome.
    fn count(&mut self, outcome: &'static str) {
        self.outcome = outcome;
        self.state
            .add(RequestMetric::Requests(outcome), self.labels, 1);
    }

    /// Send an OpenAI-shaped error and stop the request here.
    fn reply(&mut self, status: u32, kind: &str, message: &str) -> Action {
        log::debug!("{status} {kind}: {message}");
        self.count(match status {
            429 => "shed",
            503 => "unavailable",
            _ => "rejected",
        });
        self.inference = true;
        self.buffering = false;
        let body = openai::error_body(status as u16, kind, message);
        self.send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    fn too_large(&mut self) -> Action {
        let max = self.state.config.max_request_body_bytes;
        let msg = format!("request body is larger than {max} bytes");
        self.reply(413, "invalid_request_error", &msg)
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

    fn set_model_header(&mut self, model: &str) {
        self.target_model = Some(model.to_string());
        // Envoy refuses header values with control characters; such a name simply goes without it.
        if model.bytes().all(|b| b >= 0x20 && b != 0x7f) {
            self.edit_header(MODEL_NAME_HEADER, model);
        }
    }

    fn apply_body_edit(&mut self, edit: BodyEdit) {
        self.set_http_request_body(0, edit.replaced, &edit.bytes);
        self.usage_injected = edit.usage_injected;
        if self.had_content_length {
            self.edit_header("content-length", &edit.new_len.to_string());
        }
    }

    /// Route to an endpoint of `pool`: set the destination header, or reply 429 / 503.
    fn route_to_pool(&mut self, pool: usize, facts: &RequestFacts) -> Result<(), Action> {
        let state = Rc::clone(&self.state);
        let Some(p) = state.config.pools.get(pool) else {
            return Err(self.reply(503, "service_unavailable", "pool not found"));
        };
        match state
            .scheduler
            .pick(&Envoy, &Envoy, pool, facts, host::now_ms())
        {
            Pick::Endpoint {
                members,
                index,
                counted,
                fail_open,
            } => {
                let endpoint = members
                    .endpoints
                    .get(index)
                    .map(String::as_str)
                    .unwrap_or_default();
                count_pick(&p.name, &members, index, endpoint);
                self.edit_header(&state.config.destination_header, endpoint);
                self.endpoint = Some(endpoint.to_string());
                if fail_open {
                    log::debug!("pool {}: no fresh metrics, failing open", p.name);
                }
                self.outcome = if fail_open { "failed_open" } else { "routed" };
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

    /// The headers are set: make Envoy pick the route again (single filter), or hand the edits to
    /// the gate, which makes them, clears the route cache and resumes the request.
    fn carry_out_routing(&mut self) -> Result<(), Action> {
        let Some(address) = self.gate.take() else {
            host::clear_route_cache();
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
        self.buffering = false;
        match self.state.config.failure_mode {
            FailureMode::FailOpen => Action::Continue,
            FailureMode::FailClose => self.reply(
                503,
                "service_unavailable",
                "inference-router: no gate filter on this route to carry out the decision",
            ),
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
        let config = &state.config;
        let session = self
            .session
            .as_deref()
            .map(str::as_bytes)
            .or(fields.user.as_deref().map(str::as_bytes));
        let decision = decide_model(config, &fields.model, session, state.scheduler.random());
        self.requested_model = Some(fields.model.to_string());
        self.labels = RequestLabels::of(config, &decision);
        // Only PREFIX_CACHE reads the prompt; other strategies never hash it.
        let prompt: &[u8] = match (&fields.prompt_span, config.strategy.needs_prefix()) {
            (Some(span), true) => body.get(span.clone()).unwrap_or_default(),
            _ => &[],
        };
        // Streams report usage only when asked: ask on the client's behalf (and take it out again).
        let ask_usage = fields.stream
            && matches!(
                self.api,
                Some(InferenceApi::Completions | InferenceApi::ChatCompletions)
            );
        let (pool, target, criticality) = match decision {
            ModelDecision::Reject => {
                let msg = format!("The model `{}` does not exist.", fields.model);
                return self.reply(404, "NotFoundError", &msg);
            }
            ModelDecision::Passthrough { pool } => (pool, None, Criticality::Standard),
            ModelDecision::Configured { model, target } => {
                (Some(model.pool), target, model.criticality)
            }
        };
        if let Some(pool) = pool {
            let facts = RequestFacts {
                target_model: target.unwrap_or(&fields.model),
                criticality,
                prompt,
            };
            if let Err(action) = self.route_to_pool(pool, &facts) {
                return action;
            }
        }
        if let Some(edit) = openai::plan_body_edit(body, &fields, target, ask_usage) {
            self.apply_body_edit(edit);
        }
        self.set_model_header(target.unwrap_or(&fields.model));
        if let Err(action) = self.carry_out_routing() {
            return action;
        }
        let outcome = match decision {
            ModelDecision::Passthrough { .. } => "passthrough",
            _ if self.outcome == "failed_open" => "failed_open",
            _ => "routed",
        };
        self.count(outcome);
        self.routed = true;
        self.inference = true;
        self.streaming = fields.stream;
        self.buffering = false;
        Action::Continue
    }

    /// The response is over: count its tokens (once).
    fn finish_usage(&mut self) {
        let Some(usage) = self.tap.finish() else {
            return;
        };
        let state = Rc::clone(&self.state);
        state.add(
            RequestMetric::PromptTokens,
            self.labels,
            usage.prompt_tokens,
        );
        state.add(
            RequestMetric::CompletionTokens,
            self.labels,
            usage.completion_tokens,
        );
        self.usage = Some(usage);
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
        if let Some(u) = self.usage {
            host::set_property(
                "inference_router.prompt_tokens",
                u.prompt_tokens.to_string().as_bytes(),
            );
            host::set_property(
                "inference_router.completion_tokens",
                u.completion_tokens.to_string().as_bytes(),
            );
        }
    }
}

/// Count a pick in `inference_router_endpoint_picks_total`; the metric id is cached with the
/// member list, so a pick costs one host call and no name building.
fn count_pick(pool: &str, members: &Members, index: usize, endpoint: &str) {
    let Some(cell) = members.host_ids.get(index) else {
        return;
    };
    let id = match cell.get() {
        Some(id) => Some(id),
        None => {
            let name = stats::name_with_labels(
                stats::ENDPOINT_PICKS_TOTAL,
                &[("pool", pool), ("endpoint", endpoint)],
            );
            let id = host_stats::define_counter(&name);
            cell.set(id);
            id
        }
    };
    if let Some(id) = id {
        host_stats::increment_id(id, 1);
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
        self.buffering = true;
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
        self.tap = ResponseTap::new(encoded, self.streaming, self.usage_injected);
        if self.tap.changes_length() {
            self.set_http_response_header("content-length", None);
        }
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
        if self.tap.reads() {
            let chunk = if body_size == 0 {
                None
            } else {
                self.get_http_response_body(0, body_size)
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
        // A response cut short still counts what it reported.
        self.finish_usage();
        if let Some((members, i)) = self.counted.take() {
            members.counters.release(&Envoy, i);
        }
        if self.inference {
            self.publish_log_fields();
        }
        if !self.routed {
            return;
        }
        let state = Rc::clone(&self.state);
        let now = host::now_ms();
        state.add(
            RequestMetric::Duration,
            self.labels,
            now.saturating_sub(self.started_ms),
        );
        // The first token when the stream shows one, else its first byte.
        if let (true, Some(first)) = (self.streaming, self.first_token_ms.or(self.first_byte_ms)) {
            state.add(
                RequestMetric::TimeToFirstToken,
                self.labels,
                first.saturating_sub(self.started_ms),
            );
            let tokens = self.usage.map_or(0, |u| u.completion_tokens);
            if tokens > 1 {
                let per_token = now.saturating_sub(first) / (tokens - 1);
                state.add(RequestMetric::TimePerOutputToken, self.labels, per_token);
            }
        }
    }
}
