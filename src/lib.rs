//! The wasm module: a thin host layer over `router_core`. This is the only code that calls
//! proxy-wasm; every decision is made in the core.
//!
//! One module, its roles chosen by Envoy's `root_id` (docs/contract.md section 2; the table in
//! `plugin.rs`): the filter (`inference-router`, or the `inference-router-reader` and
//! `inference-router-gate` pair for control planes) and the collector (`inference-router-collector`).

#[cfg(feature = "fault-injection")]
mod fault;
mod filter;
mod flow;
mod gate;
mod host;
mod plugin;
mod probe;
mod stats;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Until on_configure follows Envoy's own level for Wasm logs.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(plugin::Plugin::new()) });
}}
