//! The proxy-wasm host calls the roles share, and [`Envoy`]: the core's host traits
//! (`router_core::host`) carried out with them. The SDK's getters unwrap and its hostcalls panic
//! on a status they do not expect, either of which traps the VM: these wrappers turn every status
//! the hostcalls return into a value or a log line, and the roles make each call only where Envoy
//! answers it (no response getter after a failed HTTP call: docs/robustness.md).

use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, Status};
use router_core::host::{Cas, HttpDispatch, Level, Metrics, Say, SharedStore, Write};
use std::time::Duration;

/// The single filter: needs `allow_on_headers_stop_iteration: true` (plain Envoy, EnvoyFilter).
pub const FILTER_ROOT_ID: &str = "inference-router";
/// The pair for installs that cannot set that flag (Istio WasmPlugin, Envoy Gateway): the
/// reader decides from the body, the gate holds the headers until it has (`router_core::gate`).
pub const READER_ROOT_ID: &str = "inference-router-reader";
pub const GATE_ROOT_ID: &str = "inference-router-gate";
pub const COLLECTOR_ROOT_ID: &str = "inference-router-collector";

/// Envoy, as the core's host traits see it.
pub struct Envoy;

impl SharedStore for Envoy {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), cas)) => Some((bytes, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Write {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Write::Done,
            Err(Status::CasMismatch) => Write::Lost,
            Err(e) => {
                log::debug!("shared data {key} not written: {e:?}");
                Write::Failed
            }
        }
    }
}

impl HttpDispatch for Envoy {
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), None, vec![], timeout)
            .map_err(|e| format!("{e:?}"))
    }
}

impl Metrics for Envoy {
    fn add_counter(&self, name: &str, by: u64) {
        host_stats::increment(name, by);
    }

    fn set_gauge(&self, name: &str, value: u64) {
        host_stats::gauge(name, value);
    }
}

impl Say for Envoy {
    fn say(&self, level: Level, message: &str) {
        match level {
            Level::Debug => log::debug!("{message}"),
            Level::Info => log::info!("{message}"),
            Level::Warn => log::warn!("{message}"),
            Level::Error => log::error!("{message}"),
        }
    }
}

/// Follow Envoy's own log level for Wasm (`--component-log-level wasm:debug`, or the admin's
/// `/logging?wasm=debug` at run time): the module's logger drops what Envoy would not print, before
/// formatting it.
pub fn follow_log_level() {
    let level = hostcalls::get_log_level().unwrap_or(LogLevel::Info);
    proxy_wasm::set_log_level(level);
}

/// The `root_id` Envoy gave this plugin, which selects its role.
pub fn root_id() -> String {
    string_property("plugin_root_id")
}

/// This plugin's `vm_id` (empty when Envoy was given none, as under Istio).
pub fn vm_id() -> String {
    string_property("plugin_vm_id")
}

fn string_property(name: &str) -> String {
    property(name)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// A property of the current (or effective) context, e.g. filter state Envoy keeps as
/// `wasm.<key>`. Absent and failed reads are both None.
pub fn property(key: &str) -> Option<Vec<u8>> {
    hostcalls::get_property(vec![key]).ok().flatten()
}

/// Set filter state `wasm.<key>` on the current stream; a refusal the SDK reports is logged.
pub fn set_property(key: &str, value: &[u8]) -> bool {
    match hostcalls::set_property(vec![key], Some(value)) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("property {key} not set: {e:?}");
            false
        }
    }
}

/// Set (`Some`) or remove (`None`) request headers of the current stream; a header Envoy refuses
/// is logged. With `refresh_route`, Envoy picks the route again afterwards: an accepted edit does
/// that by itself (Envoy's Wasm host clears the route cache on every request-header add, replace
/// and remove), so the explicit call is made only when no edit went through.
pub fn edit_request_headers<'a>(
    edits: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    refresh_route: bool,
) {
    let mut edited = false;
    for (name, value) in edits {
        match hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
            Ok(()) => edited = true,
            Err(e) => log::warn!("header {name} not set: {e:?}"),
        }
    }
    if refresh_route && !edited {
        clear_route_cache();
    }
}

/// Make Envoy pick the route again: the filter changed headers a route may match on. Not needed
/// after a request-header edit through the ABI, which clears the route cache itself (see
/// [`edit_request_headers`]).
pub fn clear_route_cache() {
    if let Err(e) = hostcalls::call_foreign_function("clear_route_cache", Some(&[])) {
        log::warn!("clear_route_cache failed: {e:?}");
    }
}

/// A seed for the PRNG: WASI randomness, else the clock.
pub fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::getrandom(&mut buf).is_ok() {
        return u64::from_le_bytes(buf);
    }
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// Wall-clock milliseconds since the Unix epoch, as Envoy reports it.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random number fixed for this VM instance (every worker has its own instance of a VM):
/// tells two roles whether they share one.
pub fn vm_instance() -> u64 {
    thread_local! {
        static INSTANCE: u64 = random_seed();
    }
    INSTANCE.with(|i| *i)
}
