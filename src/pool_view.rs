//! A worker's view of each pool's published snapshot. The filter checks the small version key per
//! request and decodes the snapshot only when the collector has published a new one.

use crate::collector::{snapshot_key, version_key};
use proxy_wasm::hostcalls;
use router_core::pool::{self, EndpointState};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Endpoint states in the order of the configured endpoint list; None = never published.
pub type States = Rc<Vec<Option<EndpointState>>>;

pub struct PoolView {
    snapshot_key: String,
    version_key: String,
    version: Cell<Option<u64>>,
    states: RefCell<States>,
}

impl PoolView {
    pub fn new(pool: &str, endpoints: usize) -> PoolView {
        PoolView {
            snapshot_key: snapshot_key(pool),
            version_key: version_key(pool),
            version: Cell::new(None),
            states: RefCell::new(Rc::new(vec![None; endpoints])),
        }
    }

    /// The current states, refreshed if the collector published since the last call.
    pub fn states(&self, endpoints: &[String]) -> States {
        let published = hostcalls::get_shared_data(&self.version_key)
            .ok()
            .and_then(|(b, _)| b)
            .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)));
        if published.is_some() && published != self.version.get() {
            self.refresh(endpoints);
        }
        Rc::clone(&self.states.borrow())
    }

    fn refresh(&self, endpoints: &[String]) {
        let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&self.snapshot_key) else {
            return;
        };
        match pool::decode(&bytes) {
            Ok(snapshot) => {
                // Match by address: the collector may list endpoints in another order or set.
                let mut states = vec![None; endpoints.len()];
                for (addr, state) in snapshot.endpoints {
                    if let Some(i) = endpoints.iter().position(|e| *e == addr) {
                        if let Some(slot) = states.get_mut(i) {
                            *slot = Some(state);
                        }
                    }
                }
                self.version.set(Some(snapshot.version));
                *self.states.borrow_mut() = Rc::new(states);
            }
            Err(e) => log::warn!("snapshot {} unreadable: {e:?}", self.snapshot_key),
        }
    }
}
