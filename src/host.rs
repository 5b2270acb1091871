//! Small wrappers around hostcalls used by both roles.

use proxy_wasm::hostcalls;

pub const FILTER_ROOT_ID: &str = "inference-router";
pub const COLLECTOR_ROOT_ID: &str = "inference-router-collector";

/// The `root_id` Envoy gave this plugin, which selects its role.
pub fn root_id() -> String {
    hostcalls::get_property(vec!["plugin_root_id"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// Make Envoy pick the route again: the filter changed headers a route may match on.
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
