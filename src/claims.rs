//! This worker's adapter claims per pool endpoint (`router_core::scheduling::claims`): the LoRA
//! adapters it sent to each endpoint since that endpoint's last scrape, which the LoRA-affinity
//! scorer counts as queued there. Per worker rather than in shared data: Envoy runs few workers,
//! each of which sees its own share of a burst, and sharing would cost a shared-data read and
//! compare-and-swap write per pick on top of the counters'. A fixed array per endpoint, kept
//! across requests: no allocation per pick.

use crate::pool_view::Members;
use router_core::scheduling::AdapterClaims;
use std::cell::{Ref, RefCell};

#[derive(Default)]
pub struct PoolClaims {
    /// The member-list generation and length the claims are indexed by.
    members: RefCell<(u64, Vec<AdapterClaims>)>,
}

impl PoolClaims {
    /// The claims of `members`' endpoints, in their order; emptied when the member list changed.
    pub fn current(&self, members: &Members) -> Ref<'_, Vec<AdapterClaims>> {
        {
            let mut m = self.members.borrow_mut();
            if m.0 != members.generation || m.1.len() != members.endpoints.len() {
                *m = (
                    members.generation,
                    vec![AdapterClaims::default(); members.endpoints.len()],
                );
            }
        }
        Ref::map(self.members.borrow(), |m| &m.1)
    }

    /// Adapter `adapter` went to endpoint `i` as its pick number `pick`.
    pub fn record(&self, i: usize, adapter: u64, pick: u32) {
        if let Some(c) = self.members.borrow_mut().1.get_mut(i) {
            c.record(adapter, pick);
        }
    }
}
