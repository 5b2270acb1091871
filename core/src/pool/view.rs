//! A worker's view of one pool: its members, their last published states and their shared
//! counters. Per request the view reads the collector's small version value (only when it needs
//! metrics or discovered members) and decodes the snapshot only when a new one was published.
//! Members are matched by address: a snapshot that lists the configured endpoints in another order
//! or a subset of them puts each state where its address is.

use super::counters::PoolCounters;
use super::EndpointState;
use crate::config::Pool;
use crate::host::{Level, Say, SharedStore};
use crate::scheduling::endpoint_id;
use crate::shared::{decode, decode_version, Keys};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// One member list and what is known of it.
#[derive(Debug)]
pub struct Members {
    /// The pool's name.
    pub pool: String,
    /// `ip:port` of each member, in the order the other fields use.
    pub endpoints: Vec<String>,
    /// `scheduling::endpoint_id` of each member.
    pub ids: Vec<u64>,
    /// The last published state of each member; None = not scraped (yet).
    pub states: Vec<Option<EndpointState>>,
    pub counters: Rc<PoolCounters>,
    /// The collector's member-list generation this list came from (0: the configured list).
    pub generation: u64,
    /// A per-member cache slot for the host (its pick counter's metric id), kept with the list it
    /// belongs to.
    pub host_ids: Vec<Cell<Option<u32>>>,
}

impl Members {
    fn new(
        pool: &str,
        counters_key: &str,
        endpoints: Vec<String>,
        states: Vec<Option<EndpointState>>,
        generation: u64,
    ) -> Members {
        let ids: Vec<u64> = endpoints.iter().map(|e| endpoint_id(e)).collect();
        Members {
            pool: pool.to_string(),
            counters: Rc::new(PoolCounters::new(counters_key.to_string(), ids.clone())),
            host_ids: vec![Cell::new(None); endpoints.len()],
            ids,
            endpoints,
            states,
            generation,
        }
    }

    /// The same list with new states.
    fn with_states(&self, states: Vec<Option<EndpointState>>) -> Members {
        Members {
            pool: self.pool.clone(),
            endpoints: self.endpoints.clone(),
            ids: self.ids.clone(),
            states,
            counters: Rc::clone(&self.counters),
            generation: self.generation,
            host_ids: self.host_ids.clone(),
        }
    }
}

pub struct PoolView {
    name: String,
    /// Members come from the snapshot (discovery) rather than the configuration.
    discovered: bool,
    snapshot_key: String,
    version_key: String,
    counters_key: String,
    version: Cell<Option<u64>>,
    members: RefCell<Rc<Members>>,
    /// Said once: an undecodable snapshot; configured endpoints the collector does not scrape.
    said_undecodable: Cell<bool>,
    said_unscraped: Cell<bool>,
}

impl PoolView {
    pub fn new(pool: &Pool, keys: &Keys) -> PoolView {
        let states = vec![None; pool.endpoints.len()];
        let counters_key = keys.counters(&pool.name);
        PoolView {
            name: pool.name.clone(),
            discovered: pool.discovery.is_some(),
            snapshot_key: keys.snapshot(&pool.name),
            version_key: keys.version(&pool.name),
            members: RefCell::new(Rc::new(Members::new(
                &pool.name,
                &counters_key,
                pool.endpoints.clone(),
                states,
                0,
            ))),
            counters_key,
            version: Cell::new(None),
            said_undecodable: Cell::new(false),
            said_unscraped: Cell::new(false),
        }
    }

    /// The current members. With `metrics` (or for a discovered pool) the published snapshot is
    /// checked first and decoded if the collector has published since the last call.
    pub fn members(
        &self,
        store: &(impl SharedStore + ?Sized),
        say: &(impl Say + ?Sized),
        metrics: bool,
    ) -> Rc<Members> {
        if metrics || self.discovered {
            let published = store
                .get(&self.version_key)
                .and_then(|(b, _)| decode_version(&b));
            if published.is_some() && published != self.version.get() {
                self.refresh(store, say);
            }
        }
        Rc::clone(&self.members.borrow())
    }

    /// Whether the collector has published anything for this pool.
    pub fn has_snapshot(&self) -> bool {
        self.version.get().is_some()
    }

    fn refresh(&self, store: &(impl SharedStore + ?Sized), say: &(impl Say + ?Sized)) {
        let Some((bytes, _)) = store.get(&self.snapshot_key) else {
            return;
        };
        let snapshot = match decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                if !self.said_undecodable.replace(true) {
                    say.say(
                        Level::Error,
                        &format!(
                            "pool {}: the published snapshot is unreadable ({e:?}): is the collector \
                             running another version of the module? Routing goes on without metrics",
                            self.name
                        ),
                    );
                }
                return;
            }
        };
        self.said_undecodable.set(false);
        self.version.set(Some(snapshot.version));
        let current = Rc::clone(&self.members.borrow());
        let same_list = current.endpoints.len() == snapshot.endpoints.len()
            && current
                .endpoints
                .iter()
                .zip(&snapshot.endpoints)
                .all(|(a, (b, _))| a == b);
        let next = if same_list {
            // The common case: same members in the same order, only their states are new.
            current.with_states(
                snapshot
                    .endpoints
                    .into_iter()
                    .map(|(_, s)| Some(s))
                    .collect(),
            )
        } else if self.discovered {
            let (endpoints, states): (Vec<String>, Vec<Option<EndpointState>>) = snapshot
                .endpoints
                .into_iter()
                .map(|(a, s)| (a, Some(s)))
                .unzip();
            Members::new(
                &self.name,
                &self.counters_key,
                endpoints,
                states,
                snapshot.generation,
            )
        } else {
            // Configured members, published in another order or subset: match by address.
            let mut states = vec![None; current.endpoints.len()];
            for (addr, state) in snapshot.endpoints {
                if let Some(i) = current.endpoints.iter().position(|e| *e == addr) {
                    if let Some(slot) = states.get_mut(i) {
                        *slot = Some(state);
                    }
                }
            }
            let missing: Vec<&str> = current
                .endpoints
                .iter()
                .zip(&states)
                .filter(|(_, s)| s.is_none())
                .map(|(e, _)| e.as_str())
                .collect();
            if !missing.is_empty() && !self.said_unscraped.replace(true) {
                say.say(
                    Level::Error,
                    &format!(
                        "pool {}: the collector does not scrape {} configured here ({}): the \
                         filter's and the collector's documents differ; these endpoints are picked \
                         only when no scraped one is fresh",
                        self.name,
                        missing.len(),
                        missing.join(", ")
                    ),
                );
            }
            current.with_states(states)
        };
        *self.members.borrow_mut() = Rc::new(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::host::memory::{MemLog, MemStore};
    use crate::shared::{encode, encode_version, Snapshot};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pool(doc: &str) -> (Pool, Keys) {
        let c = Config::parse(doc.as_bytes()).unwrap();
        (c.pools[0].clone(), Keys::new(&c.instance))
    }

    fn publish(store: &MemStore, keys: &Keys, version: u64, generation: u64, eps: &[(&str, u32)]) {
        let s = Snapshot {
            version,
            generation,
            endpoints: eps
                .iter()
                .map(|(a, w)| {
                    (
                        a.to_string(),
                        EndpointState {
                            waiting: *w,
                            ..EndpointState::default()
                        },
                    )
                })
                .collect(),
        };
        store.put(&keys.snapshot("p"), &encode(&s));
        store.put(&keys.version("p"), &encode_version(version));
    }

    #[test]
    fn states_follow_addresses_and_a_mismatch_is_said_once() {
        let (p, keys) =
            pool(r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80","10.0.0.2:80"]}]}"#);
        let (store, log) = (MemStore::new(), MemLog::default());
        let view = PoolView::new(&p, &keys);
        assert!(view
            .members(&store, &log, true)
            .states
            .iter()
            .all(Option::is_none));
        // Published in another order, with one the filter does not list and one missing.
        publish(
            &store,
            &keys,
            1,
            1,
            &[("10.0.0.9:80", 9), ("10.0.0.2:80", 2)],
        );
        let m = view.members(&store, &log, true);
        assert_eq!(m.states[1].as_ref().map(|s| s.waiting), Some(2));
        assert!(m.states[0].is_none());
        publish(
            &store,
            &keys,
            2,
            1,
            &[("10.0.0.9:80", 9), ("10.0.0.2:80", 3)],
        );
        view.members(&store, &log, true);
        assert_eq!(
            log.count(
                Level::Error,
                "does not scrape 1 configured here (10.0.0.1:80)"
            ),
            1
        );
    }

    #[test]
    fn an_undecodable_snapshot_is_said_once_and_the_last_state_kept() {
        let (p, keys) = pool(r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"]}]}"#);
        let (store, log) = (MemStore::new(), MemLog::default());
        let view = PoolView::new(&p, &keys);
        publish(&store, &keys, 1, 1, &[("10.0.0.1:80", 4)]);
        assert_eq!(
            view.members(&store, &log, true).states[0]
                .as_ref()
                .unwrap()
                .waiting,
            4
        );
        for v in 2..10 {
            store.put(&keys.snapshot("p"), b"IRS2 an older module's snapshot");
            store.put(&keys.version("p"), &encode_version(v));
            let m = view.members(&store, &log, true);
            assert_eq!(m.states[0].as_ref().unwrap().waiting, 4);
        }
        assert_eq!(
            log.count(Level::Error, "unreadable"),
            1,
            "{:?}",
            log.lines.borrow()
        );
    }

    #[test]
    fn discovered_members_come_from_the_snapshot_with_its_generation() {
        let (p, keys) =
            pool(r#"{"pools":[{"name":"p","discovery":{"cluster":"c","adminCluster":"a"}}]}"#);
        let (store, log) = (MemStore::new(), MemLog::default());
        let view = PoolView::new(&p, &keys);
        assert!(view.members(&store, &log, false).endpoints.is_empty());
        publish(
            &store,
            &keys,
            1,
            5,
            &[("10.0.0.1:80", 0), ("10.0.0.2:80", 0)],
        );
        let m = view.members(&store, &log, false);
        assert_eq!(m.endpoints, vec!["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(m.generation, 5);
        // Without metrics and without discovery the snapshot is never read.
        let (p2, _) = pool(r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"]}]}"#);
        let plain = PoolView::new(&p2, &keys);
        assert!(plain.members(&store, &log, false).states[0].is_none());
        assert!(!plain.has_snapshot());
    }
}
