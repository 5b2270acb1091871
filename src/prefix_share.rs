//! Sharing the PREFIX_CACHE index across Envoy's workers. Each worker learns from its own picks;
//! on a timer it appends what it learned to a per-pool journal in shared data and imports what
//! the other workers appended, so a prefix sent to a pod by one worker draws the others there too.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use router_core::pool::journal;
use router_core::scheduling::PrefixIndex;
use std::cell::Cell;
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
    buf: std::cell::RefCell<Vec<u8>>,
}

impl PrefixShare {
    pub fn new(pool: &str, worker: u64) -> PrefixShare {
        PrefixShare {
            key: format!("inference-router/prefix-journal/{pool}"),
            worker,
            next_seq: Cell::new(0),
            last_cas: Cell::new(None),
            buf: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Publish this worker's new records, then learn the others'.
    pub fn sync(&self, index: &mut PrefixIndex) {
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        if index.export(&mut buf) > 0 {
            self.append(&buf);
        }
        let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&self.key) else {
            return;
        };
        if cas.is_some() && cas == self.last_cas.get() {
            return;
        }
        self.last_cas.set(cas);
        let (entries, next) = journal::unseen(&bytes, self.worker, self.next_seq.get());
        for entry in entries {
            if let Err(e) = index.import(entry) {
                log::debug!("prefix journal entry skipped: {e:?}");
            }
        }
        self.next_seq.set(next);
    }

    fn append(&self, payload: &[u8]) {
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = hostcalls::get_shared_data(&self.key).unwrap_or((None, None));
            let updated = journal::append(
                bytes.as_deref().unwrap_or_default(),
                self.worker,
                payload,
                JOURNAL_CAP,
            );
            match hostcalls::set_shared_data(&self.key, Some(&updated), cas) {
                Err(Status::CasMismatch) => continue,
                _ => return,
            }
        }
        log::debug!("prefix journal append lost to contention");
    }
}
