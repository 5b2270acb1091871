//! Envoy stats defined by the plugin: metric ids are defined once per name and cached per VM.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

fn id(kind: MetricType, name: &str) -> Option<u32> {
    IDS.with(|ids| {
        if let Some(id) = ids.borrow().get(name) {
            return Some(*id);
        }
        match hostcalls::define_metric(kind, name) {
            Ok(id) => {
                ids.borrow_mut().insert(name.to_string(), id);
                Some(id)
            }
            Err(e) => {
                log::warn!("metric {name} not defined: {e:?}");
                None
            }
        }
    })
}

pub fn increment(name: &str, by: u64) {
    if let Some(id) = id(MetricType::Counter, name) {
        let _ = hostcalls::increment_metric(id, by as i64);
    }
}

pub fn gauge(name: &str, value: u64) {
    if let Some(id) = id(MetricType::Gauge, name) {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// A counter's id, defined once by the caller who caches it.
pub fn define_counter(name: &str) -> Option<u32> {
    id(MetricType::Counter, name)
}

pub fn increment_id(id: u32, by: u64) {
    let _ = hostcalls::increment_metric(id, by as i64);
}

pub fn define_histogram(name: &str) -> Option<u32> {
    id(MetricType::Histogram, name)
}

pub fn record_id(id: u32, value: u64) {
    let _ = hostcalls::record_metric(id, value);
}
