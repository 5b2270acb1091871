//! Adapter claims: the LoRA adapters this gateway sent to an endpoint since its last scrape. The
//! scraped `running`/`waiting` adapter lists cannot include them yet, so without them a burst
//! (many requests between two scrapes) sees every endpoint as it was and spreads every adapter
//! over every endpoint, each a third adapter somewhere that then waits for a whole batch to drain.
//! Counting them is to the LoRA-affinity scorer what `picks_since_scrape` is to the queue scorer.
//!
//! A claim is (adapter name hash, the endpoint's pick number when it was picked). It is live while
//! that pick number is at or after the endpoint's `picks_at_scrape` stamp: the scrape that will
//! show the adapter has not been published yet. Fixed size, no allocation; the host keeps them
//! beside its shared pick counters (`encode`/`decode`), so every worker sees every worker's.

use crate::rollout::stable_hash;

/// One adapter sent to an endpoint: its name hash and the pick number it went out with (the
/// endpoint's pick counter before that pick counted it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claim {
    /// `adapter_hash` of the name; 0 marks an empty slot.
    pub adapter: u32,
    pub pick: u32,
}

impl Claim {
    /// Not yet included in a scrape stamped `picks_at_scrape` (wrapping pick counters).
    pub fn live(&self, picks_at_scrape: u32) -> bool {
        self.pick.wrapping_sub(picks_at_scrape) < 1 << 31
    }
}

/// Distinct adapters claimed per endpoint, at most this many: more than `max_lora` (a handful)
/// distinct adapters between two scrapes changes no score, the endpoint is full either way. Few,
/// because every pick reads and writes them for the whole pool (8 bytes each).
pub const CLAIMS_PER_ENDPOINT: usize = 4;

/// Bytes of one endpoint's claims in `encode`'s form.
pub const ENCODED_LEN: usize = CLAIMS_PER_ENDPOINT * 8;

/// One endpoint's recent claims, one entry per adapter (its latest pick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdapterClaims {
    entries: [Claim; CLAIMS_PER_ENDPOINT],
    len: usize,
}

impl AdapterClaims {
    /// Adapter `adapter` (an `adapter_hash`) was sent here with pick number `pick`. A known
    /// adapter's entry moves to the new pick; a new one replaces the oldest entry when full.
    pub fn record(&mut self, adapter: u32, pick: u32) {
        if adapter == 0 {
            return;
        }
        let len = self.len.min(CLAIMS_PER_ENDPOINT);
        if let Some(c) = self.entries[..len]
            .iter_mut()
            .find(|c| c.adapter == adapter)
        {
            c.pick = pick;
            return;
        }
        if len < CLAIMS_PER_ENDPOINT {
            self.entries[len] = Claim { adapter, pick };
            self.len = len + 1;
            return;
        }
        // Oldest by pick number relative to the new one (wrapping).
        let oldest = self
            .entries
            .iter_mut()
            .max_by_key(|c| pick.wrapping_sub(c.pick));
        if let Some(c) = oldest {
            *c = Claim { adapter, pick };
        }
    }

    pub fn as_slice(&self) -> &[Claim] {
        &self.entries[..self.len.min(CLAIMS_PER_ENDPOINT)]
    }

    /// `ENCODED_LEN` bytes: each slot's adapter and pick, u32 little-endian, empty slots zero.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for c in &self.entries {
            out.extend_from_slice(&c.adapter.to_le_bytes());
            out.extend_from_slice(&c.pick.to_le_bytes());
        }
    }

    /// `encode`'s bytes back (a short or garbled slice yields fewer claims, never an error).
    pub fn decode(bytes: &[u8]) -> AdapterClaims {
        let mut a = AdapterClaims::default();
        for slot in bytes.chunks_exact(8).take(CLAIMS_PER_ENDPOINT) {
            let word = |k: usize| {
                slot.get(k..k + 4)
                    .and_then(|w| w.try_into().ok())
                    .map_or(0, u32::from_le_bytes)
            };
            a.record(word(0), word(4));
        }
        a
    }
}

/// The hash claims identify an adapter by: 32 bits of the name's stable hash, never 0.
pub fn adapter_hash(name: &str) -> u32 {
    ((stable_hash(name.as_bytes()) >> 32) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn live_until_a_scrape_stamped_after_it() {
        let c = Claim {
            adapter: 1,
            pick: 10,
        };
        assert!(c.live(10) && c.live(3));
        assert!(!c.live(11));
        let wrapped = Claim {
            adapter: 1,
            pick: 2,
        };
        assert!(
            wrapped.live(u32::MAX - 1),
            "the counter wrapped after the scrape"
        );
    }

    #[test]
    fn one_entry_per_adapter_oldest_replaced() {
        let mut a = AdapterClaims::default();
        a.record(7, 1);
        a.record(7, 5);
        assert_eq!(
            a.as_slice(),
            &[Claim {
                adapter: 7,
                pick: 5
            }]
        );
        for i in 0..CLAIMS_PER_ENDPOINT as u32 {
            a.record(100 + i, 10 + i);
        }
        assert_eq!(a.as_slice().len(), CLAIMS_PER_ENDPOINT);
        assert!(
            a.as_slice().iter().all(|c| c.adapter != 7),
            "adapter 7 (pick 5) was the oldest"
        );
        assert!(a
            .as_slice()
            .iter()
            .any(|c| c.adapter == 100 + CLAIMS_PER_ENDPOINT as u32 - 1));
    }

    #[test]
    fn encoding_round_trips() {
        let mut a = AdapterClaims::default();
        a.record(adapter_hash("x"), 3);
        a.record(adapter_hash("y"), u32::MAX);
        let mut bytes = Vec::new();
        a.encode(&mut bytes);
        assert_eq!(bytes.len(), ENCODED_LEN);
        assert_eq!(AdapterClaims::decode(&bytes).as_slice(), a.as_slice());
        assert!(AdapterClaims::decode(&bytes[..5]).as_slice().is_empty());
        assert!(AdapterClaims::decode(&[]).as_slice().is_empty());
        a.record(0, 9);
        assert_eq!(a.as_slice().len(), 2, "0 is no adapter");
    }
}
