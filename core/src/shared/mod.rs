//! The shared-data protocol: every key the plugin keeps in Envoy's shared data and every value's
//! encoding, in one place. Shared data is one store per `vm_id`, shared by all of Envoy's workers
//! (and the singleton collector): the collector publishes what it scraped, the filters count their
//! picks, the embedded collectors elect one scraper, the workers exchange prefix hints.
//!
//! Keys are namespaced by plugin instance (`Config::instance`): two inference-router plugins in one
//! Envoy with the same `vm_id` (every Istio WasmPlugin has none) never share a lease or counters.
//! Every value starts with a four-byte magic naming its format and version, so a module of another
//! version reading it during a rollout refuses it instead of misreading it.
//!
//! | key (`inference-router/<instance>/…`) | value | written by |
//! | --- | --- | --- |
//! | `lease` | [`lease::Lease`] (`IRL1`) | embedded collectors, compare-and-swap |
//! | `collector` | [`CollectorInfo`] (`IRI1`) | the collector holding the lease, at start |
//! | `snapshot/<pool>` | [`snapshot`] (`IRS3`) | the collector |
//! | `version/<pool>` | [`encode_version`] (`IRV1`), read per request | the collector, after the snapshot |
//! | `counters/<pool>` | [`counters::CounterTable`] (`IRC1`) | filters, compare-and-swap per pick |
//! | `journal/<pool>` | [`journal`] (`IRJ1`) | filters (PREFIX_CACHE), compare-and-swap |

pub mod counters;
pub mod journal;
pub mod lease;
pub mod snapshot;

pub use snapshot::{decode, encode, peek_version, Snapshot, SnapshotError};

/// Key names of one plugin instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(instance: &str) -> Keys {
        Keys {
            base: format!("inference-router/{instance}/"),
        }
    }

    fn key(&self, kind: &str) -> String {
        format!("{}{kind}", self.base)
    }

    fn pool_key(&self, kind: &str, pool: &str) -> String {
        format!("{}{kind}/{pool}", self.base)
    }

    pub fn lease(&self) -> String {
        self.key("lease")
    }

    pub fn collector(&self) -> String {
        self.key("collector")
    }

    pub fn snapshot(&self, pool: &str) -> String {
        self.pool_key("snapshot", pool)
    }

    pub fn version(&self, pool: &str) -> String {
        self.pool_key("version", pool)
    }

    pub fn counters(&self, pool: &str) -> String {
        self.pool_key("counters", pool)
    }

    pub fn journal(&self, pool: &str) -> String {
        self.pool_key("journal", pool)
    }

    /// Flow control: the highest priority each worker holds for the pool (`flow::waiting`).
    pub fn waiting(&self, pool: &str) -> String {
        self.pool_key("waiting", pool)
    }
}

const VERSION_MAGIC: &[u8; 4] = b"IRV1";

/// The small per-pool value a filter reads on each request to learn whether a new snapshot is out.
pub fn encode_version(version: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(VERSION_MAGIC);
    b[4..].copy_from_slice(&version.to_le_bytes());
    b
}

pub fn decode_version(bytes: &[u8]) -> Option<u64> {
    if bytes.get(..4)? != VERSION_MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?))
}

const INFO_MAGIC: &[u8; 4] = b"IRI1";

/// What the collector says of itself, so a filter can tell a deployment mistake from a quiet pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorInfo {
    /// `Config::pools_fingerprint` of the collector's document.
    pub fingerprint: u64,
    /// Runs as the singleton service (else embedded in the filters).
    pub service: bool,
    /// When it started publishing (ms since the epoch).
    pub since_ms: u64,
}

impl CollectorInfo {
    pub fn encode(&self) -> [u8; 21] {
        let mut b = [0u8; 21];
        b[..4].copy_from_slice(INFO_MAGIC);
        b[4..12].copy_from_slice(&self.fingerprint.to_le_bytes());
        b[12] = u8::from(self.service);
        b[13..21].copy_from_slice(&self.since_ms.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Option<CollectorInfo> {
        if bytes.get(..4)? != INFO_MAGIC || bytes.len() != 21 {
            return None;
        }
        Some(CollectorInfo {
            fingerprint: u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?),
            service: *bytes.get(12)? == 1,
            since_ms: u64::from_le_bytes(bytes.get(13..21)?.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn keys_are_namespaced_by_instance() {
        let a = Keys::new("default.inference-router");
        let b = Keys::new("other");
        assert_eq!(
            a.counters("pool-a"),
            "inference-router/default.inference-router/counters/pool-a"
        );
        assert_ne!(a.lease(), b.lease());
        assert_ne!(a.snapshot("p"), b.snapshot("p"));
    }

    #[test]
    fn small_values_round_trip_and_refuse_other_formats() {
        assert_eq!(decode_version(&encode_version(7)), Some(7));
        assert_eq!(
            decode_version(&7u64.to_le_bytes()),
            None,
            "the old bare u64"
        );
        let info = CollectorInfo {
            fingerprint: 0xfeed,
            service: true,
            since_ms: 99,
        };
        assert_eq!(CollectorInfo::decode(&info.encode()), Some(info));
        assert_eq!(CollectorInfo::decode(&encode_version(1)), None);
        assert_eq!(CollectorInfo::decode(&info.encode()[..20]), None);
    }
}
