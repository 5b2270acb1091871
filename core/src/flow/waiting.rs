//! What each worker holds, shared between the workers of one Envoy: per pool a small table of
//! (worker, highest waiting priority, when said). Each worker keeps its own queue; before it
//! dispatches, it looks here and leaves a band lower than another worker's top for that worker,
//! so a Critical request on one worker is not passed by Sheddable ones on another. Entries older
//! than `MAX_AGE_MS` are ignored (a worker that stopped ticking: its VM was replaced).
//!
//! Format `IRW1`, then entries of 20 bytes: worker id u64, priority i32, said at (ms) u64, all
//! little-endian. At most `MAX_WORKERS` entries; the oldest goes when a new worker would overflow.

const MAGIC: &[u8; 4] = b"IRW1";
const ENTRY: usize = 20;
pub const MAX_WORKERS: usize = 64;
/// A worker says its top at least this often while it holds requests (its tick is 10 ms).
pub const MAX_AGE_MS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerTop {
    pub worker: u64,
    pub priority: i32,
    pub said_ms: u64,
}

/// Decode a table; a value of another format reads as empty (it is rewritten on the next change).
pub fn decode(bytes: &[u8]) -> Vec<WorkerTop> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Vec::new();
    };
    rest.chunks_exact(ENTRY)
        .take(MAX_WORKERS)
        .filter_map(|c| {
            Some(WorkerTop {
                worker: u64::from_le_bytes(c.get(0..8)?.try_into().ok()?),
                priority: i32::from_le_bytes(c.get(8..12)?.try_into().ok()?),
                said_ms: u64::from_le_bytes(c.get(12..20)?.try_into().ok()?),
            })
        })
        .collect()
}

pub fn encode(tops: &[WorkerTop]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + tops.len() * ENTRY);
    out.extend_from_slice(MAGIC);
    for t in tops.iter().take(MAX_WORKERS) {
        out.extend_from_slice(&t.worker.to_le_bytes());
        out.extend_from_slice(&t.priority.to_le_bytes());
        out.extend_from_slice(&t.said_ms.to_le_bytes());
    }
    out
}

/// `table` with `worker`'s top set (`None`: it holds nothing), stale entries dropped.
pub fn with_top(table: &[u8], worker: u64, top: Option<i32>, now_ms: u64) -> Vec<u8> {
    let mut tops: Vec<WorkerTop> = decode(table)
        .into_iter()
        .filter(|t| t.worker != worker && now_ms.saturating_sub(t.said_ms) <= MAX_AGE_MS)
        .collect();
    if let Some(priority) = top {
        if tops.len() >= MAX_WORKERS {
            tops.sort_by_key(|t| std::cmp::Reverse(t.said_ms));
            tops.truncate(MAX_WORKERS - 1);
        }
        tops.push(WorkerTop {
            worker,
            priority,
            said_ms: now_ms,
        });
    }
    encode(&tops)
}

/// What the other workers hold now: their tops, fresh entries only.
pub fn others(table: &[u8], worker: u64, now_ms: u64) -> Vec<i32> {
    decode(table)
        .into_iter()
        .filter(|t| t.worker != worker && now_ms.saturating_sub(t.said_ms) <= MAX_AGE_MS)
        .map(|t| t.priority)
        .collect()
}

/// The highest priority another worker holds now.
pub fn others_top(table: &[u8], worker: u64, now_ms: u64) -> Option<i32> {
    others(table, worker, now_ms).into_iter().max()
}
