//! The root context: reads the role and the configuration document, then hands out HTTP contexts
//! (filter role) and runs the metrics collector (collector role, or the filter role in embedded
//! collector mode).

use crate::collector::Collector;
use crate::filter::{FilterState, InferenceFilter};
use crate::host;
use crate::prefix_share::SHARE_PERIOD;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use router_core::config::{CollectorMode, Config};
use std::rc::Rc;

pub struct Plugin {
    state: Option<Rc<FilterState>>,
    collector: Option<Collector>,
}

impl Plugin {
    pub fn new() -> Plugin {
        Plugin {
            state: None,
            collector: None,
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
}

impl Context for Plugin {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(collector) = self.collector.as_mut() else {
            return;
        };
        if !collector.owns(token) {
            return;
        }
        let status = hostcalls_status(self.get_http_call_response_header(":status"));
        let body = self.get_http_call_response_body(0, body_size);
        let now = host::now_ms();
        if let Some(collector) = self.collector.as_mut() {
            collector.on_response(token, status, body, now);
        }
    }
}

fn hostcalls_status(value: Option<String>) -> Option<u16> {
    value.and_then(|v| v.parse().ok())
}

impl RootContext for Plugin {
    fn on_configure(&mut self, _size: usize) -> bool {
        let role = host::root_id();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        // One log line naming the field; returning false makes Envoy refuse the configuration.
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        if role == host::COLLECTOR_ROOT_ID {
            log::info!("collector started for {} pools", config.pools.len());
            return self.start_collector(&config, None);
        }
        if role != host::FILTER_ROOT_ID {
            log::warn!("unknown root_id \"{role}\": acting as the filter");
        }
        if config.collector == CollectorMode::Embedded
            && !self.start_collector(&config, Some(host::random_seed()))
        {
            return false;
        }
        log::info!(
            "filter configured: {} pools, {} models, strategy {:?}, collector {:?}",
            config.pools.len(),
            config.models.len(),
            config.strategy,
            config.collector
        );
        let state = FilterState::new(config, host::random_seed());
        if state.shares_prefixes() {
            let period = self
                .collector
                .as_ref()
                .map_or(SHARE_PERIOD, |c| c.tick_period().min(SHARE_PERIOD));
            self.set_tick_period(period);
        }
        self.state = Some(Rc::new(state));
        true
    }

    fn on_tick(&mut self) {
        let now = host::now_ms();
        if let Some(c) = self.collector.as_mut() {
            c.on_tick(now);
        }
        if let Some(state) = &self.state {
            state.share_prefixes(now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(InferenceFilter::new(state)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
