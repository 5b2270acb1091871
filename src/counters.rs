//! In-flight request counts per endpoint, shared by all of Envoy's workers through shared data.
//! One key per pool holds every endpoint's count (u32 little-endian each), so a pick is one read
//! and one compare-and-swap write, whatever the pool size.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Retries of a compare-and-swap that lost a race with another worker before giving up.
const CAS_ATTEMPTS: usize = 16;

pub struct InFlight {
    key: String,
    len: usize,
}

impl InFlight {
    /// `fingerprint` distinguishes endpoint lists, so a new configuration never reads old slots.
    pub fn new(pool: &str, len: usize, fingerprint: u64) -> InFlight {
        InFlight {
            key: format!("inference-router/in-flight/{pool}/{fingerprint:016x}"),
            len,
        }
    }

    fn load(&self) -> (Vec<u32>, Option<u32>) {
        let (bytes, cas) = hostcalls::get_shared_data(&self.key).unwrap_or((None, None));
        let mut counts = vec![0u32; self.len];
        if let Some(b) = bytes {
            for (slot, chunk) in counts.iter_mut().zip(b.chunks_exact(4)) {
                *slot = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
        (counts, cas)
    }

    fn store(&self, counts: &[u32], cas: Option<u32>) -> Result<(), Status> {
        let mut bytes = Vec::with_capacity(counts.len() * 4);
        for c in counts {
            bytes.extend_from_slice(&c.to_le_bytes());
        }
        // Without a prior value, cas 0 means "create only if absent" is not offered; Envoy treats
        // a missing cas as unconditional, which is right for the first write.
        hostcalls::set_shared_data(&self.key, Some(&bytes), cas)
    }

    /// Choose an endpoint from the current counts with `pick` and count one more request on it,
    /// atomically across workers (a lost race re-reads and re-picks).
    pub fn pick_and_increment(&self, mut pick: impl FnMut(&[u32]) -> Option<usize>) -> Option<usize> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut counts, cas) = self.load();
            let i = pick(&counts)?;
            if let Some(c) = counts.get_mut(i) {
                *c = c.saturating_add(1);
            }
            match self.store(&counts, cas) {
                Ok(()) => return Some(i),
                Err(Status::CasMismatch) => continue,
                Err(e) => {
                    log::warn!("in-flight count not stored: {e:?}");
                    return Some(i);
                }
            }
        }
        // Heavy contention: route anyway on the last read, uncounted.
        let (counts, _) = self.load();
        pick(&counts)
    }

    /// The request on endpoint `i` has ended.
    pub fn decrement(&self, i: usize) {
        for _ in 0..CAS_ATTEMPTS {
            let (mut counts, cas) = self.load();
            if let Some(c) = counts.get_mut(i) {
                *c = c.saturating_sub(1);
            }
            match self.store(&counts, cas) {
                Err(Status::CasMismatch) => continue,
                _ => return,
            }
        }
        log::warn!("in-flight decrement lost to contention");
    }
}
