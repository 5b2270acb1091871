//! The root context: reads the role and the configuration document, then hands out HTTP contexts
//! (filter role) or runs the collector (collector role).

use crate::filter::{FilterState, InferenceFilter};
use crate::host;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use router_core::config::Config;
use std::rc::Rc;

pub struct Plugin {
    state: Option<Rc<FilterState>>,
}

impl Plugin {
    pub fn new() -> Plugin {
        Plugin { state: None }
    }
}

impl Context for Plugin {}

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
        match role.as_str() {
            host::COLLECTOR_ROOT_ID => crate::collector::configure(&config),
            // Any other root_id is served as the filter, with a word in the log.
            other => {
                if other != host::FILTER_ROOT_ID {
                    log::warn!("unknown root_id \"{other}\": acting as the filter");
                }
                log::info!(
                    "filter configured: {} pools, {} models, strategy {:?}",
                    config.pools.len(),
                    config.models.len(),
                    config.strategy
                );
                self.state = Some(Rc::new(FilterState::new(config, host::random_seed())));
                true
            }
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
