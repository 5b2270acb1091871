//! The collector's bookkeeping, free of host calls: which endpoint is due for a scrape, at most one
//! scrape in flight per endpoint, what a good or failed scrape changes, and when a pool's
//! snapshot must be published again. The host layer dispatches the HTTP calls and publishes.

use crate::config::Config;
use crate::pool::EndpointState;
use crate::shared::{encode, Snapshot};

#[derive(Debug, Clone)]
struct Slot {
    in_flight: bool,
    next_due_ms: u64,
}

#[derive(Debug, Clone)]
struct PoolScrapes {
    interval_ms: u64,
    slots: Vec<Slot>,
    snapshot: Snapshot,
    dirty: bool,
}

/// One scrape to start: pool index, endpoint index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub pool: usize,
    pub endpoint: usize,
}

#[derive(Debug, Clone)]
pub struct CollectorState {
    pools: Vec<PoolScrapes>,
}

impl CollectorState {
    pub fn new(config: &Config) -> CollectorState {
        let pools = config
            .pools
            .iter()
            .map(|p| PoolScrapes {
                interval_ms: p.metrics.interval_ms,
                slots: vec![
                    Slot {
                        in_flight: false,
                        next_due_ms: 0
                    };
                    p.endpoints.len()
                ],
                snapshot: Snapshot {
                    version: 0,
                    generation: 1,
                    endpoints: p
                        .endpoints
                        .iter()
                        .map(|e| (e.clone(), EndpointState::default()))
                        .collect(),
                },
                dirty: true,
            })
            .collect();
        CollectorState { pools }
    }

    /// Carry on from a snapshot another collector published (a lease changed hands): keep what is
    /// known of endpoints that are still configured, and continue its version numbers.
    pub fn adopt(&mut self, pool: usize, previous: &Snapshot) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        p.snapshot.version = p.snapshot.version.max(previous.version);
        let same_members = p.snapshot.endpoints.len() == previous.endpoints.len()
            && p.snapshot
                .endpoints
                .iter()
                .zip(&previous.endpoints)
                .all(|((a, _), (b, _))| a == b);
        // A different list must never be published under the generation of another.
        p.snapshot.generation =
            p.snapshot.generation.max(previous.generation) + u64::from(!same_members);
        for (addr, state) in p.snapshot.endpoints.iter_mut() {
            if let Some((_, old)) = previous.endpoints.iter().find(|(a, _)| a == addr) {
                *state = old.clone();
            }
        }
    }

    /// Replace `pool`'s members (discovery). Endpoints that stay keep their state and schedule;
    /// new ones are due at once. Returns whether the membership changed.
    pub fn set_endpoints(&mut self, pool: usize, endpoints: &[String]) -> bool {
        let Some(p) = self.pools.get_mut(pool) else {
            return false;
        };
        let same = p.snapshot.endpoints.len() == endpoints.len()
            && p.snapshot
                .endpoints
                .iter()
                .zip(endpoints)
                .all(|((a, _), b)| a == b);
        if same {
            return false;
        }
        let mut slots = Vec::with_capacity(endpoints.len());
        let mut states = Vec::with_capacity(endpoints.len());
        for addr in endpoints {
            let old = p.snapshot.endpoints.iter().position(|(a, _)| a == addr);
            match old {
                Some(i) => {
                    slots.push(p.slots.get(i).cloned().unwrap_or(Slot {
                        in_flight: false,
                        next_due_ms: 0,
                    }));
                    states.push(
                        p.snapshot
                            .endpoints
                            .get(i)
                            .map(|(_, s)| s.clone())
                            .unwrap_or_default(),
                    );
                }
                None => {
                    slots.push(Slot {
                        in_flight: false,
                        next_due_ms: 0,
                    });
                    states.push(EndpointState::default());
                }
            }
        }
        p.slots = slots;
        p.snapshot.endpoints = endpoints.iter().cloned().zip(states).collect();
        p.snapshot.generation += 1;
        p.dirty = true;
        true
    }

    /// Scrapes to start now; each is marked in flight until `succeeded` or `failed` is called.
    pub fn due(&mut self, now_ms: u64) -> Vec<Due> {
        let mut out = Vec::new();
        for (pool, p) in self.pools.iter_mut().enumerate() {
            for (endpoint, slot) in p.slots.iter_mut().enumerate() {
                if !slot.in_flight && now_ms >= slot.next_due_ms {
                    slot.in_flight = true;
                    slot.next_due_ms = now_ms + p.interval_ms;
                    out.push(Due { pool, endpoint });
                }
            }
        }
        out
    }

    /// A scrape could not be started (the host refused the call): try again next interval.
    pub fn not_started(&mut self, due: Due, now_ms: u64) {
        self.failed(due, now_ms);
    }

    /// A good scrape: `scraped` holds the engine's numbers; `picks_now` the filter's pick counter.
    pub fn succeeded(&mut self, due: Due, mut scraped: EndpointState, now_ms: u64, picks_now: u32) {
        let Some(p) = self.pools.get_mut(due.pool) else {
            return;
        };
        if let Some(slot) = p.slots.get_mut(due.endpoint) {
            slot.in_flight = false;
        }
        if let Some((_, state)) = p.snapshot.endpoints.get_mut(due.endpoint) {
            scraped.last_scrape_ms = now_ms;
            scraped.consecutive_failures = 0;
            scraped.picks_at_scrape = picks_now;
            *state = scraped;
            p.dirty = true;
        }
    }

    /// A failed scrape (error status, timeout, unparsable page). The last good numbers stay, aging
    /// toward staleness; the failure count tells the scheduler not to trust them.
    pub fn failed(&mut self, due: Due, _now_ms: u64) {
        let Some(p) = self.pools.get_mut(due.pool) else {
            return;
        };
        if let Some(slot) = p.slots.get_mut(due.endpoint) {
            slot.in_flight = false;
        }
        if let Some((_, state)) = p.snapshot.endpoints.get_mut(due.endpoint) {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            p.dirty = true;
        }
    }

    /// The endpoint's failed scrapes since its last good one.
    pub fn failures(&self, due: Due) -> u32 {
        self.pools
            .get(due.pool)
            .and_then(|p| p.snapshot.endpoints.get(due.endpoint))
            .map_or(0, |(_, s)| s.consecutive_failures)
    }

    /// Whether any scrape of `pool` is still in flight.
    pub fn busy(&self, pool: usize) -> bool {
        self.pools
            .get(pool)
            .is_some_and(|p| p.slots.iter().any(|s| s.in_flight))
    }

    /// The encoded snapshot of `pool` with a new version, if anything changed since the last one.
    pub fn publish(&mut self, pool: usize) -> Option<(u64, Vec<u8>)> {
        let p = self.pools.get_mut(pool)?;
        if !p.dirty {
            return None;
        }
        p.dirty = false;
        p.snapshot.version += 1;
        Some((p.snapshot.version, encode(&p.snapshot)))
    }

    pub fn snapshot(&self, pool: usize) -> Option<&Snapshot> {
        self.pools.get(pool).map(|p| &p.snapshot)
    }

    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config() -> Config {
        Config::parse(
            br#"{"pools":[{"name":"p","endpoints":["127.0.0.11:8000","127.0.0.12:8000"],
                 "metrics":{"intervalMs":100}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn one_scrape_in_flight_per_endpoint_and_one_per_interval() {
        let mut c = CollectorState::new(&config());
        assert_eq!(c.due(1000).len(), 2);
        // In flight: nothing more, however late.
        assert!(c.due(5000).is_empty());
        let d = Due {
            pool: 0,
            endpoint: 0,
        };
        c.succeeded(d, EndpointState::default(), 1010, 0);
        // Due again only a full interval after it was started.
        assert!(c.due(1050).is_empty());
        assert_eq!(c.due(1100), vec![d]);
    }

    #[test]
    fn success_and_failure_update_the_snapshot_and_version() {
        let mut c = CollectorState::new(&config());
        let d = Due {
            pool: 0,
            endpoint: 1,
        };
        c.due(0);
        let scraped = EndpointState {
            waiting: 4,
            ..EndpointState::default()
        };
        c.succeeded(d, scraped, 500, 17);
        let (v1, _) = c.publish(0).unwrap();
        assert!(c.publish(0).is_none(), "nothing changed");
        let s = &c.snapshot(0).unwrap().endpoints[1].1;
        assert_eq!(
            (s.waiting, s.last_scrape_ms, s.picks_at_scrape),
            (4, 500, 17)
        );
        c.due(1000);
        c.failed(d, 1000);
        let (v2, bytes) = c.publish(0).unwrap();
        assert!(v2 > v1);
        let s = &crate::shared::decode(&bytes).unwrap().endpoints[1].1;
        assert_eq!(
            (s.waiting, s.consecutive_failures, s.last_scrape_ms),
            (4, 1, 500)
        );
    }

    #[test]
    fn adopting_a_previous_snapshot_continues_versions_and_state() {
        let mut old = CollectorState::new(&config());
        old.due(0);
        old.succeeded(
            Due {
                pool: 0,
                endpoint: 0,
            },
            EndpointState {
                running: 9,
                ..Default::default()
            },
            10,
            0,
        );
        old.publish(0);
        old.publish(0);
        let prev = old.snapshot(0).unwrap().clone();
        let mut new = CollectorState::new(&config());
        new.adopt(0, &prev);
        let (v, bytes) = new.publish(0).unwrap();
        assert!(v > prev.version);
        assert_eq!(
            crate::shared::decode(&bytes).unwrap().endpoints[0]
                .1
                .running,
            9
        );
    }

    #[test]
    fn discovered_members_keep_their_state_and_new_ones_are_due() {
        let mut c = CollectorState::new(&config());
        c.due(0);
        c.succeeded(
            Due {
                pool: 0,
                endpoint: 1,
            },
            EndpointState {
                waiting: 7,
                ..Default::default()
            },
            5,
            0,
        );
        let members = vec!["127.0.0.12:8000".to_string(), "127.0.0.13:8000".to_string()];
        assert!(c.set_endpoints(0, &members));
        assert!(!c.set_endpoints(0, &members));
        let s = c.snapshot(0).unwrap();
        assert_eq!(
            s.endpoints[0],
            (
                "127.0.0.12:8000".to_string(),
                EndpointState {
                    waiting: 7,
                    last_scrape_ms: 5,
                    ..Default::default()
                }
            )
        );
        assert_eq!(s.endpoints[1].1, EndpointState::default());
        // The new member is due now; the kept one is on its old schedule.
        assert_eq!(
            c.due(10),
            vec![Due {
                pool: 0,
                endpoint: 1
            }]
        );
    }
}
