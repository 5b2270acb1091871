//! The gate role (`root_id: inference-router-gate`), for installs whose control plane cannot set
//! `allow_on_headers_stop_iteration` (Istio WasmPlugin, Envoy Gateway EnvoyExtensionPolicy).
//!
//! Inserted after the reader (`inference-router-reader`) and before the router, the gate pauses
//! the headers of every request the reader marked as one it will decide. Without the flag that
//! pause is StopAllIteration: the body queues up behind the gate, which is what a gate wants. The
//! reader reads the body, decides and sends the header edits through this VM's shared queue; the
//! root context applies them on behalf of the paused stream and resumes it. A request whose
//! decision does not come within `gate.timeoutMs` gets a 503, never a hang. The handoff formats
//! are `router_core::gate`.

use crate::host;
use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use router_core::config::{Config, FailureMode};
use router_core::gate::{GateAddress, Release, GATE_ADDRESS_KEY, QUEUE_PREFIX, READER_MARK_KEY};
use router_core::{openai, stats};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// One gate VM's state, shared by its root context and its HTTP contexts.
pub struct Gate {
    queue_id: u32,
    /// This VM's address without the context id, filled in per request.
    address: GateAddress,
    timeout_ms: u64,
    failure_mode: FailureMode,
    /// Paused requests: context id → when the gate paused it (ms).
    waiting: RefCell<HashMap<u32, u64>>,
}

impl Gate {
    /// Register this VM's queue. Its name is unique per VM instance: each worker has its own VM,
    /// and a queue is delivered to the worker that registered it.
    pub fn new(config: &Config, seed: u64) -> Result<Gate, String> {
        let queue = format!("{QUEUE_PREFIX}{seed:016x}");
        let queue_id = hostcalls::register_shared_queue(&queue)
            .map_err(|e| format!("shared queue {queue} not registered: {e:?}"))?;
        Ok(Gate {
            queue_id,
            address: GateAddress {
                vm_id: host::vm_id(),
                queue,
                context_id: 0,
                instance: host::vm_instance(),
            },
            // A reader with flow control may hold a request up to its longest wait first.
            timeout_ms: config.gate_timeout_ms.saturating_add(
                config
                    .flow_control
                    .map_or(0, |f| f.ttl_ms.max(f.no_endpoint_ttl_ms)),
            ),
            failure_mode: config.failure_mode,
            waiting: RefCell::new(HashMap::new()),
        })
    }

    /// Often enough that a timeout is answered within a tenth of it (at most a second late).
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis((self.timeout_ms / 10).clamp(10, 1000))
    }

    /// Decisions from readers: apply each to its paused stream and let it go on.
    pub fn on_queue_ready(&self, queue_id: u32) {
        if queue_id != self.queue_id {
            return;
        }
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(self.queue_id) {
            match Release::decode(&bytes) {
                Ok(release) => self.release(&release),
                Err(e) => log::warn!("gate: undecodable release from a reader ({e:?}): is the reader the same module version?"),
            }
        }
    }

    fn release(&self, release: &Release) {
        // Gone already (client reset, timed out): nothing to resume.
        if self
            .waiting
            .borrow_mut()
            .remove(&release.context_id)
            .is_none()
        {
            return;
        }
        if hostcalls::set_effective_context(release.context_id).is_err() {
            return;
        }
        host::edit_request_headers(
            release
                .edits
                .iter()
                .map(|e| (e.name.as_str(), e.value.as_deref())),
            release.clear_route_cache,
        );
        if let Err(e) = hostcalls::resume_http_request() {
            log::warn!("gate: request not resumed: {e:?}");
        }
    }

    /// Answer every request whose decision is overdue.
    pub fn on_tick(&self, now_ms: u64) {
        let overdue: Vec<u32> = {
            let mut waiting = self.waiting.borrow_mut();
            let ids: Vec<u32> = waiting
                .iter()
                .filter(|(_, &since)| now_ms.saturating_sub(since) >= self.timeout_ms)
                .map(|(&id, _)| id)
                .collect();
            for id in &ids {
                waiting.remove(id);
            }
            ids
        };
        for id in overdue {
            host_stats::increment(stats::GATE_TIMEOUTS_TOTAL, 1);
            log::warn!(
                "gate: no decision from the reader within {} ms; answering 503",
                self.timeout_ms
            );
            if hostcalls::set_effective_context(id).is_ok() {
                let message = format!(
                    "inference-router: no routing decision within {} ms (gate.timeoutMs)",
                    self.timeout_ms
                );
                send_error(503, "service_unavailable", &message);
            }
        }
    }
}

fn send_error(status: u16, kind: &str, message: &str) {
    let body = openai::error_body(status, kind, message);
    let sent = hostcalls::send_http_response(
        u32::from(status),
        vec![("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    if let Err(e) = sent {
        log::warn!("gate: reply {status} not sent: {e:?}");
    }
}

/// The gate's per-request context.
pub struct GateFilter {
    gate: Rc<Gate>,
    context_id: u32,
}

impl GateFilter {
    pub fn new(gate: Rc<Gate>, context_id: u32) -> GateFilter {
        GateFilter { gate, context_id }
    }

    /// An inference request the reader did not mark: the reader is not installed before the
    /// gate, or its VM failed and its failure policy skips it.
    fn unmarked(&self) -> Action {
        let header = |name| {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default()
        };
        if openai::inference_api(&header(":method"), &header(":path")).is_none() {
            return Action::Continue;
        }
        host_stats::increment(stats::GATE_READER_MISSING_TOTAL, 1);
        log_reader_missing_once();
        match self.gate.failure_mode {
            // Routed by the cluster's own load balancing (a pool member under override_host).
            FailureMode::FailOpen => Action::Continue,
            FailureMode::FailClose => {
                send_error(
                    503,
                    "service_unavailable",
                    "inference-router: the reader filter did not run for this request",
                );
                Action::Pause
            }
        }
    }
}

fn log_reader_missing_once() {
    thread_local! {
        static LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOGGED.with(|l| l.replace(true)) {
        log::error!(
            "gate: an inference request reached the gate without the reader's mark: install the \
             inference-router-reader filter before the gate (a second WasmPlugin / wasm entry), \
             or its VM failed; failureMode decides what happens to such requests"
        );
    }
}

impl Context for GateFilter {}

impl HttpContext for GateFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if host::property(READER_MARK_KEY).is_none() {
            return self.unmarked();
        }
        let address = GateAddress {
            context_id: self.context_id,
            ..self.gate.address.clone()
        };
        if !host::set_property(GATE_ADDRESS_KEY, &address.encode()) {
            // The reader could not find us: let the request go rather than hold it for nothing.
            return Action::Continue;
        }
        self.gate
            .waiting
            .borrow_mut()
            .insert(self.context_id, host::now_ms());
        Action::Pause
    }
}

impl Drop for GateFilter {
    fn drop(&mut self) {
        self.gate.waiting.borrow_mut().remove(&self.context_id);
    }
}

/// The reader's side of the handoff: finds the gate of the current request and sends it the
/// decision. Gate queues are resolved once per gate VM.
#[derive(Default)]
pub struct GateLink {
    queues: RefCell<HashMap<(String, String), u32>>,
    logged: Cell<bool>,
}

impl GateLink {
    /// The gate waiting on the current request, if one published itself.
    pub fn find() -> Option<GateAddress> {
        host::property(GATE_ADDRESS_KEY).and_then(|b| GateAddress::decode(&b).ok())
    }

    /// Hand `release` to the gate at `address`; Err says why it could not be.
    pub fn send(&self, address: &GateAddress, release: &Release) -> Result<(), String> {
        let queue = self
            .queue(address)
            .ok_or_else(|| format!("no queue {} in vm_id \"{}\"", address.queue, address.vm_id))?;
        hostcalls::enqueue_shared_queue(queue, Some(&release.encode()))
            .map_err(|e| format!("{e:?}"))
    }

    fn queue(&self, address: &GateAddress) -> Option<u32> {
        let key = (address.vm_id.clone(), address.queue.clone());
        if let Some(&id) = self.queues.borrow().get(&key) {
            return Some(id);
        }
        let id = hostcalls::resolve_shared_queue(&address.vm_id, &address.queue)
            .ok()
            .flatten()?;
        if !self.logged.replace(true) {
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
        self.queues.borrow_mut().insert(key, id);
        Some(id)
    }
}
