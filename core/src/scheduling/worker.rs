//! One Envoy worker's scheduling state and the pick: per pool its view of the members, its
//! round-robin position, its PREFIX_CACHE index and the journal it shares that index through;
//! `pick` assembles the candidates from the published states and the shared counters, runs the
//! configured strategy and counts the pick, atomically across workers.

use super::prefix_share::{PrefixShare, SHARE_PERIOD};
use super::scorers::effective_queue;
use super::{
    endpoint_id, has_room, has_spare_room, is_fresh, least_request, random, round_robin,
    schedule_claiming, AdapterClaims, Candidate, Decision, PrefixIndex, Profile, Rng,
    SchedulingRequest, Strategy, TargetKind,
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

/// Whether a pool can take one more request now, for flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// A fresh endpoint has headroom counting this gateway's picks since its scrape.
    Yes,
    /// Fresh endpoints, none with headroom: saturated.
    Full,
    /// The pool has no endpoints (the scale-from-zero waiting room).
    NoEndpoints,
    /// Nothing fresh is known (no metrics, a metrics outage, members not yet discovered): the
    /// pick's own failure handling (`failureMode`) decides, as without flow control.
    Unknown,
}

/// A pool's room and its saturation: the average over fresh endpoints of
/// max(queue / queueDepth, KV use / kvCacheUsage), queue counting this gateway's open picks
/// since the scrape (≥ 1: no endpoint has headroom on average).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolLoad {
    pub room: Room,
    pub saturation: Option<f64>,
    /// Requests the pool takes before it is full again: over endpoints with room,
    /// queueDepth + 1 − queue (0 unless `room` is Yes).
    pub slots: u64,
    /// The same for Sheddable requests: over endpoints whose KV cache is within the threshold too.
    pub spare_slots: u64,
}

impl PoolLoad {
    /// The room for a request of `priority`: below zero (Sheddable) only capacity to spare.
    pub fn room_for(&self, priority: i32) -> (Room, u64) {
        let slots = if priority < 0 {
            self.spare_slots
        } else {
            self.slots
        };
        match self.room {
            Room::Yes | Room::Full if slots > 0 => (Room::Yes, slots),
            Room::Yes | Room::Full => (Room::Full, 0),
            other => (other, 0),
        }
    }
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

    /// How loaded `pool` is now: the published states plus the picks every worker made since
    /// each endpoint's scrape (the shared counters), so workers holding requests see each
    /// other's dispatches at once.
    pub fn load(
        &self,
        store: &(impl SharedStore + ?Sized),
        say: &(impl Say + ?Sized),
        pool: usize,
        now_ms: u64,
    ) -> PoolLoad {
        let unknown = PoolLoad {
            room: Room::Unknown,
            saturation: None,
            slots: 0,
            spare_slots: 0,
        };
        let Some(p) = self.pools.get(pool) else {
            return unknown;
        };
        let members = p.view.members(store, say, self.strategy.needs_metrics());
        if members.endpoints.is_empty() {
            if p.discovered && !p.view.has_snapshot() {
                return unknown;
            }
            return PoolLoad {
                room: Room::NoEndpoints,
                saturation: None,
                slots: 0,
                spare_slots: 0,
            };
        }
        let counts = members.counters.load(store);
        let t = &self.profile.saturation;
        let (mut fresh, mut sum, mut slots, mut spare_slots) = (0u32, 0.0f64, 0u64, 0u64);
        for (i, state) in members.states.iter().enumerate() {
            let Some(s) = state.as_ref() else { continue };
            if !is_fresh(Some(s), now_ms, p.staleness_ms) {
                continue;
            }
            let picks = counts.picks.get(i).copied().unwrap_or(0);
            let in_flight = counts.in_flight.get(i).copied().unwrap_or(0);
            let queue = effective_queue(s, picks.wrapping_sub(s.picks_at_scrape), in_flight);
            let kv = if s.kv_cache_usage.is_finite() {
                f64::from(s.kv_cache_usage)
            } else {
                1.0
            };
            fresh += 1;
            sum += (queue as f64 / f64::from(t.queue_depth.max(1)))
                .max(kv / f64::from(t.kv_cache_usage).max(0.01));
            if has_room(queue, t) {
                slots += u64::from(t.queue_depth) + 1 - queue;
            }
            if has_spare_room(s, queue, t) {
                spare_slots += u64::from(t.queue_depth) + 1 - queue;
            }
        }
        if fresh == 0 {
            return unknown;
        }
        PoolLoad {
            room: if slots > 0 { Room::Yes } else { Room::Full },
            saturation: Some(sum / f64::from(fresh)),
            slots,
            spare_slots,
        }
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

    #[test]
    fn load_counts_picks_since_the_scrape_and_no_fresh_metrics_is_unknown() {
        use crate::pool::EndpointState;
        use crate::shared::{encode, encode_version, Keys, Snapshot};
        let cfg =
            Config::parse(br#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80","10.0.0.2:80"]}]}"#)
                .unwrap();
        let host = MemHost::default();
        let w = WorkerScheduler::new(&cfg, 1);
        assert_eq!(w.load(&*host.store, &host, 0, 1_000).room, Room::Unknown);
        let keys = Keys::new(&cfg.instance);
        let publish = |waiting: [u32; 2], kv: f32, version: u64| {
            let state = |w| EndpointState {
                waiting: w,
                kv_cache_usage: kv,
                last_scrape_ms: 1_000,
                ..EndpointState::default()
            };
            let s = Snapshot {
                version,
                generation: 0,
                endpoints: vec![
                    ("10.0.0.1:80".to_string(), state(waiting[0])),
                    ("10.0.0.2:80".to_string(), state(waiting[1])),
                ],
            };
            host.store.put(&keys.snapshot("p"), &encode(&s));
            host.store.put(&keys.version("p"), &encode_version(version));
        };
        publish([10, 0], 0.1, 1);
        let load = w.load(&*host.store, &host, 0, 1_000);
        assert_eq!(load.room, Room::Yes);
        assert_eq!(
            load.slots, 6,
            "the idle endpoint takes six, the busy one none"
        );
        // (10/5 + 0.1/0.8) / 2
        assert!((load.saturation.unwrap() - 1.0625).abs() < 1e-6);
        // Six open picks since the scrape fill the idle endpoint's headroom (queue depth 5).
        for _ in 0..6 {
            assert!(matches!(
                w.pick(&*host.store, &host, 0, &facts(), 1_000),
                Pick::Endpoint { index: 1, .. }
            ));
        }
        assert_eq!(w.load(&*host.store, &host, 0, 1_000).room, Room::Full);
        publish([0, 6], 0.9, 2);
        assert_eq!(
            w.load(&*host.store, &host, 0, 1_000).room,
            Room::Yes,
            "a full cache with a short queue has room"
        );
        publish([6, 6], 0.1, 3);
        assert_eq!(w.load(&*host.store, &host, 0, 1_000).room, Room::Full);
        assert_eq!(
            w.load(&*host.store, &host, 0, 60_000).room,
            Room::Unknown,
            "stale"
        );
    }
}
