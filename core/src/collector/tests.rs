//! The collector against an in-memory host: state in, state out. Each test drives collectors (one
//! per "worker", sharing one store) with ticks and HTTP answers and checks what ends up in shared
//! data, the stats and the log.

use super::coherence::Coherence;
use super::*;
use crate::host::memory::MemHost;
use crate::pool::view::PoolView;
use crate::shared::{decode_version, lease::Lease, Keys};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const PAGE: &str = "vllm:num_requests_waiting{model_name=\"m\"} 3\n\
                    vllm:num_requests_running{model_name=\"m\"} 1\n\
                    vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n";

fn config(doc: &str) -> Config {
    Config::parse(doc.as_bytes()).unwrap()
}

fn two_pods() -> Config {
    config(
        r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80","10.0.0.2:80"],
             "metrics":{"intervalMs":100}}],
           "collector":{"mode":"embedded"}}"#,
    )
}

/// Answer every scrape the host sent with the page; returns how many.
fn answer_scrapes(c: &mut Collector, host: &MemHost, now: u64) -> usize {
    let calls = host.http.take();
    let n = calls.len();
    for (token, _, _) in calls {
        c.on_response(host, token, Some(200), Some(PAGE.as_bytes()), now);
    }
    n
}

fn published_version(host: &MemHost, cfg: &Config) -> Option<u64> {
    let keys = Keys::new(&cfg.instance);
    host.store
        .value(&keys.version("p"))
        .and_then(|b| decode_version(&b))
}

#[test]
fn one_embedded_collector_scrapes_and_another_takes_over_when_it_stops() {
    let cfg = two_pods();
    let (a_host, mut a) = (MemHost::default(), Collector::new(&cfg, Some(1)).unwrap());
    let b_host = a_host.sibling();
    let mut b = Collector::new(&cfg, Some(2)).unwrap();
    a.on_tick(&a_host, 1000);
    b.on_tick(&b_host, 1000);
    assert!(a.holds_lease() && !b.holds_lease());
    assert_eq!(
        b_host.http.calls.borrow().len(),
        0,
        "only the holder scrapes"
    );
    assert_eq!(answer_scrapes(&mut a, &a_host, 1010), 2);
    let v1 = published_version(&a_host, &cfg).unwrap();
    // A goes quiet; within two intervals (the lease's TTL) B takes over and continues.
    b.on_tick(&b_host, 1150);
    assert!(!b.holds_lease(), "the lease is still valid");
    b.on_tick(&b_host, 1300);
    assert!(b.holds_lease());
    assert_eq!(answer_scrapes(&mut b, &b_host, 1310), 2);
    let v2 = published_version(&b_host, &cfg).unwrap();
    assert!(
        v2 > v1,
        "versions continue from the published snapshot: {v1} then {v2}"
    );
    assert_eq!(b_host.log.count(Level::Info, "lease taken"), 1);
}

#[test]
fn a_holder_that_lost_its_lease_stops_publishing() {
    let cfg = two_pods();
    let a_host = MemHost::default();
    let b_host = a_host.sibling();
    let mut a = Collector::new(&cfg, Some(1)).unwrap();
    let mut b = Collector::new(&cfg, Some(2)).unwrap();
    a.on_tick(&a_host, 1000);
    let a_calls = a_host.http.take();
    // A stalls past its lease; B takes it and publishes.
    b.on_tick(&b_host, 1300);
    assert_eq!(answer_scrapes(&mut b, &b_host, 1305), 2);
    let keys = Keys::new(&cfg.instance);
    let writes = a_host.store.writes_to(&keys.snapshot("p"));
    let version = published_version(&b_host, &cfg);
    // A's late answers arrive: nothing of A's is published, and its next tick knows it lost.
    for (token, _, _) in a_calls {
        a.on_response(&a_host, token, Some(200), Some(PAGE.as_bytes()), 1310);
    }
    a.on_tick(&a_host, 1320);
    assert!(!a.holds_lease());
    assert_eq!(a_host.store.writes_to(&keys.snapshot("p")), writes);
    assert_eq!(published_version(&a_host, &cfg), version);
    assert_eq!(a_host.log.count(Level::Info, "lease lost"), 1);
}

#[test]
fn a_lease_write_lost_to_another_worker_is_not_a_lease() {
    let cfg = two_pods();
    let host = MemHost::default();
    let mut a = Collector::new(&cfg, Some(1)).unwrap();
    a.on_tick(&host, 1000);
    assert!(a.holds_lease());
    // The renewal loses its race: this tick A does not hold it (and does not scrape).
    host.http.take();
    host.store.lose_next(1);
    a.on_tick(&host, 1100);
    assert!(!a.holds_lease());
    assert!(host.http.calls.borrow().is_empty());
    a.on_tick(&host, 1110);
    assert!(a.holds_lease(), "the next renewal goes through");
    let keys = Keys::new(&cfg.instance);
    let lease = Lease::decode(&host.store.value(&keys.lease()).unwrap()).unwrap();
    assert_eq!(lease.owner, 1);
}

#[test]
fn two_plugin_instances_in_one_store_each_scrape_their_own() {
    let a_cfg = two_pods();
    let b_cfg = config(
        r#"{"pools":[{"name":"q","endpoints":["10.0.1.1:80"]}],"collector":{"mode":"embedded"}}"#,
    );
    assert_ne!(a_cfg.instance, b_cfg.instance);
    let a_host = MemHost::default();
    let b_host = a_host.sibling();
    let mut a = Collector::new(&a_cfg, Some(1)).unwrap();
    let mut b = Collector::new(&b_cfg, Some(2)).unwrap();
    a.on_tick(&a_host, 1000);
    b.on_tick(&b_host, 1000);
    assert!(a.holds_lease() && b.holds_lease(), "a lease each");
    assert_eq!(a_host.http.calls.borrow().len(), 2);
    assert_eq!(b_host.http.calls.borrow().len(), 1);
}

fn admin_json(cluster: &str, hosts: &[&str]) -> Vec<u8> {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|h| {
            let (ip, port) = h.rsplit_once(':').unwrap();
            format!(
                r#"{{"address":{{"socket_address":{{"address":"{ip}","port_value":{port}}}}},
                    "health_status":{{"eds_health_status":"HEALTHY"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"cluster_statuses":[{{"name":"{cluster}","host_statuses":[{}]}}]}}"#,
        hosts.join(",")
    )
    .into_bytes()
}

/// Tick, then answer the discovery call (if any) with `members` and every scrape with the page.
fn round(c: &mut Collector, host: &MemHost, now: u64, members: &[&str]) {
    c.on_tick(host, now);
    for (token, cluster, _) in host.http.take() {
        if cluster == "admin" {
            c.on_response(
                host,
                token,
                Some(200),
                Some(&admin_json("eds", members)),
                now,
            );
        } else {
            c.on_response(host, token, Some(200), Some(PAGE.as_bytes()), now);
        }
    }
}

#[test]
fn a_round_reads_the_pick_counters_once_and_each_scrape_keeps_its_own_count() {
    let cfg = config(
        r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80","10.0.0.2:80","10.0.0.3:80"],
             "metrics":{"intervalMs":100}}],
           "scheduling":{"strategy":"DEFAULT"}}"#,
    );
    let host = MemHost::default();
    let mut c = Collector::new(&cfg, None).unwrap();
    let keys = Keys::new(&cfg.instance);
    let view = PoolView::new(&cfg.pools[0], &keys);
    let m = view.members(&host, &host, true);
    for (i, n) in [(0usize, 2), (2, 5)] {
        for _ in 0..n {
            m.counters
                .pick(&host, |_| Ok::<_, ()>((i, None, ())))
                .unwrap();
        }
    }
    let before = host.store.reads_of(&keys.counters("p"));
    c.on_tick(&host, 1000);
    assert_eq!(
        host.store.reads_of(&keys.counters("p")) - before,
        1,
        "one read of the pool's counters for the round's three scrapes"
    );
    assert_eq!(answer_scrapes(&mut c, &host, 1010), 3);
    let m2 = view.members(&host, &host, true);
    let picks: Vec<u32> = m2
        .states
        .iter()
        .map(|s| s.as_ref().map_or(u32::MAX, |s| s.picks_at_scrape))
        .collect();
    assert_eq!(
        picks,
        vec![2, 0, 5],
        "each endpoint's own picks at its scrape"
    );
}

#[test]
fn membership_churn_keeps_counts_by_address_and_retires_what_left() {
    let cfg = config(
        r#"{"pools":[{"name":"p","discovery":{"cluster":"eds","adminCluster":"admin","refreshMs":100},
             "metrics":{"intervalMs":100}}],
           "scheduling":{"strategy":"DEFAULT"}}"#,
    );
    let host = MemHost::default();
    let mut c = Collector::new(&cfg, None).unwrap();
    let keys = Keys::new(&cfg.instance);
    round(&mut c, &host, 1000, &["10.0.0.1:80", "10.0.0.2:80"]);
    round(&mut c, &host, 1100, &["10.0.0.1:80", "10.0.0.2:80"]);
    // A filter picks both; one request to .2 is still in flight when .2 leaves.
    let view = PoolView::new(&cfg.pools[0], &keys);
    let m = view.members(&host, &host, true);
    assert_eq!(m.endpoints.len(), 2);
    let g1 = m.generation;
    for i in 0..2 {
        m.counters
            .pick(&host, |_| Ok::<_, ()>((i, None, ())))
            .unwrap();
    }
    m.counters.release(&host, 0);
    // .2 leaves, .3 joins, the order changes.
    round(&mut c, &host, 1200, &["10.0.0.3:80", "10.0.0.1:80"]);
    round(&mut c, &host, 1300, &["10.0.0.3:80", "10.0.0.1:80"]);
    let m2 = view.members(&host, &host, true);
    let mut listed = m2.endpoints.clone();
    listed.sort();
    assert_eq!(listed, vec!["10.0.0.1:80", "10.0.0.3:80"]);
    assert!(m2.generation > g1);
    let at = |e: &str| m2.endpoints.iter().position(|x| x == e).unwrap();
    let picks = m2.counters.load(&host).picks;
    assert_eq!(
        (picks[at("10.0.0.1:80")], picks[at("10.0.0.3:80")]),
        (1, 0),
        ".1 keeps its count"
    );
    // The departed pod: no longer a member; its busy slot stays until its request ends.
    let gone = stats::name_with_labels(
        stats::ENDPOINT_MEMBER,
        &[("pool", "p"), ("endpoint", "10.0.0.2:80")],
    );
    assert_eq!(host.log.gauge(&gone), Some(0));
    let table = |h: &MemHost| {
        crate::shared::counters::CounterTable::decode(h.store.value(&keys.counters("p")).as_deref())
            .unwrap()
    };
    assert_eq!(table(&host).slots.len(), 2, "the busy slot of .2 stays");
    assert!(m.counters.release(&host, 1), "the old list's request ends");
    round(&mut c, &host, 1400, &["10.0.0.1:80"]);
    assert_eq!(
        table(&host).slots.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![crate::scheduling::endpoint_id("10.0.0.1:80")],
        "idle departed slots retired"
    );
    // Every member's error counter exists from the start (at zero), and members are marked.
    let member = |e: &str| {
        host.log.gauge(&stats::name_with_labels(
            stats::ENDPOINT_MEMBER,
            &[("pool", "p"), ("endpoint", e)],
        ))
    };
    assert_eq!(
        (member("10.0.0.1:80"), member("10.0.0.3:80")),
        (Some(1), Some(0))
    );
    let errors = stats::name_with_labels(
        stats::ENDPOINT_SCRAPE_ERRORS_TOTAL,
        &[("pool", "p"), ("endpoint", "10.0.0.3:80")],
    );
    assert_eq!(host.log.counters.borrow().get(&errors), Some(&0));
}

#[test]
fn a_filter_says_once_when_no_collector_publishes() {
    let cfg = config(r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"]}]}"#);
    let host = MemHost::default();
    let mut check = Coherence::new(&cfg).unwrap();
    for t in (0..60_000).step_by(500) {
        check.check(&host, &host, t);
    }
    assert_eq!(
        host.log.count(Level::Error, "no collector has published"),
        1
    );
    assert_eq!(host.log.count(Level::Error, "bootstrap collector"), 1);
    // A strategy without metrics needs no collector.
    let rr = config(
        r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"]}],"scheduling":{"strategy":"ROUND_ROBIN"}}"#,
    );
    assert!(Coherence::new(&rr).is_none());
}

#[test]
fn a_collector_with_other_pools_is_named_and_a_matching_one_settles() {
    let filter_cfg =
        config(r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"]}],"instanceName":"shared"}"#);
    let collector_cfg = config(
        r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"],"metrics":{"intervalMs":500}}],
            "instanceName":"shared"}"#,
    );
    let host = MemHost::default();
    let mut c = Collector::new(&collector_cfg, None).unwrap();
    c.on_tick(&host, 1000);
    answer_scrapes(&mut c, &host, 1001);
    let mut check = Coherence::new(&filter_cfg).unwrap();
    check.check(&host, &host, 2000);
    check.check(&host, &host, 3000);
    assert_eq!(host.log.count(Level::Error, "given different pools"), 1);
    assert!(!check.settled());
    let same = Collector::new(&filter_cfg, None);
    let host2 = MemHost::default();
    let mut same = same.unwrap();
    same.on_tick(&host2, 1000);
    answer_scrapes(&mut same, &host2, 1001);
    let mut check = Coherence::new(&filter_cfg).unwrap();
    check.check(&host2, &host2, 2000);
    assert!(check.settled());
    assert_eq!(
        host2.log.count(Level::Warn, ""),
        0,
        "{:?}",
        host2.log.lines.borrow()
    );
}

#[test]
fn a_service_collector_given_the_embedded_mode_says_so() {
    let cfg = two_pods();
    let host = MemHost::default();
    let mut c = Collector::new(&cfg, None).unwrap();
    c.on_tick(&host, 1000);
    c.on_tick(&host, 1100);
    assert_eq!(
        host.log
            .count(Level::Warn, "document says collector.mode: embedded"),
        1
    );
}

#[test]
fn scrapes_go_to_each_member_by_address_through_the_pool_cluster() {
    let cfg = config(
        r#"{"pools":[{"name":"p","cluster":"outbound|8000||svc","endpoints":["10.0.0.1:8000"],
             "metrics":{"port":9090}}]}"#,
    );
    let host = MemHost::default();
    let mut c = Collector::new(&cfg, None).unwrap();
    c.on_tick(&host, 1000);
    let calls = host.http.take();
    assert_eq!(calls.len(), 1);
    let (_, cluster, headers) = &calls[0];
    assert_eq!(cluster, "outbound|8000||svc");
    assert!(headers.contains(&(
        "x-gateway-destination-endpoint".into(),
        "10.0.0.1:9090".into()
    )));
    assert!(headers.contains(&(":path".into(), "/metrics".into())));
}

#[test]
fn an_oversized_page_is_a_failed_scrape_said_once_per_outage() {
    let cfg = config(
        r#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80","10.0.0.2:80"],
             "metrics":{"intervalMs":100,"maxPageBytes":2048}}]}"#,
    );
    let host = MemHost::default();
    let mut c = Collector::new(&cfg, None).unwrap();
    let up = |e: &str| {
        host.log.gauge(&crate::stats::name_with_labels(
            crate::stats::ENDPOINT_UP,
            &[("pool", "p"), ("endpoint", e)],
        ))
    };
    let mut now = 1000;
    // Three rounds: pod 1 answers 50 MB each time, pod 2 a normal page.
    for _ in 0..3 {
        c.on_tick(&host, now);
        for (token, _, headers) in host.http.take() {
            let to_first = headers.iter().any(|(_, v)| v == "10.0.0.1:80");
            if to_first {
                assert_eq!(c.body_limit(token), Some(2048));
                c.on_oversized(&host, token, 50 << 20, now + 5);
            } else {
                c.on_response(&host, token, Some(200), Some(PAGE.as_bytes()), now + 5);
            }
        }
        now += 100;
    }
    assert_eq!(up("10.0.0.1:80"), Some(0));
    assert_eq!(up("10.0.0.2:80"), Some(1));
    let said = |level| host.log.count(level, "over metrics.maxPageBytes (2048)");
    assert_eq!((said(Level::Warn), said(Level::Debug)), (1, 3));
    // Back to a normal page, then too big again: within the minute, said at debug only for pod
    // 1; pod 2's first failure is said. A minute later a new outage is said again.
    let round = |c: &mut Collector, now: u64, ok: bool| {
        c.on_tick(&host, now);
        for (token, _, _) in host.http.take() {
            if ok {
                c.on_response(&host, token, Some(200), Some(PAGE.as_bytes()), now + 5);
            } else {
                c.on_oversized(&host, token, 4096, now + 5);
            }
        }
    };
    round(&mut c, now, true);
    round(&mut c, now + 100, false);
    assert_eq!(said(Level::Warn), 2);
    round(&mut c, now + 60_000, true);
    round(&mut c, now + 60_100, false);
    assert_eq!(said(Level::Warn), 4);
    assert_eq!(c.body_limit(12345), None, "not its call");
}
