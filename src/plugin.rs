//! The root context: reads the role (Envoy's `root_id`) and the configuration document, then
//! hands out HTTP contexts (filter roles) and runs the metrics collector (collector role, or the
//! filter roles in embedded collector mode).
//!
//! | root_id | role |
//! | --- | --- |
//! | `inference-router` | the filter, holding the headers itself (needs `allow_on_headers_stop_iteration`) |
//! | `inference-router-reader` | the filter, letting the headers go on to the gate |
//! | `inference-router-gate` | holds the headers until the reader's decision arrives |
//! | `inference-router-collector` | the singleton metrics collector ("service" mode) |

use crate::filter::{FilterState, InferenceFilter, Mode};
use crate::flow::FLOW_TICK;
use crate::gate::{Gate, GateFilter};
use crate::host::{self, Envoy};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use router_core::collector::coherence::Coherence;
use router_core::collector::Collector;
use router_core::config::{CollectorMode, Config};
use router_core::scheduling::prefix_share::SHARE_PERIOD;
use std::rc::Rc;
use std::time::Duration;

/// How often a root with nothing faster to do looks at Envoy's log level and the collector.
const SLOW_TICK: Duration = Duration::from_secs(1);

enum Role {
    /// Not configured, or configured for a role with no HTTP contexts.
    None,
    Filter(Rc<FilterState>, Mode),
    Gate(Rc<Gate>),
}

pub struct Plugin {
    role: Role,
    collector: Option<Collector>,
    /// Filter roles: is a collector publishing, with the same pools?
    coherence: Option<Coherence>,
    last_log_check_ms: u64,
    /// The collector runs at its own period when flow control ticks faster.
    last_collector_tick_ms: u64,
}

impl Plugin {
    pub fn new() -> Plugin {
        Plugin {
            role: Role::None,
            collector: None,
            coherence: None,
            last_log_check_ms: 0,
            last_collector_tick_ms: 0,
        }
    }

    fn start_collector(&mut self, config: &Config, embedded_owner: Option<u64>) -> bool {
        match Collector::new(config, embedded_owner) {
            Ok(c) => {
                self.set_tick_period(c.tick_period());
                self.collector = Some(c);
                true
            }
            Err(e) => {
                log::error!("invalid configuration: {e}");
                false
            }
        }
    }

    fn configure_filter(&mut self, config: Config, mode: Mode) -> bool {
        if config.collector == CollectorMode::Embedded
            && !self.start_collector(&config, Some(host::random_seed()))
        {
            return false;
        }
        log::info!(
            "filter ({mode:?}) configured: {} pools, {} models, strategy {:?}, collector {:?}",
            config.pools.len(),
            config.models.len(),
            config.strategy,
            config.collector
        );
        self.coherence = Coherence::new(&config);
        let state = FilterState::new(config, host::random_seed());
        let mut period = self
            .collector
            .as_ref()
            .map_or(SLOW_TICK, |c| c.tick_period());
        if state.shares_prefixes() {
            period = period.min(SHARE_PERIOD);
        }
        if state.flow().is_some() {
            period = period.min(FLOW_TICK);
        }
        self.set_tick_period(period);
        self.role = Role::Filter(Rc::new(state), mode);
        true
    }
}

impl Context for Plugin {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(limit) = self.collector.as_ref().and_then(|c| c.body_limit(token)) else {
            return;
        };
        if body_size > limit {
            // Envoy holds the body; copying it in would grow the VM's memory for good.
            if let Some(collector) = self.collector.as_mut() {
                collector.on_oversized(&Envoy, token, body_size, host::now_ms());
            }
            return;
        }
        // A failed call (reset, or a response over Envoy's buffer limit) comes with no headers,
        // and then every getter answers BadArgument, which the SDK turns into a trap.
        let (status, body) = if num_headers == 0 {
            (None, None)
        } else {
            // As bytes: the SDK's string getter traps on a value that is not UTF-8.
            let status = self
                .get_http_call_response_header_bytes(":status")
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
            (status, self.get_http_call_response_body(0, body_size))
        };
        #[cfg(feature = "fault-injection")]
        crate::fault::trap_if(body.as_deref().is_some_and(|b| {
            b.windows(crate::fault::TRAP_PAGE_MARK.len())
                .any(|w| w == crate::fault::TRAP_PAGE_MARK)
        }));
        let now = host::now_ms();
        if let Some(collector) = self.collector.as_mut() {
            collector.on_response(&Envoy, token, status, body.as_deref(), now);
        }
    }
}

impl RootContext for Plugin {
    fn on_configure(&mut self, _size: usize) -> bool {
        host::follow_log_level();
        let role = host::root_id();
        let mut bytes = self.get_plugin_configuration().unwrap_or_default();
        // The gate needs nothing from the document: its install may leave it out.
        if role == host::GATE_ROOT_ID && bytes.iter().all(u8::is_ascii_whitespace) {
            bytes = b"{}".to_vec();
        }
        // One log line naming the field; returning false makes Envoy refuse the configuration.
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        match role.as_str() {
            host::COLLECTOR_ROOT_ID => {
                log::info!(
                    "collector started for {} pools (instance {})",
                    config.pools.len(),
                    config.instance
                );
                self.start_collector(&config, None)
            }
            host::GATE_ROOT_ID => match Gate::new(&config, host::random_seed()) {
                Ok(gate) => {
                    self.set_tick_period(gate.tick_period());
                    log::info!(
                        "gate configured: decisions due within {} ms",
                        config.gate_timeout_ms
                    );
                    self.role = Role::Gate(Rc::new(gate));
                    true
                }
                Err(e) => {
                    log::error!("gate not started: {e}");
                    false
                }
            },
            host::READER_ROOT_ID => self.configure_filter(config, Mode::Reader),
            host::FILTER_ROOT_ID => self.configure_filter(config, Mode::Single),
            other => {
                log::warn!(
                    "unknown root_id \"{other}\": acting as the filter ({})",
                    host::FILTER_ROOT_ID
                );
                self.configure_filter(config, Mode::Single)
            }
        }
    }

    fn on_tick(&mut self) {
        let now = host::now_ms();
        if now.saturating_sub(self.last_log_check_ms) >= 1000 {
            self.last_log_check_ms = now;
            host::follow_log_level();
            report_memory();
        }
        if let Some(c) = self.collector.as_mut() {
            let period = c.tick_period().as_millis() as u64;
            if now.saturating_sub(self.last_collector_tick_ms) >= period {
                self.last_collector_tick_ms = now;
                c.on_tick(&Envoy, now);
            }
        }
        if let Some(check) = self.coherence.as_mut() {
            check.check(&Envoy, &Envoy, now);
        }
        match &self.role {
            Role::Filter(state, _) => {
                state.share_prefixes(now);
                state.on_flow_tick(now);
            }
            Role::Gate(gate) => gate.on_tick(now),
            Role::None => {}
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Role::Gate(gate) = &self.role {
            gate.on_queue_ready(queue_id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match &self.role {
            Role::Filter(state, mode) => {
                Box::new(InferenceFilter::new(Rc::clone(state), *mode, context_id))
            }
            Role::Gate(gate) => Box::new(GateFilter::new(Rc::clone(gate), context_id)),
            // The SDK traps on None: a plugin configured as the collector (or not at all) but
            // inserted as an HTTP filter lets every request pass.
            Role::None => Box::new(PassThrough),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// This VM's linear memory into `inference_router_wasm_memory_bytes`, the high-water mark over
/// every VM of the plugin (a VM's memory never shrinks; flat once warm, or something leaks).
fn report_memory() {
    #[cfg(target_arch = "wasm32")]
    let bytes = Some(core::arch::wasm32::memory_size(0) as u64 * 65536);
    #[cfg(not(target_arch = "wasm32"))]
    let bytes: Option<u64> = None;
    if let Some(bytes) = bytes {
        crate::stats::gauge_max(router_core::stats::WASM_MEMORY_BYTES, bytes);
    }
}

/// An HTTP context that does nothing.
struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}
