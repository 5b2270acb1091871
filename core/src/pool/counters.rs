//! A pool's shared request counters as one member list sees them: the [`CounterTable`] in shared
//! data (keyed by address), read and written with compare-and-swap, and the cached mapping from
//! this list's members to the table's slots (rebuilt only when the table's layout moves).

use crate::host::{update, SharedStore};
use crate::scheduling::AdapterClaims;
use crate::shared::counters::{peek_layout, release_in_place, CounterTable};
use std::cell::RefCell;

/// Retries of a compare-and-swap that lost a race with another worker before giving up.
pub const CAS_ATTEMPTS: usize = 16;

/// The counts of one member list, in member order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub in_flight: Vec<u32>,
    pub picks: Vec<u32>,
    /// Empty until the pool's first claim.
    pub claims: Vec<AdapterClaims>,
}

#[derive(Debug)]
pub struct PoolCounters {
    key: String,
    /// Member ids (`scheduling::endpoint_id`), in member order.
    ids: Vec<u64>,
    /// (table layout, slot of each member) from the last read.
    slots: RefCell<(Option<u32>, Vec<Option<usize>>)>,
}

impl PoolCounters {
    pub fn new(key: String, ids: Vec<u64>) -> PoolCounters {
        let n = ids.len();
        PoolCounters {
            key,
            ids,
            slots: RefCell::new((None, vec![None; n])),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The table, or an empty one when it is absent or of another format (another module version:
    /// its counts are not ours to read; the first write replaces them).
    fn read(store: &(impl SharedStore + ?Sized), key: &str) -> (CounterTable, Option<u32>) {
        match store.get(key) {
            None => (CounterTable::default(), None),
            Some((bytes, cas)) => (
                CounterTable::decode(Some(&bytes)).unwrap_or_default(),
                Some(cas),
            ),
        }
    }

    /// Each member's slot in `table`, from the cache while the layout is unchanged.
    fn member_slots(&self, table: &CounterTable) -> Vec<Option<usize>> {
        let mut cache = self.slots.borrow_mut();
        if cache.0 != Some(table.layout) {
            *cache = (Some(table.layout), table.slots_of(&self.ids));
        }
        cache.1.clone()
    }

    fn counts(&self, table: &CounterTable, slots: &[Option<usize>]) -> Counts {
        let get = |s: &Option<usize>| {
            s.and_then(|i| table.slots.get(i))
                .copied()
                .unwrap_or_default()
        };
        Counts {
            in_flight: slots.iter().map(|s| get(s).in_flight).collect(),
            picks: slots.iter().map(|s| get(s).picks).collect(),
            claims: if table.claims.is_empty() {
                Vec::new()
            } else {
                slots
                    .iter()
                    .map(|s| {
                        s.and_then(|i| table.claims.get(i))
                            .copied()
                            .unwrap_or_default()
                    })
                    .collect()
            },
        }
    }

    /// The current counts of this list's members.
    pub fn load(&self, store: &(impl SharedStore + ?Sized)) -> Counts {
        let (table, _) = Self::read(store, &self.key);
        let slots = self.member_slots(&table);
        self.counts(&table, &slots)
    }

    /// Choose a member from the current counts with `pick` and count the request on it (claiming
    /// the adapter `pick` names there, if any), atomically across workers: a lost race re-reads
    /// and re-picks. `pick` may refuse with `E`. Under heavy contention the last pick goes
    /// through uncounted.
    pub fn pick<T, E>(
        &self,
        store: &(impl SharedStore + ?Sized),
        mut pick: impl FnMut(&Counts) -> Result<(usize, Option<u32>, T), E>,
    ) -> Result<(usize, T), E> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut table, cas) = Self::read(store, &self.key);
            let slots = self.member_slots(&table);
            let counts = self.counts(&table, &slots);
            let (member, claim, extra) = pick(&counts)?;
            let Some(&id) = self.ids.get(member) else {
                return Ok((member, extra));
            };
            let slot = match slots.get(member).copied().flatten() {
                Some(s) => s,
                None => table.slot_for(id),
            };
            table.count_pick(slot, claim);
            match store.set(&self.key, &table.encode(), cas) {
                crate::host::Write::Done => return Ok((member, extra)),
                crate::host::Write::Lost => continue,
                crate::host::Write::Failed => return Ok((member, extra)),
            }
        }
        let counts = self.load(store);
        pick(&counts).map(|(i, _, extra)| (i, extra))
    }

    /// The request on `member` has ended. True when it was counted (and is now released).
    pub fn release(&self, store: &(impl SharedStore + ?Sized), member: usize) -> bool {
        let Some(&id) = self.ids.get(member) else {
            return false;
        };
        release(store, &self.key, id)
    }

    /// `member`'s pick counter now (the collector stamps scrapes with it).
    pub fn picks_of(&self, store: &(impl SharedStore + ?Sized), member: usize) -> u32 {
        self.load(store).picks.get(member).copied().unwrap_or(0)
    }

    /// The table's layout without decoding it (None: no table of this format yet).
    pub fn layout(&self, store: &(impl SharedStore + ?Sized)) -> Option<u32> {
        store.get(&self.key).and_then(|(b, _)| peek_layout(&b))
    }
}

/// Release one request on the endpoint with address id `id` in the table at `key`.
pub fn release(store: &(impl SharedStore + ?Sized), key: &str, id: u64) -> bool {
    update(store, key, CAS_ATTEMPTS, |current| {
        let mut bytes = current?.to_vec();
        release_in_place(&mut bytes, id).then_some(bytes)
    })
}

/// Drop the slots of addresses no longer in `members` (ids) that have nothing in flight: called by
/// the collector when the membership changes, so the table does not grow with every pod that
/// ever came and went.
pub fn retire(store: &(impl SharedStore + ?Sized), key: &str, members: &[u64]) -> bool {
    update(store, key, CAS_ATTEMPTS, |current| {
        let mut table = CounterTable::decode(current).ok()?;
        table
            .retire(|id| members.contains(&id))
            .then(|| table.encode())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::MemStore;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn least(c: &Counts) -> Result<(usize, Option<u32>, ()), ()> {
        let i = (0..c.in_flight.len())
            .min_by_key(|&i| c.in_flight[i])
            .ok_or(())?;
        Ok((i, None, ()))
    }

    #[test]
    fn two_workers_count_on_one_table_through_lost_races() {
        let store = MemStore::new();
        let a = PoolCounters::new("k".into(), vec![1, 2, 3]);
        let b = PoolCounters::new("k".into(), vec![1, 2, 3]);
        for i in 0..6 {
            // Every other pick loses its first write to "another worker".
            store.lose_next(i % 2);
            let w = if i % 2 == 0 { &a } else { &b };
            w.pick(&store, least).unwrap();
        }
        assert_eq!(a.load(&store).in_flight, vec![2, 2, 2]);
        assert_eq!(b.load(&store).picks, vec![2, 2, 2]);
        assert!(a.release(&store, 1));
        assert_eq!(b.load(&store).in_flight, vec![2, 1, 2]);
    }

    #[test]
    fn counts_survive_a_reordered_and_changed_member_list() {
        let store = MemStore::new();
        let old = PoolCounters::new("k".into(), vec![10, 20, 30]);
        old.pick(&store, |_| Ok::<_, ()>((2, Some(0xabc), ())))
            .unwrap();
        old.pick(&store, |_| Ok::<_, ()>((0, None, ()))).unwrap();
        // 20 left, 40 joined, the order changed.
        let new = PoolCounters::new("k".into(), vec![30, 40, 10]);
        let c = new.load(&store);
        assert_eq!(c.in_flight, vec![1, 0, 1]);
        assert_eq!(c.claims[0].as_slice()[0].adapter, 0xabc);
        // The request picked through the old list ends through the new one's address.
        assert!(new.release(&store, 0));
        assert!(old.release(&store, 0));
        assert_eq!(new.load(&store).in_flight, vec![0, 0, 0]);
        assert_eq!(
            store.keys(),
            vec!["k".to_string()],
            "one key, whatever the list"
        );
    }

    #[test]
    fn departed_idle_addresses_are_retired_busy_ones_kept() {
        let store = MemStore::new();
        let old = PoolCounters::new("k".into(), vec![1, 2, 3]);
        for i in 0..3 {
            old.pick(&store, |_| Ok::<_, ()>((i, None, ()))).unwrap();
        }
        old.release(&store, 0);
        assert!(retire(&store, "k", &[3]));
        let table = CounterTable::decode(store.value("k").as_deref()).unwrap();
        assert_eq!(
            table.slots.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![2, 3]
        );
        // The busy one's release still lands.
        assert!(old.release(&store, 1));
        assert!(retire(&store, "k", &[3]));
    }

    #[test]
    fn a_table_of_another_format_is_replaced_not_misread() {
        let store = MemStore::new();
        store.put("k", &[7u8; 24]);
        let c = PoolCounters::new("k".into(), vec![1, 2]);
        assert_eq!(c.load(&store).in_flight, vec![0, 0]);
        c.pick(&store, least).unwrap();
        assert_eq!(c.load(&store).in_flight, vec![1, 0]);
        assert!(
            !release(&MemStore::new(), "k", 1),
            "no table: nothing to release"
        );
    }

    #[test]
    fn contention_gives_up_after_the_attempts_and_still_picks() {
        let store = MemStore::new();
        let c = PoolCounters::new("k".into(), vec![1, 2]);
        c.pick(&store, least).unwrap();
        store.lose_next(CAS_ATTEMPTS as u32);
        let (i, ()) = c.pick(&store, least).unwrap();
        assert_eq!(i, 1);
        assert_eq!(c.load(&store).in_flight, vec![1, 0], "uncounted");
    }
}
