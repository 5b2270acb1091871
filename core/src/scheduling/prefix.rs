//! PREFIX_CACHE: prompt block hashes and a per-endpoint index of the blocks this gateway sent
//! where, so a request whose prompt starts like an earlier one goes where that prefix is likely
//! still in the KV cache.
//!
//! **Hashing.** The prompt (the raw bytes of the body's `prompt` or `messages` value, opaque) is cut
//! into `block_size`-byte blocks; a final partial block is not hashed (engines cache whole blocks
//! only). Block i's hash is seeded with block i−1's, so it stands for the whole prefix up to it; block
//! 0's seed is the target model's hash, so two models never share entries. At most `max_blocks`.
//! The hash is fast and well mixed, not collision-resistant: a crafted collision can only win a
//! routing preference.
//!
//! **Index.** Per endpoint, a set-associative table of 32-bit fingerprints: `capacity / 8` buckets
//! of 8 ways, each bucket kept in recency order (most recent first). Inserting into a full bucket
//! evicts its least recently used entry, so memory is fixed at `4 × capacity` bytes per endpoint,
//! allocated on its first record, and every operation is O(1) worst case. LRU is exact within a
//! bucket, approximate across the table. The bucket comes from a hash's low 32 bits and the
//! fingerprint from its high 32, so a false match needs both to collide (≈ 2⁻³² per probe). The
//! whole index of a pool stays within [`PREFIX_BUDGET_BLOCKS`]: a pool that grows past it gets
//! smaller tables per endpoint (learning starts over).
//!
//! **Matching.** The score is the longest run of leading blocks all present. A prompt's blocks are
//! recorded together, so presence is prefix-closed except where a bucket evicted one block early;
//! the run is therefore found by galloping then bisecting (⌈2·log₂ n⌉ probes per endpoint, not n),
//! which keeps a long system prompt shared by 512 endpoints cheap.
//!
//! **Sharing across workers.** Each Envoy worker (one VM each) keeps its own index and learns from
//! its own picks. `record` also queues the record for export (bounded to `OUTBOX_LIMIT` bytes,
//! oldest dropped first). Every 100 ms each worker `export`s what it learned and appends it to the
//! pool's bounded journal in shared data, then `import`s the entries the other workers appended
//! since it last read (`super::prefix_share`, `crate::shared::journal`).
//!
//! Imports never re-export. Learning is idempotent (a present entry is only refreshed), so reading
//! an old or one's own blob does no harm, and a missed blob loses hints only. Records name endpoints
//! by `endpoint_id(address)`, not position, so workers on different endpoint lists still agree;
//! unknown ids are skipped. Blob: `b"P" 1`, then per record: id u64 LE, n u16 LE, n × hash u64 LE.

use super::PrefixSettings;
use crate::rollout::mix64;
use std::fmt;

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const K0: u64 = 0x1319_8a2e_0370_7344;
const K1: u64 = 0xa409_3822_299f_31d0;
const WAYS: usize = 8;
const MAGIC: [u8; 2] = [b'P', 1];
/// Exported bytes kept between two exports; older records are dropped first.
pub const OUTBOX_LIMIT: usize = 64 * 1024;
/// Most fingerprints one worker's index of one pool holds in all (4 bytes each: 64 MiB). A
/// configuration above it is refused; a discovered pool that grows past it gets a smaller table
/// per endpoint.
pub const PREFIX_BUDGET_BLOCKS: usize = 1 << 24;
const RECORD_HEADER: usize = 10;

/// 64×64 → 128-bit multiply, folded: every input bit reaches the middle output bits.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = b.len().min(8);
    w[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(w)
}

fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(16);
    for c in &mut chunks {
        let (a, b) = c.split_at(8);
        h = fold(le64(a) ^ K0 ^ h, le64(b) ^ K1);
    }
    let r = chunks.remainder();
    if !r.is_empty() {
        let (a, b) = r.split_at(r.len().min(8));
        h = fold(le64(a) ^ K0 ^ h, le64(b) ^ K1 ^ ((r.len() as u64) << 58));
    }
    mix64(h ^ bytes.len() as u64)
}

/// Fill `out` (cleared first) with the chained block hashes of `prompt` for `model`: one per whole
/// `block_size`-byte block, at most `max_blocks`. Linear in the hashed bytes; allocates only if
/// `out` lacks capacity.
pub fn prefix_hashes(
    model: &str,
    prompt: &[u8],
    block_size: usize,
    max_blocks: usize,
    out: &mut Vec<u64>,
) {
    out.clear();
    if block_size == 0 {
        return;
    }
    let n = (prompt.len() / block_size).min(max_blocks);
    out.reserve(n);
    let mut h = hash_bytes(SEED, model.as_bytes());
    for block in prompt.chunks_exact(block_size).take(n) {
        h = hash_bytes(h, block);
        out.push(h);
    }
}

impl PrefixSettings {
    /// `prefix_hashes` with these settings.
    pub fn hash_prompt(&self, model: &str, prompt: &[u8], out: &mut Vec<u64>) {
        prefix_hashes(model, prompt, self.block_size, self.max_blocks, out);
    }
}

/// A stable identity for an endpoint address (`ip:port`), the same in every worker.
pub fn endpoint_id(address: &str) -> u64 {
    hash_bytes(SEED ^ K1, address.as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    /// Not a blob of this format (or version).
    BadHeader,
    /// A record runs past the end; records before byte `at` were imported.
    Truncated { at: usize },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::BadHeader => write!(f, "not a prefix-index blob"),
            ImportError::Truncated { at } => write!(f, "prefix-index blob truncated at byte {at}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Table {
    id: u64,
    /// `buckets × ways` fingerprints, 0 = empty; empty until the first record.
    slots: Vec<u32>,
    len: usize,
}

/// Per-endpoint prefix index of one pool, in one worker. Positions are the pool's endpoint indices.
#[derive(Debug, Clone)]
pub struct PrefixIndex {
    ways: usize,
    buckets: usize,
    /// The configured capacity per endpoint, before the budget's cap.
    configured: usize,
    max_blocks: usize,
    tables: Vec<Table>,
    /// (endpoint id, position), sorted by id, for imports.
    by_id: Vec<(u64, usize)>,
    outbox: Vec<u8>,
}

impl PrefixIndex {
    /// An empty index for endpoints with these ids (see `endpoint_id`), in pool order.
    pub fn new(settings: &PrefixSettings, endpoint_ids: &[u64]) -> PrefixIndex {
        let capacity = settings.capacity.max(1);
        let ways = WAYS.min(capacity);
        let mut index = PrefixIndex {
            ways,
            buckets: capacity / ways,
            configured: capacity,
            max_blocks: settings.max_blocks,
            tables: Vec::new(),
            by_id: Vec::new(),
            outbox: Vec::new(),
        };
        index.sync_endpoints(endpoint_ids);
        index
    }

    /// Follow a change of the pool's endpoint list: endpoints still present keep what was learned
    /// (moved to their new positions), departed ones are dropped, new ones start empty.
    pub fn sync_endpoints(&mut self, endpoint_ids: &[u64]) {
        let mut old = std::mem::take(&mut self.tables);
        let old_by_id = std::mem::take(&mut self.by_id);
        self.tables = endpoint_ids
            .iter()
            .map(|&id| {
                let kept = old_by_id
                    .binary_search_by_key(&id, |&(i, _)| i)
                    .ok()
                    .and_then(|k| old_by_id.get(k))
                    .and_then(|&(_, pos)| old.get_mut(pos))
                    .filter(|t| t.id == id)
                    .map(std::mem::take);
                kept.unwrap_or(Table {
                    id,
                    ..Default::default()
                })
            })
            .collect();
        self.by_id = endpoint_ids
            .iter()
            .enumerate()
            .map(|(pos, &id)| (id, pos))
            .collect();
        // Stable sort: with a duplicated id, imports go to its first position.
        self.by_id.sort_by_key(|&(id, _)| id);
        // Within the budget: more endpoints, smaller tables (what was learned starts over).
        let per_endpoint = self
            .configured
            .min(PREFIX_BUDGET_BLOCKS / endpoint_ids.len().max(1))
            .max(self.ways);
        let buckets = (per_endpoint / self.ways).max(1);
        if buckets != self.buckets {
            self.buckets = buckets;
            for t in &mut self.tables {
                t.slots = Vec::new();
                t.len = 0;
            }
        }
    }

    pub fn endpoints(&self) -> usize {
        self.tables.len()
    }

    /// Block hashes held per endpoint at most.
    pub fn capacity_per_endpoint(&self) -> usize {
        self.ways * self.buckets
    }

    /// Block hashes held for `endpoint`.
    pub fn len_of(&self, endpoint: usize) -> usize {
        self.tables.get(endpoint).map_or(0, |t| t.len)
    }

    /// Block hashes held in all.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held: tables, id lookup and export queue.
    pub fn memory_bytes(&self) -> usize {
        let slots: usize = self.tables.iter().map(|t| t.slots.capacity() * 4).sum();
        slots
            + self.tables.capacity() * std::mem::size_of::<Table>()
            + self.by_id.capacity() * std::mem::size_of::<(u64, usize)>()
            + self.outbox.capacity()
    }

    /// Forget everything learned (endpoints stay).
    pub fn clear(&mut self) {
        for t in &mut self.tables {
            *t = Table {
                id: t.id,
                ..Default::default()
            };
        }
        self.outbox.clear();
    }

    fn locate(&self, h: u64) -> (usize, u32) {
        let bucket = ((h & 0xffff_ffff) * self.buckets as u64) >> 32;
        let fp = ((h >> 32) as u32).max(1);
        (bucket as usize * self.ways, fp)
    }

    fn contains(&self, t: &Table, h: u64) -> bool {
        let (start, fp) = self.locate(h);
        t.slots
            .get(start..start + self.ways)
            .is_some_and(|b| b.contains(&fp))
    }

    /// Longest run of leading `hashes` (at most `max_blocks`) that `endpoint` holds.
    pub fn matched_blocks(&self, endpoint: usize, hashes: &[u64]) -> usize {
        self.matched_blocks_near(endpoint, hashes, 0)
    }

    /// `matched_blocks`, starting from a guess (e.g. the previous endpoint's answer): a right
    /// guess costs two probes, so a system prompt every endpoint holds is cheap to score.
    pub fn matched_blocks_near(&self, endpoint: usize, hashes: &[u64], guess: usize) -> usize {
        let Some(t) = self.tables.get(endpoint) else {
            return 0;
        };
        let n = hashes.len().min(self.max_blocks);
        if t.len == 0 || n == 0 {
            return 0;
        }
        // has(c): block c−1 is held, i.e. (prefix-closed) the first c blocks are.
        let has = |c: usize| hashes.get(c - 1).is_some_and(|&h| self.contains(t, h));
        // Invariant: the first lo blocks are held; block hi−1 is not (hi = n + 1: none seen missing).
        let (mut lo, mut hi) = (0, n + 1);
        let guess = guess.min(n);
        if guess > 0 {
            if has(guess) {
                lo = guess;
            } else {
                hi = guess;
            }
        }
        // Gallop up from lo, then bisect.
        let mut step = 1;
        loop {
            let cap = (hi - 1).min(n);
            if lo >= cap {
                break;
            }
            let c = (lo + step).min(cap);
            if has(c) {
                lo = c;
                step *= 2;
            } else {
                hi = c;
                break;
            }
        }
        while hi - lo > 1 && hi <= n {
            let mid = lo + (hi - lo) / 2;
            if has(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn learn(&mut self, endpoint: usize, hashes: &[u64]) {
        let (ways, buckets) = (self.ways, self.buckets);
        let n = hashes.len().min(self.max_blocks);
        for &h in hashes.iter().take(n) {
            let (start, fp) = self.locate(h);
            let Some(t) = self.tables.get_mut(endpoint) else {
                return;
            };
            if t.slots.is_empty() {
                t.slots = vec![0; ways * buckets];
            }
            let Some(b) = t.slots.get_mut(start..start + ways) else {
                return;
            };
            match b.iter().position(|&x| x == fp) {
                Some(p) => b[..=p].rotate_right(1),
                None => {
                    if b[ways - 1] == 0 {
                        t.len += 1;
                    }
                    b.rotate_right(1);
                    b[0] = fp;
                }
            }
        }
    }

    /// Learn that `endpoint` was sent a prompt with these block hashes (call after a pick), and
    /// queue the record for `export`. Idempotent apart from recency; O(blocks).
    pub fn record(&mut self, endpoint: usize, hashes: &[u64]) {
        let Some(id) = self.tables.get(endpoint).map(|t| t.id) else {
            return;
        };
        let n = hashes.len().min(self.max_blocks).min(usize::from(u16::MAX));
        if n == 0 {
            return;
        }
        self.learn(endpoint, hashes);
        let size = RECORD_HEADER + 8 * n;
        if self.outbox.len() + size > OUTBOX_LIMIT {
            self.drop_oldest(OUTBOX_LIMIT.saturating_sub(size) / 2);
        }
        if self.outbox.len() + size <= OUTBOX_LIMIT {
            self.outbox.extend_from_slice(&id.to_le_bytes());
            self.outbox.extend_from_slice(&(n as u16).to_le_bytes());
            for h in hashes.iter().take(n) {
                self.outbox.extend_from_slice(&h.to_le_bytes());
            }
        }
    }

    /// Drop whole records from the front of the outbox until at most `keep` bytes remain; halving
    /// rather than trimming one record keeps the memmove amortised O(1) per record.
    fn drop_oldest(&mut self, keep: usize) {
        let mut cut = 0;
        while self.outbox.len() - cut > keep {
            let n = self
                .outbox
                .get(cut + 8..cut + RECORD_HEADER)
                .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
            cut = (cut + RECORD_HEADER + 8 * n).min(self.outbox.len());
        }
        self.outbox.drain(..cut);
    }

    /// Append the records queued since the last export to `out` as one blob (with its header) and
    /// empty the queue. Returns the number of records; with none, `out` is left unchanged.
    pub fn export(&mut self, out: &mut Vec<u8>) -> usize {
        let mut records = 0;
        let mut pos = 0;
        while let Some(b) = self.outbox.get(pos + 8..pos + RECORD_HEADER) {
            records += 1;
            pos += RECORD_HEADER + 8 * usize::from(u16::from_le_bytes([b[0], b[1]]));
        }
        if records > 0 {
            out.extend_from_slice(&MAGIC);
            out.append(&mut self.outbox);
        }
        records
    }

    /// Learn the records of a blob another worker exported (never queued for re-export). Records
    /// for unknown endpoints are skipped. Returns the number of records learned.
    pub fn import(&mut self, blob: &[u8]) -> Result<usize, ImportError> {
        let Some(body) = blob.strip_prefix(&MAGIC) else {
            return Err(ImportError::BadHeader);
        };
        let (mut pos, mut learned) = (0, 0);
        let mut hashes = Vec::new();
        while pos < body.len() {
            let truncated = ImportError::Truncated {
                at: pos + MAGIC.len(),
            };
            let header = body
                .get(pos..pos + RECORD_HEADER)
                .ok_or(truncated.clone())?;
            let (id, n) = header.split_at(8);
            let id = le64(id);
            let n = usize::from(u16::from_le_bytes([n[0], n[1]]));
            let start = pos + RECORD_HEADER;
            let run = body.get(start..start + 8 * n).ok_or(truncated)?;
            pos = start + 8 * n;
            let Ok(k) = self.by_id.binary_search_by_key(&id, |&(i, _)| i) else {
                continue;
            };
            let Some(&(_, endpoint)) = self.by_id.get(k) else {
                continue;
            };
            hashes.clear();
            hashes.extend(run.chunks_exact(8).map(le64));
            self.learn(endpoint, &hashes);
            learned += 1;
        }
        Ok(learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn settings(capacity: usize) -> PrefixSettings {
        PrefixSettings {
            capacity,
            ..Default::default()
        }
    }

    fn ids(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| endpoint_id(&format!("10.0.0.{i}:8000")))
            .collect()
    }

    fn prompt(seed: u64, len: usize) -> Vec<u8> {
        let mut r = crate::scheduling::Rng::new(seed);
        (0..len).map(|_| b'a' + (r.below(26) as u8)).collect()
    }

    fn hashes(model: &str, p: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        PrefixSettings::default().hash_prompt(model, p, &mut out);
        out
    }

    #[test]
    fn hashes_are_chained_whole_blocks_and_capped() {
        let p = prompt(1, 64 * 10 + 30);
        let h = hashes("m", &p);
        assert_eq!(h.len(), 10, "the partial last block is not hashed");
        // Same prefix, different continuation: the shared blocks hash alike, later ones not.
        let mut q = p.clone();
        q[64 * 5] ^= 1;
        let g = hashes("m", &q);
        assert_eq!(h[..5], g[..5]);
        assert!(h[5..].iter().zip(&g[5..]).all(|(a, b)| a != b), "chained");
        // Changing block 0 changes every block's hash.
        let mut r = p.clone();
        r[0] ^= 1;
        assert!(hashes("m", &r).iter().zip(&h).all(|(a, b)| a != b));
        let mut out = vec![7];
        prefix_hashes("m", &p, 64, 3, &mut out);
        assert_eq!(out, h[..3]);
        prefix_hashes("m", &p, 0, 3, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn empty_and_short_prompts_have_no_blocks() {
        assert!(hashes("m", b"").is_empty());
        assert!(hashes("m", &[b'x'; 63]).is_empty());
        let mut idx = PrefixIndex::new(&settings(100), &ids(2));
        idx.record(0, &[]);
        assert_eq!(idx.matched_blocks(0, &[]), 0);
        assert!(idx.is_empty());
        let mut out = Vec::new();
        assert_eq!(idx.export(&mut out), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn the_endpoint_that_learned_a_prefix_matches_it() {
        let mut idx = PrefixIndex::new(&PrefixSettings::default(), &ids(4));
        let p = prompt(2, 64 * 40);
        idx.record(2, &hashes("m", &p));
        // A longer prompt with the same start (the next turn of a chat).
        let mut longer = p.clone();
        longer.extend(prompt(3, 64 * 20));
        let h = hashes("m", &longer);
        assert_eq!(idx.matched_blocks(2, &h), 40);
        for e in [0, 1, 3, 9] {
            assert_eq!(idx.matched_blocks(e, &h), 0);
        }
        // Diverging at block 13 matches 13.
        let mut other = p.clone();
        other[64 * 13 + 5] ^= 1;
        assert_eq!(idx.matched_blocks(2, &hashes("m", &other)), 13);
        // Every length from 1 up finds the right run, whatever the guess.
        for k in 1..=40 {
            assert_eq!(idx.matched_blocks(2, &h[..k]), k);
        }
        for diverge in [0, 1, 2, 13, 39] {
            let mut q = p.clone();
            q[64 * diverge] ^= 1;
            let hq = hashes("m", &q);
            for guess in 0..50 {
                assert_eq!(idx.matched_blocks_near(2, &hq, guess), diverge, "{guess}");
                assert_eq!(idx.matched_blocks_near(2, &h, guess), 40, "{guess}");
            }
        }
    }

    #[test]
    fn another_model_does_not_match() {
        let mut idx = PrefixIndex::new(&PrefixSettings::default(), &ids(2));
        let p = prompt(4, 64 * 8);
        idx.record(0, &hashes("llama-3", &p));
        assert_eq!(idx.matched_blocks(0, &hashes("llama-3", &p)), 8);
        assert_eq!(idx.matched_blocks(0, &hashes("sql-lora", &p)), 0);
    }

    #[test]
    fn a_pool_past_the_budget_gets_smaller_tables() {
        let mut idx = PrefixIndex::new(&settings(1 << 20), &[1, 2]);
        assert_eq!(idx.capacity_per_endpoint(), 1 << 20);
        let many: Vec<u64> = (0..64).collect();
        idx.sync_endpoints(&many);
        assert!(idx.capacity_per_endpoint() * 64 <= PREFIX_BUDGET_BLOCKS);
        assert_eq!(idx.capacity_per_endpoint(), PREFIX_BUDGET_BLOCKS / 64);
        idx.sync_endpoints(&[1, 2]);
        assert_eq!(
            idx.capacity_per_endpoint(),
            1 << 20,
            "back to the configured size"
        );
    }

    #[test]
    fn the_index_stays_within_capacity() {
        let cap = 1_000;
        let mut idx = PrefixIndex::new(&settings(cap), &ids(3));
        assert_eq!(idx.capacity_per_endpoint(), cap);
        for i in 0..200 {
            idx.record(1, &hashes("m", &prompt(100 + i, 64 * 100)));
        }
        // 20,000 distinct blocks went in.
        assert!(idx.len_of(1) <= cap, "{}", idx.len_of(1));
        assert!(idx.len_of(1) > cap * 9 / 10, "{}", idx.len_of(1));
        assert_eq!(idx.len_of(0), 0);
        let slot_bytes = idx.memory_bytes() - idx.outbox.capacity();
        assert!(slot_bytes <= cap * 4 + 1024, "{slot_bytes}");
        assert!(idx.outbox.len() <= OUTBOX_LIMIT);
        // The most recent prompt is still fully held.
        let last = hashes("m", &prompt(299, 64 * 100));
        assert_eq!(idx.matched_blocks(1, &last), 100);
        // Tiny capacities work too.
        let mut tiny = PrefixIndex::new(&settings(3), &ids(1));
        tiny.record(0, &hashes("m", &prompt(5, 64 * 50)));
        assert!(tiny.len_of(0) <= 3);
    }

    #[test]
    fn export_import_round_trip() {
        let mut a = PrefixIndex::new(&PrefixSettings::default(), &ids(4));
        // Worker b lists the same endpoints in another order, plus one a does not know.
        let mut b_ids = ids(4);
        b_ids.reverse();
        b_ids.push(endpoint_id("10.9.9.9:8000"));
        let mut b = PrefixIndex::new(&PrefixSettings::default(), &b_ids);
        let p1 = hashes("m", &prompt(6, 64 * 30));
        let p2 = hashes("m", &prompt(7, 64 * 5));
        a.record(0, &p1);
        a.record(3, &p2);
        let mut blob = Vec::new();
        assert_eq!(a.export(&mut blob), 2);
        assert_eq!(blob.len(), 2 + 2 * 10 + 35 * 8);
        assert_eq!(b.import(&blob), Ok(2));
        assert_eq!(b.matched_blocks(3, &p1), 30, "endpoint 0 of a is 3 of b");
        assert_eq!(b.matched_blocks(0, &p2), 5);
        // Imports are not re-exported, and importing twice changes nothing.
        let mut again = Vec::new();
        assert_eq!(b.export(&mut again), 0);
        let before = b.len();
        assert_eq!(b.import(&blob), Ok(2));
        assert_eq!(b.len(), before);
        // The queue was drained.
        assert_eq!(a.export(&mut again), 0);
        // Records of an endpoint b does not have are skipped.
        b.record(4, &p2);
        let mut from_b = Vec::new();
        assert_eq!(b.export(&mut from_b), 1);
        assert_eq!(a.import(&from_b), Ok(0));
    }

    #[test]
    fn bad_blobs_are_refused_without_panicking() {
        let mut idx = PrefixIndex::new(&PrefixSettings::default(), &ids(2));
        assert_eq!(idx.import(b""), Err(ImportError::BadHeader));
        assert_eq!(idx.import(b"XY"), Err(ImportError::BadHeader));
        assert_eq!(idx.import(&MAGIC), Ok(0));
        let mut src = PrefixIndex::new(&PrefixSettings::default(), &ids(2));
        src.record(1, &hashes("m", &prompt(8, 64 * 4)));
        let mut blob = Vec::new();
        src.export(&mut blob);
        for cut in 3..blob.len() {
            assert!(matches!(
                idx.import(&blob[..cut]),
                Err(ImportError::Truncated { .. })
            ));
        }
        let mut r = crate::scheduling::Rng::new(9);
        for _ in 0..200 {
            let mut junk: Vec<u8> = (0..r.below(300)).map(|_| r.next_u64() as u8).collect();
            junk.splice(0..0, MAGIC);
            let _ = idx.import(&junk);
        }
    }

    #[test]
    fn endpoint_changes_keep_what_survivors_learned() {
        let all = ids(4);
        let mut idx = PrefixIndex::new(&PrefixSettings::default(), &all);
        let h = hashes("m", &prompt(10, 64 * 6));
        idx.record(1, &h);
        idx.record(3, &h);
        // Endpoint 1 leaves; 3 moves to position 1; a new one joins.
        let new = [all[0], all[3], endpoint_id("10.1.1.1:8000")];
        idx.sync_endpoints(&new);
        assert_eq!(idx.endpoints(), 3);
        assert_eq!(idx.matched_blocks(1, &h), 6);
        assert_eq!(idx.matched_blocks(0, &h), 0);
        assert_eq!(idx.matched_blocks(2, &h), 0);
        assert_eq!(idx.matched_blocks(3, &h), 0, "out of range");
        idx.record(7, &h); // out of range: ignored
        idx.sync_endpoints(&[]);
        assert!(idx.is_empty());
    }

    #[test]
    fn the_outbox_is_bounded_and_keeps_the_newest() {
        let mut idx = PrefixIndex::new(&settings(64), &ids(1));
        let big = hashes("m", &prompt(11, 64 * 256));
        for _ in 0..100 {
            idx.record(0, &big);
        }
        let last = hashes("m", &prompt(12, 64 * 3));
        idx.record(0, &last);
        assert!(idx.outbox.len() <= OUTBOX_LIMIT);
        let mut blob = Vec::new();
        let n = idx.export(&mut blob);
        assert!(
            n >= 2 && blob.len() <= OUTBOX_LIMIT + 2,
            "{n} {}",
            blob.len()
        );
        let mut other = PrefixIndex::new(&PrefixSettings::default(), &ids(1));
        assert_eq!(other.import(&blob), Ok(n));
        assert_eq!(other.matched_blocks(0, &last), 3);
    }
}
