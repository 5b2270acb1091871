//! Per-endpoint request counters shared by all of Envoy's workers (and the collector) through
//! shared data. One key per pool holds, for every endpoint, the requests in flight and a running
//! count of picks (u32 little-endian each: `[in_flight; n][picks; n]`), so a pick is one read and
//! one compare-and-swap write whatever the pool size. The collector stamps each scrape with the
//! pick count, so the scheduler knows how many requests a scrape cannot include yet.
//!
//! Once a pick claims a LoRA adapter (DEFAULT, PREFIX_CACHE), the same key also holds every
//! endpoint's recent adapter claims after the counts (`ENCODED_LEN` bytes each; see
//! `router_core::scheduling::claims`): written in the pick's own compare-and-swap, so a worker
//! never schedules without the adapters another worker has just sent.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use router_core::scheduling::{AdapterClaims, ENCODED_LEN};

/// Retries of a compare-and-swap that lost a race with another worker before giving up.
const CAS_ATTEMPTS: usize = 16;

pub struct Counts {
    pub in_flight: Vec<u32>,
    pub picks: Vec<u32>,
    /// Per endpoint; empty until the pool's first claim.
    pub claims: Vec<AdapterClaims>,
}

#[derive(Clone)]
pub struct PoolCounters {
    key: String,
    len: usize,
}

impl PoolCounters {
    /// `fingerprint` distinguishes endpoint lists, so a new configuration never reads old slots.
    pub fn new(pool: &str, len: usize, fingerprint: u64) -> PoolCounters {
        PoolCounters {
            key: format!("inference-router/counters/{pool}/{fingerprint:016x}"),
            len,
        }
    }

    fn load_cas(&self) -> (Counts, Option<u32>) {
        let (bytes, cas) = hostcalls::get_shared_data(&self.key).unwrap_or((None, None));
        let mut words = vec![0u32; self.len * 2];
        if let Some(b) = &bytes {
            for (w, chunk) in words.iter_mut().zip(b.chunks_exact(4)) {
                *w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
        let picks = words.split_off(self.len);
        let claims = match bytes.as_deref().and_then(|b| b.get(self.len * 8..)) {
            Some(tail) if tail.len() >= self.len * ENCODED_LEN => tail
                .chunks_exact(ENCODED_LEN)
                .take(self.len)
                .map(AdapterClaims::decode)
                .collect(),
            _ => Vec::new(),
        };
        (
            Counts {
                in_flight: words,
                picks,
                claims,
            },
            cas,
        )
    }

    pub fn load(&self) -> Counts {
        self.load_cas().0
    }

    fn store(&self, counts: &Counts, cas: Option<u32>) -> Result<(), Status> {
        let mut bytes = Vec::with_capacity(self.len * 8 + counts.claims.len() * ENCODED_LEN);
        for w in counts.in_flight.iter().chain(&counts.picks) {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        for c in &counts.claims {
            c.encode(&mut bytes);
        }
        hostcalls::set_shared_data(&self.key, Some(&bytes), cas)
    }

    /// Choose an endpoint from the current counts with `pick` and count the request on it,
    /// atomically across workers (a lost race re-reads and re-picks). `pick` may refuse with `E`.
    pub fn pick_and_count<T, E>(
        &self,
        mut pick: impl FnMut(&Counts) -> Result<(usize, T), E>,
    ) -> Result<(usize, T), E> {
        self.pick_count_and_claim(|c| pick(c).map(|(i, extra)| (i, None, extra)))
    }

    /// `pick_and_count` where the pick may also claim an adapter (`adapter_hash`) on the endpoint,
    /// recorded with the pick number it takes, in the same write.
    pub fn pick_count_and_claim<T, E>(
        &self,
        mut pick: impl FnMut(&Counts) -> Result<(usize, Option<u32>, T), E>,
    ) -> Result<(usize, T), E> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut counts, cas) = self.load_cas();
            let (i, claim, extra) = pick(&counts)?;
            if let (Some(f), Some(p)) = (counts.in_flight.get_mut(i), counts.picks.get_mut(i)) {
                if let Some(adapter) = claim {
                    if counts.claims.len() != self.len {
                        counts.claims = vec![AdapterClaims::default(); self.len];
                    }
                    if let Some(c) = counts.claims.get_mut(i) {
                        c.record(adapter, *p);
                    }
                }
                *f = f.saturating_add(1);
                *p = p.wrapping_add(1);
            }
            match self.store(&counts, cas) {
                Ok(()) => return Ok((i, extra)),
                Err(Status::CasMismatch) => continue,
                Err(e) => {
                    log::warn!("request counters not stored: {e:?}");
                    return Ok((i, extra));
                }
            }
        }
        // Heavy contention: route anyway on the last read, uncounted.
        pick(&self.load()).map(|(i, _, extra)| (i, extra))
    }

    /// The request on endpoint `i` has ended.
    pub fn release(&self, i: usize) {
        for _ in 0..CAS_ATTEMPTS {
            let (mut counts, cas) = self.load_cas();
            if let Some(c) = counts.in_flight.get_mut(i) {
                *c = c.saturating_sub(1);
            }
            match self.store(&counts, cas) {
                Err(Status::CasMismatch) => continue,
                _ => return,
            }
        }
        log::warn!("in-flight release lost to contention");
    }
}

/// The fingerprint of an endpoint list, for `PoolCounters::new`.
pub fn fingerprint(endpoints: &[String]) -> u64 {
    router_core::rollout::stable_hash(endpoints.join(",").as_bytes())
}
