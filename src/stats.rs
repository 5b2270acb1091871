//! Envoy stats defined by the plugin: metric ids are defined once per name and cached per VM.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

thread_local! {
    static IDS: RefCell<IdMap<String, u32>> = RefCell::new(IdMap::default());
}

/// A map for metric ids. Its keys come from the configuration (names and label indices), never
/// from requests, so it needs no DoS-resistant hash: FNV-1a costs a fraction of SipHash in wasm,
/// and the filter looks ids up several times per request.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// 64-bit FNV-1a.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
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

/// Raise a gauge to `value` if it is below: a high-water mark over every VM that reports it.
pub fn gauge_max(name: &str, value: u64) {
    if let Some(id) = id(MetricType::Gauge, name) {
        if hostcalls::get_metric(id).is_ok_and(|current| current >= value) {
            return;
        }
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

/// Add `delta` (negative: subtract) to a gauge. Each worker adds its own part, so the gauge is
/// the sum over the Envoy's workers.
pub fn gauge_add(name: &str, delta: i64) {
    if let Some(id) = id(MetricType::Gauge, name) {
        let _ = hostcalls::increment_metric(id, delta);
    }
}

/// Record a value in a histogram by name.
pub fn record(name: &str, value: u64) {
    if let Some(id) = id(MetricType::Histogram, name) {
        let _ = hostcalls::record_metric(id, value);
    }
}
