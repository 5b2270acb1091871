//! The wasm module: a thin host layer over `router_core`. This is the only code that calls
//! proxy-wasm; every decision is made in the core.
//!
//! One module, two roles chosen by Envoy's `root_id` (CONTRACT section 2):
//! `inference-router` (the HTTP filter) and `inference-router-collector` (the metrics collector).

mod collector;
mod counters;
mod filter;
mod gate;
mod host;
mod plugin;
mod pool_view;
mod prefix_share;
mod stats;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(plugin::Plugin::new()) });
}}
