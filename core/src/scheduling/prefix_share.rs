//! Sharing the PREFIX_CACHE index across Envoy's workers. Each worker learns from its own picks;
//! on a timer it appends what it learned to a per-pool journal in shared data
//! (`crate::shared::journal`) and imports what the other workers appended, so a prefix sent to a
//! pod by one worker draws the others there too.

use super::PrefixIndex;
use crate::host::{update, SharedStore};
use crate::shared::journal;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// How often workers exchange what they learned.
pub const SHARE_PERIOD: Duration = Duration::from_millis(100);
/// Journal size per pool: about 16,000 block hashes, a few seconds of learning at high rates.
const JOURNAL_CAP: usize = 128 * 1024;
const CAS_ATTEMPTS: usize = 8;

pub struct PrefixShare {
    key: String,
    worker: u64,
    next_seq: Cell<u64>,
    last_cas: Cell<Option<u32>>,
    buf: RefCell<Vec<u8>>,
}

impl PrefixShare {
    pub fn new(key: String, worker: u64) -> PrefixShare {
        PrefixShare {
            key,
            worker,
            next_seq: Cell::new(0),
            last_cas: Cell::new(None),
            buf: RefCell::new(Vec::new()),
        }
    }

    /// Publish this worker's new records, then learn the others'. Returns the entries skipped as
    /// unreadable (another module version's records).
    pub fn sync(&self, store: &(impl SharedStore + ?Sized), index: &mut PrefixIndex) -> usize {
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        if index.export(&mut buf) > 0 {
            let worker = self.worker;
            update(store, &self.key, CAS_ATTEMPTS, |current| {
                Some(journal::append(
                    current.unwrap_or_default(),
                    worker,
                    &buf,
                    JOURNAL_CAP,
                ))
            });
        }
        let Some((bytes, cas)) = store.get(&self.key) else {
            return 0;
        };
        if Some(cas) == self.last_cas.get() {
            return 0;
        }
        self.last_cas.set(Some(cas));
        let (entries, next) = journal::unseen(&bytes, self.worker, self.next_seq.get());
        let skipped = entries
            .into_iter()
            .filter(|entry| index.import(entry).is_err())
            .count();
        self.next_seq.set(next);
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::MemStore;
    use crate::scheduling::{endpoint_id, PrefixSettings};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_prefix_one_worker_learned_reaches_the_other_through_lost_races() {
        let store = MemStore::new();
        let settings = PrefixSettings::default();
        let ids = [endpoint_id("10.0.0.1:80"), endpoint_id("10.0.0.2:80")];
        let mut a = PrefixIndex::new(&settings, &ids);
        let mut b = PrefixIndex::new(&settings, &ids);
        let (sa, sb) = (
            PrefixShare::new("j".into(), 1),
            PrefixShare::new("j".into(), 2),
        );
        let mut hashes = Vec::new();
        settings.hash_prompt("m", &[b'x'; 4096], &mut hashes);
        a.record(1, &hashes);
        store.lose_next(2);
        sa.sync(&store, &mut a);
        assert_eq!(sb.sync(&store, &mut b), 0);
        assert!(b.matched_blocks(1, &hashes) > 0, "b learned a's prefix");
        assert_eq!(b.matched_blocks(0, &hashes), 0);
    }
}
