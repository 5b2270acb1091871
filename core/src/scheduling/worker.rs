//! One Envoy worker's scheduling state and the pick: per pool its view of the members, its
//! round-robin position, its PREFIX_CACHE index and the journal it shares that index through;
//! `pick` assembles the candidates from the published states and the shared counters, runs the
//! configured strategy and counts the pick, atomically across workers.

use super::prefix_share::{PrefixShare, SHARE_PERIOD};
use super::{
    endpoint_id, least_request, random, round_robin, schedule_claiming, AdapterClaims, Candidate,
    Decision, PrefixIndex, Profile, Rng, SchedulingRequest, Strategy, TargetKind,
};
use crate::config::{Config, Criticality, FailureMode};
use crate::host::{Level, Say, SharedStore};
use crate::pool::view::{Members, PoolView};
use crate::shared::Keys;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// What the scheduler needs to know of the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The model after substitution.
    pub target_model: &'a str,
    pub criticality: Criticality,
    /// Raw bytes of the prompt (or messages), for the prefix scorer; empty unless PREFIX_CACHE.
    pub prompt: &'a [u8],
}

/// How an endpoint was chosen, or why none was.
#[derive(Debug)]
pub enum Pick {
    /// Member `index` of `members`; `counted`: in the shared in-flight counts, to release at the
    /// end (`Members::counters`); `fail_open`: chosen without fresh metrics.
    Endpoint {
        members: Rc<Members>,
        index: usize,
        counted: bool,
        fail_open: bool,
    },
    Shed,
    Unavailable,
    /// A discovered pool whose members no collector has published yet: nothing is known.
    MembersUnknown,
}

struct PoolState {
    view: PoolView,
    discovered: bool,
    staleness_ms: u64,
    round_robin: Cell<u64>,
    prefix: Option<(RefCell<PrefixIndex>, PrefixShare, Cell<u64>)>,
}

pub struct WorkerScheduler {
    strategy: Strategy,
    profile: Profile,
    failure_mode: FailureMode,
    pools: Vec<PoolState>,
    rng: RefCell<Rng>,
    last_share_ms: Cell<u64>,
}

impl WorkerScheduler {
    pub fn new(config: &Config, seed: u64) -> WorkerScheduler {
        let mut rng = Rng::new(seed);
        let keys = Keys::new(&config.instance);
        let worker = rng.next_u64();
        let pools = config
            .pools
            .iter()
            .map(|p| PoolState {
                view: PoolView::new(p, &keys),
                discovered: p.discovery.is_some(),
                staleness_ms: p.metrics.staleness_ms,
                // Workers start at different places so the first requests of each do not collide.
                round_robin: Cell::new(rng.below(p.endpoints.len().max(1)) as u64),
                prefix: config.strategy.needs_prefix().then(|| {
                    let ids: Vec<u64> = p.endpoints.iter().map(|e| endpoint_id(e)).collect();
                    (
                        RefCell::new(PrefixIndex::new(&config.profile.prefix, &ids)),
                        PrefixShare::new(keys.journal(&p.name), worker),
                        Cell::new(0),
                    )
                }),
            })
            .collect();
        WorkerScheduler {
            strategy: config.strategy,
            profile: config.profile,
            failure_mode: config.failure_mode,
            pools,
            rng: RefCell::new(rng),
            last_share_ms: Cell::new(0),
        }
    }

    pub fn random(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }

    /// Whether this worker keeps a prefix index that wants `share_prefixes` on a timer.
    pub fn shares_prefixes(&self) -> bool {
        self.pools.iter().any(|p| p.prefix.is_some())
    }

    /// Exchange prefix-index records with the other workers, at most once per `SHARE_PERIOD`.
    pub fn share_prefixes(
        &self,
        store: &(impl SharedStore + ?Sized),
        say: &(impl Say + ?Sized),
        now_ms: u64,
    ) {
        if !self.shares_prefixes()
            || now_ms < self.last_share_ms.get() + SHARE_PERIOD.as_millis() as u64
        {
            return;
        }
        self.last_share_ms.set(now_ms);
        for p in &self.pools {
            if let Some((index, share, _)) = &p.prefix {
                let skipped = share.sync(store, &mut index.borrow_mut());
                if skipped > 0 {
                    say.say(
                        Level::Debug,
                        &format!("prefix journal: {skipped} entries of another format skipped"),
                    );
                }
            }
        }
    }

    /// The current members of `pool` (checking the published snapshot when the strategy needs
    /// metrics or the pool is discovered).
    pub fn members(
        &self,
        store: &(impl SharedStore + ?Sized),
        say: &(impl Say + ?Sized),
        pool: usize,
    ) -> Option<Rc<Members>> {
        let p = self.pools.get(pool)?;
        Some(p.view.members(store, say, self.strategy.needs_metrics()))
    }

    /// Pick an endpoint of `pool` by the configured strategy and count it.
    pub fn pick(
        &self,
        store: &(impl SharedStore + ?Sized),
        say: &(impl Say + ?Sized),
        pool: usize,
        facts: &RequestFacts<'_>,
        now_ms: u64,
    ) -> Pick {
        let Some(p) = self.pools.get(pool) else {
            return Pick::Unavailable;
        };
        let members = p.view.members(store, say, self.strategy.needs_metrics());
        let n = members.endpoints.len();
        if n == 0 && p.discovered && !p.view.has_snapshot() {
            return Pick::MembersUnknown;
        }
        let mut rng = self.rng.borrow_mut();
        let found = |r: Result<(usize, bool), Pick>, counted: bool| match r {
            Ok((index, fail_open)) => Pick::Endpoint {
                members: Rc::clone(&members),
                index,
                counted,
                fail_open,
            },
            Err(p) => p,
        };
        match self.strategy {
            Strategy::RoundRobin => {
                let mut c = p.round_robin.get();
                let i = round_robin(n, &mut c);
                p.round_robin.set(c);
                found(i.map(|i| (i, false)).ok_or(Pick::Unavailable), false)
            }
            Strategy::Random => found(
                random(n, &mut rng)
                    .map(|i| (i, false))
                    .ok_or(Pick::Unavailable),
                false,
            ),
            Strategy::LeastRequest => {
                let r = members.counters.pick(store, |c| {
                    least_request(&c.in_flight, &mut rng)
                        .map(|i| (i, None, false))
                        .ok_or(Pick::Unavailable)
                });
                found(r, true)
            }
            Strategy::Default | Strategy::PrefixCache => {
                let mut hashes = Vec::new();
                if let Some((index, _, seen)) = &p.prefix {
                    // A discovered pool's members changed: the prefix index follows by address.
                    if seen.get() != members.generation {
                        index.borrow_mut().sync_endpoints(&members.ids);
                        seen.set(members.generation);
                    }
                    self.profile
                        .prefix
                        .hash_prompt(facts.target_model, facts.prompt, &mut hashes);
                }
                let request = SchedulingRequest {
                    target_model: facts.target_model,
                    target_kind: TargetKind::Detect,
                    criticality: facts.criticality,
                    failure_mode: self.failure_mode,
                    now_ms,
                    staleness_ms: p.staleness_ms,
                    prefix_hashes: &hashes,
                };
                let index = p.prefix.as_ref().map(|(i, _, _)| i.borrow());
                let picked = members.counters.pick(store, |c| {
                    let candidates: Vec<Candidate> = (0..n)
                        .map(|i| {
                            let state = members.states.get(i).and_then(Option::as_ref);
                            let picks = c.picks.get(i).copied().unwrap_or(0);
                            Candidate {
                                state,
                                picks_since_scrape: state
                                    .map(|s| picks.wrapping_sub(s.picks_at_scrape))
                                    .unwrap_or(0),
                                in_flight: c.in_flight.get(i).copied().unwrap_or(0),
                                claims: c.claims.get(i).map_or(&[], AdapterClaims::as_slice),
                            }
                        })
                        .collect();
                    let (decision, claim) = schedule_claiming(
                        &self.profile,
                        &request,
                        &candidates,
                        index.as_deref(),
                        &mut rng,
                    );
                    match decision {
                        Decision::Pick {
                            endpoint,
                            fail_open,
                        } => Ok((endpoint, claim, fail_open)),
                        Decision::Shed => Err(Pick::Shed),
                        Decision::Unavailable => Err(Pick::Unavailable),
                    }
                });
                drop(index);
                if let (Ok((i, _)), Some((index, _, _))) = (&picked, &p.prefix) {
                    index.borrow_mut().record(*i, &hashes);
                }
                found(picked, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::MemHost;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn facts() -> RequestFacts<'static> {
        RequestFacts {
            target_model: "m",
            criticality: Criticality::Standard,
            prompt: b"",
        }
    }

    #[test]
    fn least_request_spreads_over_two_workers_and_releases_by_address() {
        let cfg = Config::parse(
            br#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80","10.0.0.2:80","10.0.0.3:80"]}],
                 "scheduling":{"strategy":"LEAST_REQUEST"}}"#,
        )
        .unwrap();
        let host = MemHost::default();
        let other = host.sibling();
        let (a, b) = (WorkerScheduler::new(&cfg, 1), WorkerScheduler::new(&cfg, 2));
        let mut picks = Vec::new();
        for i in 0..6 {
            let (w, h) = if i % 2 == 0 {
                (&a, &host)
            } else {
                (&b, &other)
            };
            match w.pick(&*h.store, h, 0, &facts(), 0) {
                Pick::Endpoint {
                    members,
                    index,
                    counted: true,
                    ..
                } => picks.push((members, index)),
                other => panic!("{other:?}"),
            }
        }
        let counts = a
            .members(&*host.store, &host, 0)
            .unwrap()
            .counters
            .load(&*host.store);
        assert_eq!(counts.in_flight, vec![2, 2, 2]);
        for (m, i) in &picks {
            assert!(m.counters.release(&*host.store, *i));
        }
        let counts = b
            .members(&*host.store, &host, 0)
            .unwrap()
            .counters
            .load(&*host.store);
        assert_eq!(counts.in_flight, vec![0, 0, 0]);
    }

    #[test]
    fn no_members_is_unavailable_for_every_strategy() {
        for strategy in [
            "ROUND_ROBIN",
            "RANDOM",
            "LEAST_REQUEST",
            "DEFAULT",
            "PREFIX_CACHE",
        ] {
            let doc = format!(
                r#"{{"pools":[{{"name":"p","endpoints":[]}}],"scheduling":{{"strategy":"{strategy}"}}}}"#
            );
            let cfg = Config::parse(doc.as_bytes()).unwrap();
            let host = MemHost::default();
            let w = WorkerScheduler::new(&cfg, 1);
            assert!(
                matches!(
                    w.pick(&*host.store, &host, 0, &facts(), 0),
                    Pick::Unavailable
                ),
                "{strategy}"
            );
        }
    }
}
