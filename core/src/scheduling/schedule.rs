//! `schedule`: the one call the host makes per request. It runs the profile in two passes over
//! the endpoints and allocates nothing:
//! 1. filters — which endpoints are fresh, whether the pool is saturated, whether the target is a
//!    LoRA adapter some endpoint knows — and the candidates' ranges for the min–max scorers;
//! 2. scoring each candidate and picking the maximum, random tie-break.

use super::claims::{adapter_hash, Claim};
use super::filters::{has_headroom, has_room, has_spare_room, is_fresh, scraped_within};
use super::picker::MaxPicker;
use super::{scorers, PrefixIndex, Profile, Rng, Strategy};
use crate::config::{Criticality, FailureMode};
use crate::pool::EndpointState;
use crate::rollout::mix64;

/// What the target model is, for the LoRA-affinity scorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// The base model: LoRA affinity scores 1 everywhere.
    Base,
    /// A LoRA adapter: scored by where it runs, could load, or waits.
    Adapter,
    /// Not known to the host: an adapter if any endpoint reports it running or waiting, or
    /// reports a base model (`EndpointState::base_model`) of another name; else treated as the
    /// base model (an engine that reports neither gives no slot preference to an adapter nobody
    /// has loaded yet, rather than base-model traffic avoiding endpoints with full slots).
    Detect,
}

/// The request's facts, as the host read them.
#[derive(Debug, Clone, Copy)]
pub struct SchedulingRequest<'a> {
    /// The model after substitution (what the body will name).
    pub target_model: &'a str,
    pub target_kind: TargetKind,
    pub criticality: Criticality,
    pub failure_mode: FailureMode,
    /// Wall-clock ms since the Unix epoch, the clock `last_scrape_ms` uses.
    pub now_ms: u64,
    /// The pool's `metrics.stalenessMs`: older scrapes are not trusted.
    pub staleness_ms: u64,
    /// The prompt's block hashes (`PrefixSettings::hash_prompt`); empty unless PREFIX_CACHE.
    pub prefix_hashes: &'a [u64],
}

/// One endpoint of the pool, in pool order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Candidate<'a> {
    /// Its last published state; None if never scraped.
    pub state: Option<&'a EndpointState>,
    /// Requests sent there since the last scrape (pick counter − `picks_at_scrape`).
    pub picks_since_scrape: u32,
    /// This gateway's requests still open there.
    pub in_flight: u32,
    /// Adapters this worker sent there recently (`AdapterClaims::as_slice`); the live ones count
    /// as queued there for the LoRA-affinity scorer.
    pub claims: &'a [Claim],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Route to endpoint `endpoint`. `fail_open`: no metrics were fresh, chosen by least in-flight.
    Pick { endpoint: usize, fail_open: bool },
    /// Pool saturated and the request Sheddable: 429.
    Shed,
    /// No endpoint can take it (none configured, or no fresh metrics under FailClose): 503.
    Unavailable,
}

/// Per-endpoint scorer values, for debugging and tests. Unweighted, each in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    pub fresh: bool,
    /// Passed the filters: a candidate for the picker.
    pub eligible: bool,
    pub queue: f64,
    pub kv_cache: f64,
    pub lora_affinity: f64,
    pub prefix: f64,
    pub in_flight: f64,
    /// The weighted sum the picker maximises.
    pub total: f64,
}

/// Candidates' min and max of the two min–max scorers' inputs.
#[derive(Debug, Clone, Copy)]
struct Ranges {
    queue: (u64, u64),
    in_flight: (u32, u32),
}

impl Ranges {
    const EMPTY: Ranges = Ranges {
        queue: (u64::MAX, 0),
        in_flight: (u32::MAX, 0),
    };

    fn add(&mut self, q: u64, f: u32) {
        self.queue = (self.queue.0.min(q), self.queue.1.max(q));
        self.in_flight = (self.in_flight.0.min(f), self.in_flight.1.max(f));
    }
}

/// Whether an endpoint can take the request: without flow control, headroom (scraped queue and
/// KV within the thresholds); with it, the room flow control dispatched it into.
fn room_for(profile: &Profile, criticality: Criticality, s: &EndpointState, queue: u64) -> bool {
    let t = &profile.saturation;
    match (t.flow_control, criticality) {
        (false, _) => has_headroom(s, t),
        (true, Criticality::Sheddable) => has_spare_room(s, queue, t),
        (true, _) => has_room(queue, t),
    }
}

/// What the filters found and the candidates' ranges: everything scoring needs besides one
/// endpoint's own numbers.
struct Pass<'a> {
    profile: &'a Profile,
    req: &'a SchedulingRequest<'a>,
    prefix: Option<&'a PrefixIndex>,
    any_fresh: bool,
    /// Most of the pool's recently scraped endpoints are failing at once: a pool-wide metrics
    /// outage, not pods going bad one by one. Their last numbers within staleness are trusted, so
    /// the first endpoint to recover does not take every request.
    outage: bool,
    saturated: bool,
    /// Sheddable with a pool not saturated: only endpoints with headroom take it.
    headroom_only: bool,
    /// The target as a LoRA adapter: name and `adapter_hash`.
    adapter: Option<(&'a str, u32)>,
    ranges: Ranges,
}

impl<'a> Pass<'a> {
    /// One pass over the endpoints: freshness, headroom, adapter detection, and the ranges over
    /// both possible candidate sets (all fresh; fresh with headroom), since which one applies is
    /// known only at the end.
    fn new(
        profile: &'a Profile,
        req: &'a SchedulingRequest<'a>,
        endpoints: &[Candidate<'_>],
        prefix: Option<&'a PrefixIndex>,
    ) -> Pass<'a> {
        let (mut any_fresh, mut any_headroom) = (false, false);
        let (mut recent, mut strict) = (0usize, 0usize);
        for s in endpoints.iter().filter_map(|c| c.state) {
            recent += usize::from(scraped_within(s, req.now_ms, req.staleness_ms));
            strict += usize::from(is_fresh(Some(s), req.now_ms, req.staleness_ms));
        }
        let outage = strict * 2 < recent;
        let fresh = |s: &EndpointState| {
            if outage {
                scraped_within(s, req.now_ms, req.staleness_ms)
            } else {
                is_fresh(Some(s), req.now_ms, req.staleness_ms)
            }
        };
        let mut adapter_known = req.target_kind != TargetKind::Detect;
        let hash = adapter_hash(req.target_model);
        let (mut fresh_ranges, mut room_ranges) = (Ranges::EMPTY, Ranges::EMPTY);
        for c in endpoints {
            let Some(s) = c.state else { continue };
            if !adapter_known {
                // Naming the served base model otherwise: the engine can only serve it as an
                // adapter. This is what tells adapters apart before any is loaded (a fresh pool's
                // first burst), when no engine lists one yet.
                adapter_known = (s.base_model != 0 && s.base_model != hash)
                    || scorers::knows_adapter(s, req.target_model);
            }
            if !fresh(s) {
                continue;
            }
            any_fresh = true;
            let q = scorers::effective_queue(s, c.picks_since_scrape, c.in_flight);
            fresh_ranges.add(q, c.in_flight);
            let room = room_for(profile, req.criticality, s, q);
            if room {
                any_headroom = true;
                room_ranges.add(q, c.in_flight);
            }
        }
        let adapter = match req.target_kind {
            TargetKind::Base => None,
            TargetKind::Adapter => Some(req.target_model),
            TargetKind::Detect => adapter_known.then_some(req.target_model),
        }
        .map(|a| (a, hash));
        let saturated = any_fresh && !any_headroom;
        // Flow control let the request go because some endpoint has room: it goes to one.
        let headroom_only = (profile.saturation.flow_control
            || req.criticality == Criticality::Sheddable)
            && !saturated;
        Pass {
            profile,
            req,
            prefix: if profile.strategy.needs_prefix() {
                prefix
            } else {
                None
            },
            any_fresh,
            outage,
            saturated,
            headroom_only,
            adapter,
            ranges: if headroom_only {
                room_ranges
            } else {
                fresh_ranges
            },
        }
    }

    /// The endpoint's state if it passes the filters.
    fn eligible<'s>(&self, c: &Candidate<'s>) -> Option<&'s EndpointState> {
        let s = c.state?;
        let fresh = if self.outage {
            scraped_within(s, self.req.now_ms, self.req.staleness_ms)
        } else {
            is_fresh(Some(s), self.req.now_ms, self.req.staleness_ms)
        };
        let room = !self.headroom_only || {
            let q = scorers::effective_queue(s, c.picks_since_scrape, c.in_flight);
            room_for(self.profile, self.req.criticality, s, q)
        };
        (fresh && room).then_some(s)
    }

    /// `guess`: the previous endpoint's matched blocks, updated (see `matched_blocks_near`).
    fn score(&self, i: usize, c: &Candidate<'_>, s: &EndpointState, guess: &mut usize) -> Scores {
        let w = &self.profile.weights;
        let r = &self.ranges;
        // Differences below the saturation queue depth are not decisive on their own.
        let floor = u64::from(self.profile.saturation.queue_depth);
        let queue = scorers::queue(
            s,
            c.picks_since_scrape,
            c.in_flight,
            r.queue.0,
            r.queue.1,
            floor,
        );
        let kv_cache = scorers::kv_cache(s);
        let lora_affinity = if w.lora_affinity > 0.0 {
            scorers::lora_affinity(s, self.adapter, c.claims)
        } else {
            0.0
        };
        let in_flight = scorers::in_flight(c.in_flight, r.in_flight.0, r.in_flight.1, floor);
        let hashes = self.req.prefix_hashes;
        let prefix = match self.prefix {
            Some(index) if w.prefix > 0.0 && !hashes.is_empty() => {
                let blocks = hashes.len().min(self.profile.prefix.max_blocks);
                *guess = index.matched_blocks_near(i, hashes, *guess);
                scorers::prefix(*guess, blocks)
            }
            _ => 0.0,
        };
        let total = w.queue * queue
            + w.kv_cache * kv_cache
            + w.lora_affinity * lora_affinity
            + w.in_flight * in_flight
            + w.prefix * prefix;
        Scores {
            fresh: true,
            eligible: true,
            queue,
            kv_cache,
            lora_affinity,
            prefix,
            in_flight,
            total,
        }
    }
}

/// Least in-flight among all endpoints, random tie-break.
fn least_in_flight(endpoints: &[Candidate<'_>], rng: &mut Rng, fail_open: bool) -> Decision {
    let mut p = MaxPicker::new();
    for (i, c) in endpoints.iter().enumerate() {
        p.offer(i, -f64::from(c.in_flight), rng);
    }
    match p.best() {
        Some(endpoint) => Decision::Pick {
            endpoint,
            fail_open,
        },
        None => Decision::Unavailable,
    }
}

/// Choose an endpoint for one request. `endpoints` are the pool's, in order (the returned index
/// is into it); `prefix` is the pool's index (used by PREFIX_CACHE only). After a `Pick` the host
/// increments that endpoint's pick and in-flight counters and, under PREFIX_CACHE, calls
/// `PrefixIndex::record(endpoint, prefix_hashes)`.
///
/// - No endpoint fresh: FailOpen picks the least in-flight of all (`fail_open: true`); FailClose
///   is `Unavailable`.
/// - Stale endpoints are dropped while any is fresh.
/// - Saturated (no fresh endpoint with headroom): Sheddable is `Shed`; others go to the best.
///   Not saturated: Sheddable only goes to endpoints with headroom.
///
/// ROUND_ROBIN, RANDOM and LEAST_REQUEST have their own pickers; given here, LEAST_REQUEST picks
/// the least in-flight and the other two pick at random (round robin needs the host's counter).
pub fn schedule(
    profile: &Profile,
    request: &SchedulingRequest<'_>,
    endpoints: &[Candidate<'_>],
    prefix: Option<&PrefixIndex>,
    rng: &mut Rng,
) -> Decision {
    schedule_claiming(profile, request, endpoints, prefix, rng).0
}

/// `schedule`, and the adapter the request claims if it was scored as one (its `adapter_hash`):
/// after a `Pick` the host records it with the pick number in that endpoint's `AdapterClaims`.
/// None for the base model, for an unknown target (`TargetKind::Detect` found no endpoint with
/// it) and for the strategies without the LoRA-affinity scorer.
pub fn schedule_claiming(
    profile: &Profile,
    request: &SchedulingRequest<'_>,
    endpoints: &[Candidate<'_>],
    prefix: Option<&PrefixIndex>,
    rng: &mut Rng,
) -> (Decision, Option<u32>) {
    if endpoints.is_empty() {
        return (Decision::Unavailable, None);
    }
    match profile.strategy {
        Strategy::LeastRequest => return (least_in_flight(endpoints, rng, false), None),
        Strategy::RoundRobin | Strategy::Random => {
            let pick = Decision::Pick {
                endpoint: rng.below(endpoints.len()),
                fail_open: false,
            };
            return (pick, None);
        }
        Strategy::Default | Strategy::PrefixCache => {}
    }
    let pass = Pass::new(profile, request, endpoints, prefix);
    let claim = pass
        .adapter
        .filter(|_| profile.weights.lora_affinity > 0.0)
        .map(|(_, h)| h);
    if !pass.any_fresh {
        return match request.failure_mode {
            FailureMode::FailOpen => (least_in_flight(endpoints, rng, true), claim),
            FailureMode::FailClose => (Decision::Unavailable, None),
        };
    }
    // With flow control the queue sheds (a full band, a wait past its TTL), not the pick.
    if pass.saturated
        && request.criticality == Criticality::Sheddable
        && !profile.saturation.flow_control
    {
        return (Decision::Shed, None);
    }
    let mut picker = MaxPicker::new();
    let mut guess = 0;
    // PREFIX_CACHE breaks ties by the prompt's first block: every worker then sends the first
    // requests of a new prefix to the same endpoint, before they have shared what they learned.
    let tie_key = match (pass.prefix, request.prefix_hashes.first()) {
        (Some(_), Some(&first)) => Some(first),
        _ => None,
    };
    for (i, c) in endpoints.iter().enumerate() {
        if let Some(s) = pass.eligible(c) {
            let total = pass.score(i, c, s, &mut guess).total;
            match tie_key {
                Some(k) => picker.offer_keyed(
                    i,
                    total,
                    mix64(k ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                ),
                None => picker.offer(i, total, rng),
            }
        }
    }
    match picker.best() {
        Some(endpoint) => (
            Decision::Pick {
                endpoint,
                fail_open: false,
            },
            claim,
        ),
        None => (Decision::Unavailable, None),
    }
}

/// The scorer values `schedule` would use, one per endpoint (into `out`, cleared first). Endpoints
/// that fail the filters are listed with `eligible: false` and zero scores.
pub fn explain(
    profile: &Profile,
    request: &SchedulingRequest<'_>,
    endpoints: &[Candidate<'_>],
    prefix: Option<&PrefixIndex>,
    out: &mut Vec<Scores>,
) {
    out.clear();
    let pass = Pass::new(profile, request, endpoints, prefix);
    let mut guess = 0;
    out.extend(endpoints.iter().enumerate().map(|(i, c)| {
        let fresh = is_fresh(c.state, request.now_ms, request.staleness_ms);
        match pass.eligible(c) {
            Some(s) => pass.score(i, c, s, &mut guess),
            None => Scores {
                fresh,
                ..Default::default()
            },
        }
    }));
}
