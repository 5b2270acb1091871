//! A bounded journal in one shared-data value: how Envoy's workers share what each learned (the
//! prefix index's exported records). Each worker appends its own blobs; every worker reads the
//! entries it has not seen yet, skipping its own. The oldest entries are dropped past a size cap,
//! so a reader that falls far behind only loses hints.
//!
//! Layout (little-endian): magic `IRJ1`, `next_seq u64`, then entries
//! `worker u64, seq u64, len u32, len bytes`. A value without the magic (another version of the
//! module, or garbage) reads as an empty journal.

const MAGIC: &[u8; 4] = b"IRJ1";
const HEADER: usize = 12;
const ENTRY_HEADER: usize = 20;

/// `journal` with `payload` appended by `worker`, the oldest entries dropped so the result stays
/// within `cap` bytes (a payload larger than the cap alone is not appended). Garbage in `journal`
/// is discarded rather than carried on.
pub fn append(journal: &[u8], worker: u64, payload: &[u8], cap: usize) -> Vec<u8> {
    let next_seq = next_seq(journal);
    let entries: Vec<(usize, usize)> = spans(journal).collect();
    let needed = ENTRY_HEADER + payload.len();
    let mut out = Vec::with_capacity(cap.min(journal.len() + needed));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&next_seq.wrapping_add(1).to_le_bytes());
    if HEADER + needed > cap {
        return out;
    }
    // Keep the newest entries that fit beside the new one.
    let mut budget = cap - HEADER - needed;
    let mut first_kept = entries.len();
    for (i, (start, end)) in entries.iter().enumerate().rev() {
        let size = end - start;
        if size > budget {
            break;
        }
        budget -= size;
        first_kept = i;
    }
    for (start, end) in entries.iter().skip(first_kept) {
        out.extend_from_slice(journal.get(*start..*end).unwrap_or_default());
    }
    out.extend_from_slice(&worker.to_le_bytes());
    out.extend_from_slice(&next_seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Entries of other workers with a sequence number ≥ `from_seq`, and the sequence to read from
/// next time.
pub fn unseen(journal: &[u8], me: u64, from_seq: u64) -> (Vec<&[u8]>, u64) {
    let next = next_seq(journal);
    let payloads = spans(journal)
        .filter_map(|(start, end)| {
            let worker = read_u64(journal, start)?;
            let seq = read_u64(journal, start + 8)?;
            (worker != me && seq >= from_seq).then(|| journal.get(start + ENTRY_HEADER..end))?
        })
        .collect();
    (payloads, next)
}

fn next_seq(journal: &[u8]) -> u64 {
    if journal.starts_with(MAGIC) {
        read_u64(journal, 4).unwrap_or(0)
    } else {
        0
    }
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// (start, end) of each well-formed entry; stops at the first malformed one.
fn spans(journal: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    // Not this format: no entries.
    let mut at = if journal.starts_with(MAGIC) {
        HEADER
    } else {
        usize::MAX
    };
    std::iter::from_fn(move || {
        let len = journal.get(at.checked_add(16)?..at.checked_add(ENTRY_HEADER)?)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let end = at.checked_add(ENTRY_HEADER)?.checked_add(len)?;
        if end > journal.len() {
            return None;
        }
        let span = (at, end);
        at = end;
        Some(span)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn readers_see_others_entries_once_and_never_their_own() {
        let j = append(&[], 1, b"a", 1024);
        let j = append(&j, 2, b"b", 1024);
        let j = append(&j, 1, b"c", 1024);
        let (seen, next) = unseen(&j, 2, 0);
        assert_eq!(seen, vec![&b"a"[..], &b"c"[..]]);
        assert_eq!(next, 3);
        let j = append(&j, 1, b"d", 1024);
        let (seen, _) = unseen(&j, 2, next);
        assert_eq!(seen, vec![&b"d"[..]]);
    }

    #[test]
    fn the_cap_drops_the_oldest_entries() {
        let mut j = Vec::new();
        for i in 0..100u8 {
            j = append(&j, 1, &[i; 30], 200);
            assert!(j.len() <= 200);
        }
        let (seen, next) = unseen(&j, 9, 0);
        assert_eq!(next, 100);
        assert_eq!(seen.last().unwrap(), &&[99u8; 30][..]);
        assert!(seen.len() >= 3);
        // A payload larger than the cap is not appended, but the sequence moves on.
        let j = append(&j, 1, &[0; 500], 200);
        assert_eq!(unseen(&j, 9, 100).0.len(), 0);
    }

    #[test]
    fn the_largest_sequence_number_wraps_instead_of_overflowing() {
        // Found by `make fuzz` (shared_data): a journal claiming sequence u64::MAX.
        let j = [&b"IRJ1"[..], &u64::MAX.to_le_bytes(), b"0\x01"].concat();
        let out = append(&j, 1, b"x", 100);
        assert_eq!(unseen(&out, 2, u64::MAX).0, vec![&b"x"[..]]);
    }

    #[test]
    fn garbage_is_survived() {
        let (seen, _) = unseen(b"\x05\0\0\0\0\0\0\0garbage-garbage-garbage", 0, 0);
        assert!(seen.is_empty());
        let (seen, _) = unseen(b"IRJ1\x05\0\0\0\0\0\0\0garbage-garbage-garbage", 0, 0);
        assert!(seen.is_empty());
        // The previous format (no magic) reads as empty rather than misread.
        let old = [
            &5u64.to_le_bytes()[..],
            &1u64.to_le_bytes(),
            &0u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            b"x",
        ]
        .concat();
        assert_eq!(unseen(&old, 2, 0), (vec![], 0));
        let j = append(b"junk", 1, b"x", 100);
        assert_eq!(unseen(&j, 2, 0).0, vec![&b"x"[..]]);
        for n in 0..j.len() {
            let _ = unseen(&j[..n], 2, 0);
        }
    }
}
