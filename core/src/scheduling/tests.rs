//! Profile-level tests: `schedule` end to end over made-up pools.

use super::*;
use crate::config::{Criticality, FailureMode};
use crate::pool::EndpointState;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const NOW: u64 = 1_000_000;
const STALENESS: u64 = 2_000;

fn pod(waiting: u32, kv: f32) -> EndpointState {
    EndpointState {
        waiting,
        kv_cache_usage: kv,
        max_lora: Some(4),
        last_scrape_ms: NOW - 50,
        ..Default::default()
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn request(model: &str) -> SchedulingRequest<'_> {
    SchedulingRequest {
        target_model: model,
        target_kind: TargetKind::Detect,
        criticality: Criticality::Standard,
        failure_mode: FailureMode::FailOpen,
        now_ms: NOW,
        staleness_ms: STALENESS,
        prefix_hashes: &[],
    }
}

fn candidates(states: &[EndpointState]) -> Vec<Candidate<'_>> {
    states
        .iter()
        .map(|s| Candidate {
            state: Some(s),
            ..Default::default()
        })
        .collect()
}

/// How often each endpoint is picked over `n` independent decisions (no counters move).
fn histogram(
    profile: &Profile,
    req: &SchedulingRequest<'_>,
    c: &[Candidate<'_>],
    n: usize,
) -> Vec<usize> {
    let mut rng = Rng::new(11);
    let mut seen = vec![0; c.len()];
    for _ in 0..n {
        if let Decision::Pick { endpoint, .. } = schedule(profile, req, c, None, &mut rng) {
            seen[endpoint] += 1;
        }
    }
    seen
}

fn pick(states: &[EndpointState], req: &SchedulingRequest<'_>) -> Decision {
    schedule(
        &Profile::default(),
        req,
        &candidates(states),
        None,
        &mut Rng::new(1),
    )
}

#[test]
fn strategies_parse_and_say_what_they_need() {
    assert_eq!(Strategy::parse("DEFAULT"), Ok(Strategy::Default));
    assert_eq!(Strategy::parse("PREFIX_CACHE"), Ok(Strategy::PrefixCache));
    let e = Strategy::parse("FASTEST").unwrap_err();
    assert!(
        e.contains("DEFAULT, PREFIX_CACHE, LEAST_REQUEST, ROUND_ROBIN, RANDOM"),
        "{e}"
    );
    for s in [
        Strategy::LeastRequest,
        Strategy::Default,
        Strategy::PrefixCache,
    ] {
        assert!(s.needs_in_flight());
    }
    assert!(!Strategy::RoundRobin.needs_in_flight() && !Strategy::Random.needs_in_flight());
    assert!(Strategy::PrefixCache.needs_prefix() && !Strategy::Default.needs_prefix());
    assert!(Strategy::Default.needs_metrics() && !Strategy::LeastRequest.needs_metrics());
}

#[test]
fn no_endpoints_is_unavailable() {
    assert_eq!(pick(&[], &request("m")), Decision::Unavailable);
}

#[test]
fn a_long_queue_is_avoided() {
    let states = [pod(10, 0.3), pod(0, 0.3), pod(3, 0.3)];
    assert_eq!(
        pick(&states, &request("m")),
        Decision::Pick {
            endpoint: 1,
            fail_open: false
        }
    );
    // Picks since the scrape that are still open count as queue: endpoint 1 has 12 of ours there.
    let mut c = candidates(&states);
    c[1].picks_since_scrape = 12;
    c[1].in_flight = 12;
    let seen = histogram(&Profile::default(), &request("m"), &c, 100);
    assert_eq!(seen, [0, 0, 100]);
    // Once they have finished they are no load any more.
    c[1].in_flight = 0;
    let seen = histogram(&Profile::default(), &request("m"), &c, 100);
    assert_eq!(seen, [0, 100, 0]);
}

#[test]
fn a_nearly_full_kv_cache_is_avoided() {
    let states = [pod(2, 0.95), pod(2, 0.2), pod(2, 0.9)];
    assert_eq!(
        pick(&states, &request("m")),
        Decision::Pick {
            endpoint: 1,
            fail_open: false
        }
    );
}

#[test]
fn adapter_affinity_wins_at_equal_load() {
    let mut states = vec![pod(1, 0.4); 4];
    states[2].running_adapters = names(&["sql-lora"]);
    let seen = histogram(
        &Profile::default(),
        &request("sql-lora"),
        &candidates(&states),
        200,
    );
    assert_eq!(seen, [0, 0, 200, 0]);
    // A request for the base model has no preference: spread over all four.
    let base = SchedulingRequest {
        target_kind: TargetKind::Base,
        ..request("sql-lora")
    };
    let seen = histogram(&Profile::default(), &base, &candidates(&states), 400);
    assert!(seen.iter().all(|&s| s > 60), "{seen:?}");
    // Detect: a model no endpoint lists is the base model.
    let seen = histogram(
        &Profile::default(),
        &request("llama"),
        &candidates(&states),
        400,
    );
    assert!(seen.iter().all(|&s| s > 60), "{seen:?}");
}

/// Two empty pods with two slots each, scraped before any pick (stamp 0). `claims[i]`: the
/// adapters sent to pod i since, one pick each, the pods' counters moved accordingly.
fn claimed(claims: [&[&str]; 2], req: &SchedulingRequest<'_>) -> (Decision, Option<u32>) {
    let mut s = pod(0, 0.1);
    s.max_lora = Some(2);
    s.base_model = adapter_hash("base");
    let states = [s.clone(), s];
    let sets: Vec<AdapterClaims> = claims
        .iter()
        .map(|names| {
            let mut a = AdapterClaims::default();
            for (pick, n) in names.iter().enumerate() {
                a.record(adapter_hash(n), pick as u32);
            }
            a
        })
        .collect();
    let c: Vec<Candidate<'_>> = states
        .iter()
        .zip(&sets)
        .zip(claims)
        .map(|((s, a), names)| Candidate {
            state: Some(s),
            picks_since_scrape: names.len() as u32,
            in_flight: names.len() as u32,
            claims: a.as_slice(),
        })
        .collect();
    schedule_claiming(&Profile::default(), req, &c, None, &mut Rng::new(1))
}

#[test]
fn adapters_sent_since_the_scrape_count_as_queued_there() {
    let to = |endpoint| Decision::Pick {
        endpoint,
        fail_open: false,
    };
    // Detect: the pods serve "base", so "a" is an adapter before any pod lists it.
    let (d, claim) = claimed([&["a"], &[]], &request("a"));
    assert_eq!((d, claim), (to(0), Some(adapter_hash("a"))));
    // A third adapter goes where a slot is free, even past a shorter queue.
    assert_eq!(claimed([&["a", "b"], &[]], &request("c")).0, to(1));
    assert_eq!(claimed([&["a", "b"], &["c"]], &request("a")).0, to(0));
    // The base model claims nothing and follows the load.
    let (d, claim) = claimed([&["a"], &[]], &request("base"));
    assert_eq!((d, claim), (to(1), None));
}

#[test]
fn a_free_slot_beats_no_slot_and_waiting_beats_nothing() {
    let mut full = pod(1, 0.4);
    full.running_adapters = names(&["a", "b"]);
    full.max_lora = Some(2);
    let mut free = full.clone();
    free.max_lora = Some(3);
    let req = SchedulingRequest {
        target_kind: TargetKind::Adapter,
        ..request("c")
    };
    assert_eq!(
        pick(&[full.clone(), free], &req),
        Decision::Pick {
            endpoint: 1,
            fail_open: false
        }
    );
    let mut waiting = full.clone();
    waiting.waiting_adapters = names(&["c"]);
    assert_eq!(
        pick(&[full.clone(), waiting.clone()], &req),
        Decision::Pick {
            endpoint: 1,
            fail_open: false
        }
    );
    let mut e = Vec::new();
    explain(
        &Profile::default(),
        &req,
        &candidates(&[full, waiting]),
        None,
        &mut e,
    );
    assert_eq!((e[0].lora_affinity, e[1].lora_affinity), (0.0, 0.6));
}

#[test]
fn stale_and_failing_endpoints_are_skipped_while_a_fresh_one_exists() {
    let mut old = pod(0, 0.0);
    old.last_scrape_ms = NOW - STALENESS - 1;
    let mut failing = pod(0, 0.0);
    failing.consecutive_failures = 1;
    let never = EndpointState::default();
    let fresh = pod(8, 0.7); // the worst numbers, but the only trusted ones
    let states = [old, failing, never, fresh];
    let mut c = candidates(&states);
    c.push(Candidate::default()); // no state at all
    let seen = histogram(&Profile::default(), &request("m"), &c, 100);
    assert_eq!(seen, [0, 0, 0, 100, 0]);
    let mut e = Vec::new();
    explain(&Profile::default(), &request("m"), &c, None, &mut e);
    assert_eq!(
        e.iter().map(|s| (s.fresh, s.eligible)).collect::<Vec<_>>(),
        [
            (false, false),
            (false, false),
            (false, false),
            (true, true),
            (false, false)
        ]
    );
}

#[test]
fn with_nothing_fresh_fail_open_takes_the_least_in_flight() {
    let mut states = vec![pod(0, 0.1); 4];
    for s in &mut states {
        s.last_scrape_ms = NOW - 10 * STALENESS;
    }
    let mut c = candidates(&states);
    for (i, n) in [5, 2, 9, 2].into_iter().enumerate() {
        c[i].in_flight = n;
    }
    let seen = histogram(&Profile::default(), &request("m"), &c, 1000);
    assert_eq!(seen[0] + seen[2], 0);
    assert!(seen[1] > 400 && seen[3] > 400, "random tie-break: {seen:?}");
    let d = schedule(
        &Profile::default(),
        &request("m"),
        &c,
        None,
        &mut Rng::new(2),
    );
    assert!(matches!(
        d,
        Decision::Pick {
            fail_open: true,
            ..
        }
    ));
    // Never-scraped endpoints too (the collector has not run yet).
    let blank: Vec<Candidate<'_>> = vec![Candidate::default(); 3];
    assert!(matches!(
        schedule(
            &Profile::default(),
            &request("m"),
            &blank,
            None,
            &mut Rng::new(2)
        ),
        Decision::Pick {
            fail_open: true,
            ..
        }
    ));
    let close = SchedulingRequest {
        failure_mode: FailureMode::FailClose,
        ..request("m")
    };
    assert_eq!(
        schedule(&Profile::default(), &close, &c, None, &mut Rng::new(2)),
        Decision::Unavailable
    );
}

#[test]
fn a_saturated_pool_sheds_only_sheddable() {
    // Every fresh endpoint over a threshold; the stale one's good numbers do not count.
    let mut stale = pod(0, 0.0);
    stale.consecutive_failures = 3;
    let states = [pod(6, 0.5), pod(1, 0.85), pod(9, 0.95), stale];
    let with = |criticality| SchedulingRequest {
        criticality,
        ..request("m")
    };
    assert_eq!(pick(&states, &with(Criticality::Sheddable)), Decision::Shed);
    // Critical and Standard still go to the best endpoint (shortest queue, with its KV).
    for c in [Criticality::Critical, Criticality::Standard] {
        assert_eq!(
            pick(&states, &with(c)),
            Decision::Pick {
                endpoint: 1,
                fail_open: false
            }
        );
    }
    // At the thresholds exactly is headroom: not saturated, so Sheddable is routed — and only
    // to an endpoint with headroom, though another scores higher.
    let states = [pod(5, 0.8), pod(6, 0.0), pod(6, 0.0), pod(0, 0.95)];
    assert_eq!(
        pick(&states, &with(Criticality::Sheddable)),
        Decision::Pick {
            endpoint: 0,
            fail_open: false
        }
    );
    assert_ne!(
        pick(&states, &with(Criticality::Standard)),
        Decision::Pick {
            endpoint: 0,
            fail_open: false
        }
    );
}

#[test]
fn under_flow_control_the_pick_sends_only_where_there_is_room_and_sheds_nothing() {
    let mut profile = Profile::default();
    profile.saturation.flow_control = true;
    let go = |states: &[EndpointState], criticality| {
        let req = SchedulingRequest {
            criticality,
            ..request("m")
        };
        schedule(&profile, &req, &candidates(states), None, &mut Rng::new(1))
    };
    let at = |endpoint| Decision::Pick {
        endpoint,
        fail_open: false,
    };
    // Room is a queue within the bound, whatever the cache: the endpoints with KV to spare but
    // six waiting are left out, though they score better.
    let states = [pod(5, 0.95), pod(6, 0.0), pod(6, 0.0)];
    assert_eq!(go(&states, Criticality::Standard), at(0));
    // Sheddable work only takes capacity to spare: the cache within its threshold too.
    let states = [pod(0, 0.95), pod(4, 0.5), pod(6, 0.0)];
    assert_eq!(go(&states, Criticality::Sheddable), at(1));
    assert_ne!(go(&states, Criticality::Standard), at(2));
    // No room anywhere (the queue decided otherwise a moment ago): routed to the best, not shed.
    let states = [pod(6, 0.5), pod(1, 0.85), pod(9, 0.95)];
    assert_eq!(go(&states, Criticality::Sheddable), at(1));
}

/// `picks` sequential decisions, each pick raising the picked endpoint's picks-since-scrape and
/// in-flight count as the host does through shared data; no scrape in between. Returns the picks
/// per endpoint.
fn burst(states: &[EndpointState], picks: usize, seed: u64) -> Vec<u32> {
    let profile = Profile::default();
    let mut rng = Rng::new(seed);
    let mut c = candidates(states);
    let mut got = vec![0; states.len()];
    for _ in 0..picks {
        match schedule(&profile, &request("m"), &c, None, &mut rng) {
            Decision::Pick { endpoint, .. } => {
                got[endpoint] += 1;
                c[endpoint].picks_since_scrape += 1;
                c[endpoint].in_flight += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    got
}

#[test]
fn a_burst_after_a_scrape_spreads_over_equal_pods() {
    // Bound: every pick goes to a least-loaded pod, so loads never differ by more than one;
    // 200 over 8 is exactly 25 each.
    for seed in 0..5 {
        assert_eq!(burst(&vec![pod(0, 0.3); 8], 200, seed), vec![25; 8]);
    }
}

#[test]
fn a_burst_does_not_herd_onto_the_pod_that_looked_best() {
    // One pod scraped with queue 0, seven with queue 1: it takes the first pick, then they share.
    // Bound: effective queues (waiting + picks) end within one of each other, so of 207 the best
    // pod has 25 or 26 and the others 24 or 25 picks.
    let mut states = vec![pod(1, 0.3); 8];
    states[0].waiting = 0;
    for seed in 0..5 {
        let got = burst(&states, 200, seed);
        let eff: Vec<u32> = got
            .iter()
            .zip(&states)
            .map(|(p, s)| p + s.waiting)
            .collect();
        let (min, max) = (eff.iter().min().unwrap(), eff.iter().max().unwrap());
        assert!(max - min <= 1, "{got:?}");
        assert!((25..=26).contains(&got[0]), "{got:?}");
        assert!(got[1..].iter().all(|g| (24..=25).contains(g)), "{got:?}");
    }
    // A much emptier KV cache (worth 1.0 against the queue's 2.0 for one request more) buys one
    // request's lead at most: 25 or 26 of 200.
    let mut states = vec![pod(0, 0.6); 8];
    states[0].kv_cache_usage = 0.1;
    for seed in 0..5 {
        let got = burst(&states, 200, seed);
        assert!((25..=26).contains(&got[0]), "{got:?}");
        assert!(got[1..].iter().all(|g| (24..=26).contains(g)), "{got:?}");
    }
}

fn prompt(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| b'a' + (r.below(26) as u8)).collect()
}

fn addresses(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| endpoint_id(&format!("10.0.{}.{}:8000", i / 256, i % 256)))
        .collect()
}

#[test]
fn a_conversation_keeps_going_where_its_prefix_is() {
    let profile = Profile::new(Strategy::PrefixCache);
    let mut index = PrefixIndex::new(&profile.prefix, &addresses(8));
    let states = vec![pod(1, 0.4); 8];
    let c = candidates(&states);
    let mut rng = Rng::new(5);
    let mut convo = prompt(1, 64 * 30);
    let mut hashes = Vec::new();
    let mut home = None;
    // Ten turns, each finished (and scraped) before the next: the first lands anywhere, the
    // others follow it.
    for turn in 0..10 {
        profile.prefix.hash_prompt("m", &convo, &mut hashes);
        let req = SchedulingRequest {
            prefix_hashes: &hashes,
            ..request("m")
        };
        let Decision::Pick { endpoint, .. } = schedule(&profile, &req, &c, Some(&index), &mut rng)
        else {
            panic!("no pick")
        };
        assert_eq!(*home.get_or_insert(endpoint), endpoint, "turn {turn}");
        index.record(endpoint, &hashes);
        convo.extend(prompt(100 + turn, 64 * 3));
    }
    // The same prompt under another model matches nowhere.
    profile
        .prefix
        .hash_prompt("other-model", &convo, &mut hashes);
    let req = SchedulingRequest {
        prefix_hashes: &hashes,
        ..request("other-model")
    };
    let mut e = Vec::new();
    explain(&profile, &req, &c, Some(&index), &mut e);
    assert!(e.iter().all(|s| s.prefix == 0.0), "{e:?}");
    // DEFAULT ignores the index.
    profile.prefix.hash_prompt("m", &convo, &mut hashes);
    let req = SchedulingRequest {
        prefix_hashes: &hashes,
        ..request("m")
    };
    explain(&Profile::default(), &req, &c, Some(&index), &mut e);
    assert!(e.iter().all(|s| s.prefix == 0.0), "{e:?}");
    explain(&profile, &req, &c, Some(&index), &mut e);
    assert!(e.iter().filter(|s| s.prefix > 0.9).count() == 1, "{e:?}");
}

#[test]
fn an_empty_prompt_under_prefix_cache_is_plain_default() {
    let profile = Profile::new(Strategy::PrefixCache);
    let index = PrefixIndex::new(&profile.prefix, &addresses(3));
    let mut hashes = vec![1, 2, 3];
    profile.prefix.hash_prompt("m", b"", &mut hashes);
    assert!(hashes.is_empty());
    let states = [pod(4, 0.3), pod(0, 0.3), pod(2, 0.3)];
    let req = SchedulingRequest {
        prefix_hashes: &hashes,
        ..request("m")
    };
    let d = schedule(
        &profile,
        &req,
        &candidates(&states),
        Some(&index),
        &mut Rng::new(1),
    );
    assert_eq!(
        d,
        Decision::Pick {
            endpoint: 1,
            fail_open: false
        }
    );
    // And with no index at all.
    let d = schedule(&profile, &req, &candidates(&states), None, &mut Rng::new(1));
    assert_eq!(
        d,
        Decision::Pick {
            endpoint: 1,
            fail_open: false
        }
    );
}

#[test]
fn every_score_is_in_the_unit_interval() {
    let mut states: Vec<EndpointState> = (0..50)
        .map(|i| pod((i * 7) % 13, (i as f32 * 0.37) % 1.0))
        .collect();
    states[3].kv_cache_usage = f32::NAN;
    states[4].kv_cache_usage = -2.0;
    states[5].running_adapters = names(&["x"]);
    let mut c = candidates(&states);
    for (i, x) in c.iter_mut().enumerate() {
        x.in_flight = (i as u32 * 5) % 17;
        x.picks_since_scrape = (i as u32 * 3) % 7;
    }
    let mut e = Vec::new();
    explain(&Profile::default(), &request("x"), &c, None, &mut e);
    for s in &e {
        for v in [s.queue, s.kv_cache, s.lora_affinity, s.prefix, s.in_flight] {
            assert!((0.0..=1.0).contains(&v), "{s:?}");
        }
        assert!(s.total.is_finite());
    }
}

#[test]
fn five_hundred_twelve_endpoints() {
    let n = 512;
    let states: Vec<EndpointState> = (0..n)
        .map(|i| pod(((i * 31) % 11) as u32, ((i * 17) % 90) as f32 / 100.0))
        .collect();
    let mut c = candidates(&states);
    for (i, x) in c.iter_mut().enumerate() {
        x.in_flight = ((i * 13) % 5) as u32;
    }
    let profile = Profile::new(Strategy::PrefixCache);
    let mut index = PrefixIndex::new(&profile.prefix, &addresses(n));
    let mut hashes = Vec::new();
    profile
        .prefix
        .hash_prompt("m", &prompt(3, 64 * 100), &mut hashes);
    // The best by load is an endpoint with waiting 0 and KV 0: i ≡ 0 (mod 11) and (mod 90).
    let d = schedule(
        &Profile::default(),
        &request("m"),
        &c,
        None,
        &mut Rng::new(4),
    );
    let Decision::Pick { endpoint, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (states[endpoint].waiting, states[endpoint].kv_cache_usage),
        (0, 0.0)
    );
    // A prefix learned on endpoint 400 draws the request there.
    index.record(400, &hashes);
    let req = SchedulingRequest {
        prefix_hashes: &hashes,
        ..request("m")
    };
    let mut got = Vec::new();
    for seed in 0..3 {
        got.push(schedule(
            &profile,
            &req,
            &c,
            Some(&index),
            &mut Rng::new(seed),
        ));
    }
    // Endpoint 400 has waiting 3 and KV 0.5: its full prefix (3) outweighs what it loses on queue
    // (2 · 3/10) and KV (2 · 0.5) to endpoint 0.
    assert!(
        got.iter().all(|d| *d
            == Decision::Pick {
                endpoint: 400,
                fail_open: false
            }),
        "{got:?}"
    );
}

#[test]
fn load_only_strategies_still_answer() {
    let states = vec![pod(0, 0.0); 3];
    let mut c = candidates(&states);
    c[0].in_flight = 3;
    c[1].in_flight = 1;
    c[2].in_flight = 2;
    let p = Profile::new(Strategy::LeastRequest);
    assert_eq!(
        schedule(&p, &request("m"), &c, None, &mut Rng::new(1)),
        Decision::Pick {
            endpoint: 1,
            fail_open: false
        }
    );
    let p = Profile::new(Strategy::Random);
    assert!(matches!(
        schedule(&p, &request("m"), &c, None, &mut Rng::new(1)),
        Decision::Pick { .. }
    ));
}

/// Per-call cost of `schedule`, for the record; no assertion on time.
/// `cargo test --release -p inference-router-core schedule_cost -- --ignored --nocapture`
#[cfg(not(target_arch = "wasm32"))]
#[test]
#[ignore]
fn schedule_cost() {
    use std::hint::black_box;
    use std::time::Instant;

    let adapters = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"];
    let profile_prefix = Profile::new(Strategy::PrefixCache);
    let settings = profile_prefix.prefix;
    let system = prompt(1, 64 * 32);
    let mut hashes = Vec::new();
    for n in [8usize, 64, 512] {
        let mut rng = Rng::new(n as u64);
        let states: Vec<EndpointState> = (0..n)
            .map(|_| EndpointState {
                waiting: rng.below(10) as u32,
                running: rng.below(20) as u32,
                kv_cache_usage: 0.1 + rng.below(80) as f32 / 100.0,
                running_adapters: (0..3)
                    .map(|_| adapters[rng.below(10)].to_string())
                    .collect(),
                max_lora: Some(4),
                last_scrape_ms: NOW - rng.below(200) as u64,
                ..Default::default()
            })
            .map(|mut s| {
                s.hash_adapters(); // as the snapshot decoder does
                s
            })
            .collect();
        // Two adapters claimed per endpoint since its scrape (the cost of counting claims).
        let claims: Vec<AdapterClaims> = (0..n)
            .map(|_| {
                let mut a = AdapterClaims::default();
                for _ in 0..2 {
                    a.record(adapter_hash(adapters[rng.below(10)]), 1);
                }
                a
            })
            .collect();
        let c: Vec<Candidate<'_>> = states
            .iter()
            .zip(&claims)
            .map(|(s, a)| Candidate {
                state: Some(s),
                picks_since_scrape: rng.below(4) as u32,
                in_flight: rng.below(8) as u32,
                claims: a.as_slice(),
            })
            .collect();
        let iters = 4_000_000 / n;
        let mut time = |profile: &Profile, idx: Option<&PrefixIndex>, h: &[u64]| {
            let req = SchedulingRequest {
                target_kind: TargetKind::Adapter,
                prefix_hashes: h,
                ..request("a3")
            };
            let t = Instant::now();
            for _ in 0..iters {
                black_box(schedule(
                    profile,
                    black_box(&req),
                    black_box(&c),
                    idx,
                    &mut rng,
                ));
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        };
        let ns = time(&Profile::default(), None, &[]);
        println!("schedule DEFAULT                   {n:>4} endpoints: {ns:>9.0} ns/call");
        // Every endpoint holds 20 conversations of 32 blocks of its own, each after a shared 2 KiB
        // system prompt or not; the request is one endpoint's conversation plus a new turn.
        for shared in [false, true] {
            let head = if shared { system.clone() } else { Vec::new() };
            let mut index = PrefixIndex::new(&settings, &addresses(n));
            for e in 0..n {
                for k in 0..20u64 {
                    let mut p = head.clone();
                    p.extend(prompt(1_000 + e as u64 * 20 + k, 64 * 32));
                    settings.hash_prompt("a3", &p, &mut hashes);
                    index.record(e, &hashes);
                }
            }
            let mut p = head.clone();
            p.extend(prompt(1_000 + (n as u64 / 2) * 20 + 7, 64 * 32));
            p.extend(prompt(7, 64 * 16));
            settings.hash_prompt("a3", &p, &mut hashes);
            let ns = time(&profile_prefix, Some(&index), &hashes);
            let what = if shared {
                "shared system prompt"
            } else {
                "no shared prefix"
            };
            println!(
                "schedule PREFIX_CACHE {what:>20} {n:>4} endpoints: {ns:>9.0} ns/call ({} blocks, index {} KiB)",
                hashes.len(),
                index.memory_bytes() / 1024
            );
        }
    }
    for (len, iters) in [(4 * 1024, 200_000), (16 * 1024, 50_000)] {
        let p = prompt(9, len);
        let t = Instant::now();
        for _ in 0..iters {
            settings.hash_prompt("a3", black_box(&p), &mut hashes);
            black_box(&hashes);
        }
        let ns = t.elapsed().as_nanos() as f64 / iters as f64;
        println!("hash_prompt {len:>6} bytes: {ns:>9.0} ns/call");
    }
    let mut index = PrefixIndex::new(&settings, &addresses(8));
    settings.hash_prompt("a3", &prompt(10, 64 * 64), &mut hashes);
    let iters = 200_000;
    let t = Instant::now();
    for i in 0..iters {
        index.record(i % 8, black_box(&hashes));
        if i % 64 == 0 {
            let mut out = Vec::new();
            index.export(&mut out);
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("record 64 blocks: {ns:>9.0} ns/call");
}

#[test]
fn one_failing_endpoint_is_left_out_at_once() {
    let mut states = vec![pod(0, 0.1), pod(4, 0.5), pod(4, 0.5)];
    states[0].consecutive_failures = 1;
    let seen = histogram(
        &Profile::default(),
        &request("m"),
        &candidates(&states),
        100,
    );
    assert_eq!(
        seen[0], 0,
        "its good-looking numbers are not trusted: {seen:?}"
    );
}

#[test]
fn a_pool_wide_metrics_outage_does_not_herd_onto_the_first_to_recover() {
    // Every pod's /metrics timed out at once (say under a burst), and one is answering again.
    // Its numbers alone would draw every request; the others' last numbers, still within
    // staleness, are trusted instead, and the requests keep spreading by load.
    let mut states = vec![pod(3, 0.4); 4];
    for s in &mut states[1..] {
        s.consecutive_failures = 2;
    }
    let mut c = candidates(&states);
    // The recovered pod has taken our last requests already.
    c[0].picks_since_scrape = 6;
    c[0].in_flight = 6;
    let seen = histogram(&Profile::default(), &request("m"), &c, 300);
    assert_eq!(seen[0], 0, "{seen:?}");
    assert!(seen[1..].iter().all(|&n| n > 50), "{seen:?}");
    // Stale numbers are never trusted: past staleness, only the recovered pod is fresh.
    for s in &mut states[1..] {
        s.last_scrape_ms = NOW - STALENESS - 1;
    }
    let seen = histogram(&Profile::default(), &request("m"), &candidates(&states), 50);
    assert_eq!(seen, [50, 0, 0, 0]);
}
