//! The HTTP filter role: one `InferenceFilter` per request. Request flow (CONTRACT section 4):
//! headers are paused, the body is buffered, the core decides (model, target, endpoint), and this
//! layer carries the decision out: rewrite the model bytes, set the routing headers, clear the
//! route cache, or send the error reply. Responses pass through untouched, never buffered.

use crate::host;
use crate::in_flight::InFlight;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use router_core::config::Config;
use router_core::openai;
use router_core::request::{decide_model, ModelDecision};
use router_core::rollout::stable_hash;
use router_core::scheduling::{self, Rng, Strategy};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

pub const MODEL_NAME_HEADER: &str = "x-gateway-model-name";

/// What one worker's filter instances share: the compiled configuration and per-worker state.
pub struct FilterState {
    config: Config,
    rng: RefCell<Rng>,
    /// Per-pool round-robin position of this worker.
    round_robin: Vec<Cell<u64>>,
    /// Per-pool in-flight counts shared across workers.
    in_flight: Vec<InFlight>,
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
        let in_flight = config
            .pools
            .iter()
            .map(|p| {
                let fingerprint = stable_hash(p.endpoints.join(",").as_bytes());
                InFlight::new(&p.name, p.endpoints.len(), fingerprint)
            })
            .collect();
        FilterState {
            config,
            rng: RefCell::new(rng),
            round_robin,
            in_flight,
        }
    }

    fn random(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }

    /// Pick an endpoint of `pool` by the configured strategy. Returns the endpoint index and whether
    /// it was counted in flight (and so must be released when the request ends).
    fn pick_endpoint(&self, pool: usize) -> Option<(usize, bool)> {
        let n = self.config.pools.get(pool)?.endpoints.len();
        let mut rng = self.rng.borrow_mut();
        match self.config.strategy {
            Strategy::RoundRobin => {
                let cell = self.round_robin.get(pool)?;
                let mut c = cell.get();
                let i = scheduling::round_robin(n, &mut c);
                cell.set(c);
                i.map(|i| (i, false))
            }
            Strategy::Random => scheduling::random(n, &mut rng).map(|i| (i, false)),
            Strategy::LeastRequest => self
                .in_flight
                .get(pool)?
                .pick_and_increment(|counts| scheduling::least_request(counts, &mut rng))
                .map(|i| (i, true)),
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
    stage: Stage,
    had_content_length: bool,
    session: Option<String>,
    /// (pool, endpoint) counted in flight, released in `on_log`.
    counted: Option<(usize, usize)>,
}

impl InferenceFilter {
    pub fn new(state: Rc<FilterState>) -> InferenceFilter {
        InferenceFilter {
            state,
            stage: Stage::Done,
            had_content_length: false,
            session: None,
            counted: None,
        }
    }

    /// Send an OpenAI-shaped error and stop the request here.
    fn reply(&mut self, status: u32, kind: &str, message: &str) -> Action {
        log::info!("{status} {kind}: {message}");
        let body = openai::error_body(status as u16, kind, message);
        self.send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        self.stage = Stage::Done;
        Action::Pause
    }

    /// Route to an endpoint of `pool`: set the destination header or reply 503.
    fn route_to_pool(&mut self, pool: usize) -> Result<(), Action> {
        let state = Rc::clone(&self.state);
        let Some(p) = state.config.pools.get(pool) else {
            return Err(self.reply(503, "service_unavailable", "pool not found"));
        };
        let Some((i, counted)) = state.pick_endpoint(pool) else {
            let msg = format!("no endpoint available in pool \"{}\"", p.name);
            return Err(self.reply(503, "service_unavailable", &msg));
        };
        if counted {
            self.counted = Some((pool, i));
        }
        let endpoint = p.endpoints.get(i).map(String::as_str).unwrap_or_default();
        self.set_http_request_header(&state.config.destination_header, Some(endpoint));
        Ok(())
    }

    fn set_model_header(&self, model: &str) {
        // Envoy refuses header values with control characters; such a name simply goes without it.
        if model.bytes().all(|b| b >= 0x20 && b != 0x7f) {
            self.set_http_request_header(MODEL_NAME_HEADER, Some(model));
        }
    }

    /// The whole body is here: decide and act.
    fn on_full_body(&mut self, body: &[u8]) -> Action {
        let fields = match openai::scan_request(body) {
            Ok(f) => f,
            Err(e) => return self.reply(400, "invalid_request_error", &e.message()),
        };
        let state = Rc::clone(&self.state);
        let session = self
            .session
            .as_deref()
            .map(str::as_bytes)
            .or(fields.user.as_deref().map(str::as_bytes));
        let decision = decide_model(&state.config, &fields.model, session, state.random());
        match decision {
            ModelDecision::Reject => {
                let msg = format!("The model `{}` does not exist.", fields.model);
                return self.reply(404, "NotFoundError", &msg);
            }
            ModelDecision::Passthrough { pool } => {
                if let Some(pool) = pool {
                    if let Err(action) = self.route_to_pool(pool) {
                        return action;
                    }
                }
                self.set_model_header(&fields.model);
            }
            ModelDecision::Configured { model, target } => {
                if let Err(action) = self.route_to_pool(model.pool) {
                    return action;
                }
                match target {
                    Some(target) => {
                        let span = fields.model_span.clone();
                        let prefix = openai::model_prefix_replacement(body, span.clone(), target);
                        // Envoy's buffer API replaces a prefix: only the bytes up to the model value move.
                        self.set_http_request_body(0, span.end, &prefix);
                        if self.had_content_length {
                            let len = body.len() - span.end + prefix.len();
                            self.set_http_request_header("content-length", Some(&len.to_string()));
                        }
                        self.set_model_header(target);
                    }
                    None => self.set_model_header(&fields.model),
                }
            }
        }
        host::clear_route_cache();
        self.stage = Stage::Done;
        Action::Continue
    }
}

impl Context for InferenceFilter {}

impl HttpContext for InferenceFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let config = &state.config;
        // Routing headers are ours alone: a client's copy is never honoured, on any request.
        let mut removed = false;
        for name in [config.destination_header.as_str(), MODEL_NAME_HEADER] {
            if self.get_http_request_header(name).is_some() {
                self.set_http_request_header(name, None);
                removed = true;
            }
        }
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if openai::inference_api(&method, &path).is_none() {
            if removed {
                host::clear_route_cache();
            }
            return Action::Continue;
        }
        if end_of_stream {
            return self.reply(400, "invalid_request_error", "request body is empty");
        }
        let content_length = self.get_http_request_header("content-length");
        self.had_content_length = content_length.is_some();
        if let Some(len) = content_length.and_then(|v| v.trim().parse::<u64>().ok()) {
            if len > config.max_request_body_bytes {
                return self.too_large();
            }
        }
        self.session = config
            .session_header
            .as_deref()
            .and_then(|h| self.get_http_request_header(h));
        self.stage = Stage::Buffering;
        Action::Pause
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

    fn on_log(&mut self) {
        if let Some((pool, i)) = self.counted.take() {
            if let Some(counter) = self.state.in_flight.get(pool) {
                counter.decrement(i);
            }
        }
    }
}

impl InferenceFilter {
    fn too_large(&mut self) -> Action {
        let max = self.state.config.max_request_body_bytes;
        let msg = format!("request body is larger than {max} bytes");
        self.reply(413, "invalid_request_error", &msg)
    }
}
