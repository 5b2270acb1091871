//! Per-endpoint request counters of one pool, shared by every worker (and read by the collector):
//! requests in flight from this gateway, a running count of picks, and recent LoRA adapter claims.
//! Keyed by endpoint **address** (its [`endpoint_id`](crate::scheduling::endpoint_id)), never by
//! position, so counts survive a membership change or a reordered list, and one key per pool serves
//! every member list.
//!
//! Layout (little-endian):
//! ```text
//! magic   "IRC1"
//! layout  u32     bumped whenever a slot is added or removed (readers cache id → slot by it)
//! flags   u8      bit 0: the claims section follows the slots
//! count   u32
//! count × slot    id u64, in_flight u32, picks u32                    (16 bytes)
//! count × claims  scheduling::AdapterClaims, ENCODED_LEN bytes each  (only once a pick claimed)
//! ```
//! A pick reads and writes the whole value with compare-and-swap; a release patches one slot's
//! in-flight count in place ([`release_in_place`]).

use crate::scheduling::{AdapterClaims, ENCODED_LEN};
use std::collections::HashMap;

const MAGIC: &[u8; 4] = b"IRC1";
const HEADER: usize = 13;
const SLOT: usize = 16;
const WITH_CLAIMS: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub id: u64,
    pub in_flight: u32,
    pub picks: u32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CounterTable {
    pub layout: u32,
    pub slots: Vec<Slot>,
    /// Empty until the pool's first claim; then one per slot.
    pub claims: Vec<AdapterClaims>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountersError {
    /// Not this format (another version of the module wrote it).
    Magic,
    Truncated,
}

impl CounterTable {
    /// The table in `bytes`; absent (None) is the empty table.
    pub fn decode(bytes: Option<&[u8]>) -> Result<CounterTable, CountersError> {
        let Some(bytes) = bytes else {
            return Ok(CounterTable::default());
        };
        if bytes.get(..4) != Some(MAGIC) {
            return Err(CountersError::Magic);
        }
        let (layout, flags, count) = header(bytes).ok_or(CountersError::Truncated)?;
        let slots_end = HEADER + count * SLOT;
        let slot_bytes = bytes
            .get(HEADER..slots_end)
            .ok_or(CountersError::Truncated)?;
        let slots = slot_bytes.chunks_exact(SLOT).map(read_slot).collect();
        let claims = if flags & WITH_CLAIMS != 0 {
            let tail = bytes
                .get(slots_end..slots_end + count * ENCODED_LEN)
                .ok_or(CountersError::Truncated)?;
            tail.chunks_exact(ENCODED_LEN)
                .map(AdapterClaims::decode)
                .collect()
        } else {
            Vec::new()
        };
        Ok(CounterTable {
            layout,
            slots,
            claims,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let with_claims = !self.claims.is_empty() && self.claims.len() == self.slots.len();
        let mut out = Vec::with_capacity(
            HEADER + self.slots.len() * (SLOT + if with_claims { ENCODED_LEN } else { 0 }),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.layout.to_le_bytes());
        out.push(if with_claims { WITH_CLAIMS } else { 0 });
        out.extend_from_slice(&(self.slots.len() as u32).to_le_bytes());
        for s in &self.slots {
            out.extend_from_slice(&s.id.to_le_bytes());
            out.extend_from_slice(&s.in_flight.to_le_bytes());
            out.extend_from_slice(&s.picks.to_le_bytes());
        }
        if with_claims {
            for c in &self.claims {
                c.encode(&mut out);
            }
        }
        out
    }

    pub fn find(&self, id: u64) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    /// The slot of `id`, added (and the layout bumped) if it has none.
    pub fn slot_for(&mut self, id: u64) -> usize {
        if let Some(i) = self.find(id) {
            return i;
        }
        self.slots.push(Slot {
            id,
            ..Slot::default()
        });
        if !self.claims.is_empty() {
            self.claims.push(AdapterClaims::default());
        }
        self.layout = self.layout.wrapping_add(1);
        self.slots.len() - 1
    }

    /// Count a pick of slot `i`, claiming `adapter` there if given (with the pick number it takes).
    pub fn count_pick(&mut self, i: usize, adapter: Option<u32>) {
        let n = self.slots.len();
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if let Some(adapter) = adapter {
            if self.claims.len() != n {
                self.claims = vec![AdapterClaims::default(); n];
            }
            if let Some(c) = self.claims.get_mut(i) {
                c.record(adapter, slot.picks);
            }
        }
        slot.in_flight = slot.in_flight.saturating_add(1);
        slot.picks = slot.picks.wrapping_add(1);
    }

    /// Drop the slots of addresses `keep` refuses, unless a request is still in flight there (its
    /// release must find it). Returns whether anything was dropped.
    pub fn retire(&mut self, keep: impl Fn(u64) -> bool) -> bool {
        let before = self.slots.len();
        let mut i = 0;
        while i < self.slots.len() {
            let s = self.slots.get(i).copied().unwrap_or_default();
            if keep(s.id) || s.in_flight > 0 {
                i += 1;
                continue;
            }
            self.slots.remove(i);
            if i < self.claims.len() {
                self.claims.remove(i);
            }
        }
        let dropped = self.slots.len() != before;
        if dropped {
            self.layout = self.layout.wrapping_add(1);
        }
        dropped
    }

    /// For each of `ids`, its slot here (None: no slot yet).
    pub fn slots_of(&self, ids: &[u64]) -> Vec<Option<usize>> {
        if self.slots.len() <= 8 {
            return ids.iter().map(|id| self.find(*id)).collect();
        }
        let by_id: HashMap<u64, usize> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        ids.iter().map(|id| by_id.get(id).copied()).collect()
    }
}

fn header(bytes: &[u8]) -> Option<(u32, u8, usize)> {
    let layout = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let flags = *bytes.get(8)?;
    let count = u32::from_le_bytes(bytes.get(9..13)?.try_into().ok()?) as usize;
    // A hostile count cannot make a reader allocate beyond what the value holds.
    (count <= bytes.len() / SLOT).then_some((layout, flags, count))
}

fn read_slot(b: &[u8]) -> Slot {
    let u64_at = |at: usize| {
        b.get(at..at + 8)
            .and_then(|x| x.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let u32_at = |at: usize| {
        b.get(at..at + 4)
            .and_then(|x| x.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    Slot {
        id: u64_at(0),
        in_flight: u32_at(8),
        picks: u32_at(12),
    }
}

/// The layout number of an encoded table, without decoding it.
pub fn peek_layout(bytes: &[u8]) -> Option<u32> {
    if bytes.get(..4)? != MAGIC {
        return None;
    }
    header(bytes).map(|(layout, _, _)| layout)
}

/// Decrement the in-flight count of `id` in an encoded table, touching nothing else. False when
/// the table is not this format or has no slot for `id`.
pub fn release_in_place(bytes: &mut [u8], id: u64) -> bool {
    if bytes.get(..4) != Some(MAGIC) {
        return false;
    }
    let Some((_, _, count)) = header(bytes) else {
        return false;
    };
    let wanted = id.to_le_bytes();
    for i in 0..count {
        let at = HEADER + i * SLOT;
        if bytes.get(at..at + 8) != Some(&wanted[..]) {
            continue;
        }
        let Some(field) = bytes.get_mut(at + 8..at + 12) else {
            return false;
        };
        let n = field
            .try_into()
            .map_or(0, u32::from_le_bytes)
            .saturating_sub(1);
        field.copy_from_slice(&n.to_le_bytes());
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn counts_follow_addresses_not_positions() {
        let mut t = CounterTable::default();
        let (a, b) = (t.slot_for(0xa), t.slot_for(0xb));
        t.count_pick(a, None);
        t.count_pick(b, None);
        t.count_pick(b, Some(7));
        let bytes = t.encode();
        let back = CounterTable::decode(Some(&bytes)).unwrap();
        assert_eq!(back, t);
        // Members listed in another order find the same counts.
        let slots = back.slots_of(&[0xb, 0xa, 0xc]);
        assert_eq!(slots, vec![Some(b), Some(a), None]);
        assert_eq!(back.slots[b].in_flight, 2);
        assert_eq!(back.slots[b].picks, 2);
        assert_eq!(
            back.claims.len(),
            2,
            "claims for every slot once one claimed"
        );
    }

    #[test]
    fn release_in_place_touches_one_count() {
        let mut t = CounterTable::default();
        for id in 1..=20u64 {
            let i = t.slot_for(id);
            t.count_pick(i, Some(id as u32));
        }
        let mut bytes = t.encode();
        assert!(release_in_place(&mut bytes, 13));
        assert!(!release_in_place(&mut bytes, 99), "no such address");
        let back = CounterTable::decode(Some(&bytes)).unwrap();
        for s in &back.slots {
            assert_eq!(s.in_flight, if s.id == 13 { 0 } else { 1 });
        }
        assert_eq!(back.claims, t.claims);
        // Never below zero.
        assert!(release_in_place(&mut bytes, 13));
        assert_eq!(
            CounterTable::decode(Some(&bytes)).unwrap().slots[12].in_flight,
            0
        );
    }

    #[test]
    fn retiring_keeps_busy_slots_and_bumps_the_layout() {
        let mut t = CounterTable::default();
        let a = t.slot_for(1);
        t.slot_for(2);
        t.slot_for(3);
        t.count_pick(a, None);
        let layout = t.layout;
        assert!(t.retire(|id| id == 3));
        assert_eq!(t.slots.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 3]);
        assert_ne!(t.layout, layout);
        assert!(
            !t.retire(|id| id == 3),
            "slot 1 still has a request in flight"
        );
        assert_eq!(peek_layout(&t.encode()), Some(t.layout));
    }

    #[test]
    fn other_formats_and_truncations_are_refused() {
        let mut t = CounterTable::default();
        for id in 0..5 {
            let i = t.slot_for(id);
            t.count_pick(i, Some(1));
        }
        let bytes = t.encode();
        for n in 0..bytes.len() {
            assert!(
                CounterTable::decode(Some(&bytes[..n])).is_err(),
                "prefix {n}"
            );
        }
        // The previous layout: bare u32 words.
        assert_eq!(
            CounterTable::decode(Some(&[0u8; 16])),
            Err(CountersError::Magic)
        );
        let mut huge = bytes.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            CounterTable::decode(Some(&huge)),
            Err(CountersError::Truncated)
        );
        assert_eq!(CounterTable::decode(None), Ok(CounterTable::default()));
    }
}
