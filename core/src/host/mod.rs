//! What the core needs from the proxy it runs in, as small traits: Envoy's shared data with
//! compare-and-swap, HTTP calls out, stats, and a place to say things. The module's host layer
//! (`src/host.rs`) implements them with proxy-wasm host calls; [`memory`] implements them in memory
//! for native tests, with injectable compare-and-swap losses. Time is passed in as `now_ms`
//! values, so no clock trait is needed.

pub mod memory;

use std::time::Duration;

/// The compare-and-swap token of a shared-data value (Envoy's `cas`).
pub type Cas = u32;

/// What a shared-data write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Stored.
    Done,
    /// Another writer changed the value since it was read: read again and retry.
    Lost,
    /// The host refused (over its size limit, or another error): not stored.
    Failed,
}

/// Envoy's shared data: one key-value store per `vm_id`, shared by every worker's VM.
pub trait SharedStore {
    /// The value and its CAS token; None when the key was never set.
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)>;
    /// Store `value`; with `cas`, only if the value was not changed since that token was read.
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Write;
}

/// Read-modify-write of one key with compare-and-swap, retried on a lost race up to `attempts`
/// times. `change` gets the current bytes (None: absent) and returns the new value, or None to
/// leave the key alone. Returns whether the write happened (false: nothing to change, refused, or
/// every attempt lost).
pub fn update<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    attempts: usize,
    mut change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
) -> bool {
    for _ in 0..attempts {
        let (current, cas) = match store.get(key) {
            Some((bytes, cas)) => (Some(bytes), Some(cas)),
            None => (None, None),
        };
        let Some(next) = change(current.as_deref()) else {
            return false;
        };
        match store.set(key, &next, cas) {
            Write::Done => return true,
            Write::Lost => continue,
            Write::Failed => return false,
        }
    }
    false
}

/// HTTP calls from a root context (Envoy's `dispatch_http_call`); the answer comes back later
/// with the token.
pub trait HttpDispatch {
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<u32, String>;
}

/// Envoy stats by name; the host defines each once and caches its id.
pub trait Metrics {
    fn add_counter(&self, name: &str, by: u64);
    fn set_gauge(&self, name: &str, value: u64);
}

/// How loud a [`Say::say`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// The proxy's log.
pub trait Say {
    fn say(&self, level: Level, message: &str);
}

/// Everything a root context's work needs (the collector): one bound instead of four.
pub trait Host: SharedStore + HttpDispatch + Metrics + Say {}

impl<T: SharedStore + HttpDispatch + Metrics + Say + ?Sized> Host for T {}
