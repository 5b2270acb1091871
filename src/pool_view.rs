//! A worker's view of each pool: its members, their last published states, the shared request
//! counters and the stat names that go with them. The filter checks the collector's small version
//! key per request (only when it needs metrics or discovered members) and rebuilds this view only
//! when a new snapshot was published, never per request.

use crate::collector::{snapshot_key, version_key};
use crate::counters::{fingerprint, PoolCounters};
use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use router_core::config::Pool;
use router_core::pool::{self, EndpointState};
use router_core::stats;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

pub struct Members {
    /// `ip:port` of each member, in the order the states and counters use.
    pub endpoints: Vec<String>,
    /// The last published state of each member; None = never scraped.
    pub states: Vec<Option<EndpointState>>,
    pub counters: PoolCounters,
    /// `inference_router_endpoint_picks_total` name per member.
    pick_stats: Vec<String>,
    /// Its metric id per member, defined on the member's first pick: a pick then costs one host
    /// call, no name hashing.
    pick_ids: Vec<Cell<Option<u32>>>,
    /// Bumped whenever the member list itself changes.
    pub generation: u64,
}

impl Members {
    fn new(
        pool: &str,
        endpoints: Vec<String>,
        states: Vec<Option<EndpointState>>,
        generation: u64,
    ) -> Members {
        Members {
            counters: PoolCounters::new(pool, endpoints.len(), fingerprint(&endpoints)),
            pick_ids: vec![Cell::new(None); endpoints.len()],
            pick_stats: endpoints
                .iter()
                .map(|e| {
                    stats::name_with_labels(
                        stats::ENDPOINT_PICKS_TOTAL,
                        &[("pool", pool), ("endpoint", e)],
                    )
                })
                .collect(),
            endpoints,
            states,
            generation,
        }
    }

    /// Count a pick of member `i` in `inference_router_endpoint_picks_total`.
    pub fn count_pick(&self, i: usize) {
        let (Some(cell), Some(name)) = (self.pick_ids.get(i), self.pick_stats.get(i)) else {
            return;
        };
        let id = match cell.get() {
            Some(id) => Some(id),
            None => {
                let id = host_stats::define_counter(name);
                cell.set(id);
                id
            }
        };
        if let Some(id) = id {
            host_stats::increment_id(id, 1);
        }
    }
}

pub struct PoolView {
    name: String,
    /// Members come from the snapshot (discovery) rather than the configuration.
    discovered: bool,
    snapshot_key: String,
    version_key: String,
    version: Cell<Option<u64>>,
    members: RefCell<Rc<Members>>,
}

impl PoolView {
    pub fn new(pool: &Pool) -> PoolView {
        let states = vec![None; pool.endpoints.len()];
        PoolView {
            name: pool.name.clone(),
            discovered: pool.discovery.is_some(),
            snapshot_key: snapshot_key(&pool.name),
            version_key: version_key(&pool.name),
            version: Cell::new(None),
            members: RefCell::new(Rc::new(Members::new(
                &pool.name,
                pool.endpoints.clone(),
                states,
                0,
            ))),
        }
    }

    /// The current members. With `metrics` (or for a discovered pool) the published snapshot is
    /// checked first and decoded if the collector has published since the last call.
    pub fn members(&self, metrics: bool) -> Rc<Members> {
        if metrics || self.discovered {
            let published = hostcalls::get_shared_data(&self.version_key)
                .ok()
                .and_then(|(b, _)| b)
                .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)));
            if published.is_some() && published != self.version.get() {
                self.refresh();
            }
        }
        Rc::clone(&self.members.borrow())
    }

    fn refresh(&self) {
        let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&self.snapshot_key) else {
            return;
        };
        let snapshot = match pool::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("snapshot {} unreadable: {e:?}", self.snapshot_key);
                return;
            }
        };
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
            Members {
                states: snapshot
                    .endpoints
                    .into_iter()
                    .map(|(_, s)| Some(s))
                    .collect(),
                endpoints: current.endpoints.clone(),
                counters: current.counters.clone(),
                pick_stats: current.pick_stats.clone(),
                pick_ids: current.pick_ids.clone(),
                generation: current.generation,
            }
        } else if self.discovered {
            let (endpoints, states): (Vec<String>, Vec<Option<EndpointState>>) = snapshot
                .endpoints
                .into_iter()
                .map(|(a, s)| (a, Some(s)))
                .unzip();
            Members::new(&self.name, endpoints, states, current.generation + 1)
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
            Members {
                states,
                endpoints: current.endpoints.clone(),
                counters: current.counters.clone(),
                pick_stats: current.pick_stats.clone(),
                pick_ids: current.pick_ids.clone(),
                generation: current.generation,
            }
        };
        *self.members.borrow_mut() = Rc::new(next);
    }
}
