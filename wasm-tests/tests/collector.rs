//! The metrics collector through the real Envoy, in front of simulated vLLM pods: the
//! per-endpoint gauges it publishes, how fast a pod whose metrics fail (500, hang) or which dies
//! stops getting traffic and how it gets traffic back, and both ways of running it (singleton
//! service, and embedded in the filter's workers under a lease) — including that the embedded one
//! scrapes from one worker only.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sched_support;

use sched_support::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wasm_tests::envoy::Envoy;
use wasm_tests::sim::{endpoints, MetricsFail, Pin, Sim, SimConfig};
use wasm_tests::PROMPT;

// ---- Gauges -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_gauges_show_what_the_pods_report() {
    let sims = sims(3, &fast_sim()).await;
    let eps = endpoints(&sims);
    sims[0]
        .pin(Pin {
            waiting: Some(7),
            running: Some(3),
            kv: Some(0.42),
            ..Pin::default()
        })
        .await;
    sims[1]
        .pin(Pin {
            waiting: Some(0),
            running: Some(0),
            kv: Some(0.0),
            ..Pin::default()
        })
        .await;
    sims[2].pin(load(1, 0.25)).await;
    let envoy = start_envoy(&config(&eps, "DEFAULT")).await;
    wait_all_up(&envoy, &eps).await;
    wait_gauges(&envoy, QUEUE_SIZE, &eps, &[7.0, 0.0, 1.0]).await;
    wait_gauges(&envoy, RUNNING, &eps[..2], &[3.0, 0.0]).await;
    wait_gauges(&envoy, KV_PERMILLE, &eps, &[420.0, 0.0, 250.0]).await;

    // A new pin shows at the next scrapes: within two intervals plus slack for a busy machine.
    sims[0].pin(load(12, 0.875)).await;
    let bound = Duration::from_millis(2 * INTERVAL_MS + 900);
    let (_, took) =
        wait_endpoint_metric(&envoy, QUEUE_SIZE, &eps[0], "12", |v| v == 12.0, bound).await;
    wait_endpoint_metric(&envoy, KV_PERMILLE, &eps[0], "875", |v| v == 875.0, bound).await;
    eprintln!("new queue size shown after {took:?}");

    // A pod whose /metrics fails: up = 0 at the next scrape, and the error counter rises with
    // every scrape after it (one per interval).
    sims[2].set_metrics_fail(MetricsFail::Status500).await;
    wait_endpoint_metric(&envoy, UP, &eps[2], "0", |v| v == 0.0, bound).await;
    let (errors, _) =
        wait_endpoint_metric(&envoy, SCRAPE_ERRORS, &eps[2], "≥ 1", |v| v >= 1.0, bound).await;
    wait_endpoint_metric(
        &envoy,
        SCRAPE_ERRORS,
        &eps[2],
        &format!("> {} (rising)", errors + 2.0),
        |v| v > errors + 2.0,
        Duration::from_millis(5 * INTERVAL_MS + 900),
    )
    .await;
    // The healthy pods are unaffected.
    for e in &eps[..2] {
        assert_eq!(endpoint_metric(&envoy, UP, e).await, Some(1.0), "{e}");
        let errors = endpoint_metric(&envoy, SCRAPE_ERRORS, e).await;
        assert_eq!(errors.unwrap_or(0.0), 0.0, "{e}");
    }
    // And it comes back.
    sims[2].set_metrics_fail(MetricsFail::Ok).await;
    wait_endpoint_metric(&envoy, UP, &eps[2], "1", |v| v == 1.0, bound).await;
}

// ---- Failing and dying pods -------------------------------------------------------------------

/// Three pods; pod 0 is the most attractive (queue 0 against 3 on the others, all with headroom),
/// so it gets traffic whenever it is eligible.
async fn failure_stack(staleness_ms: u64) -> (Vec<Sim>, Vec<String>, Envoy) {
    let sims = sims(3, &fast_sim()).await;
    let eps = endpoints(&sims);
    sims[0].pin(load(0, 0.1)).await;
    for s in &sims[1..] {
        s.pin(load(3, 0.1)).await;
    }
    let mut config = config(&eps, "DEFAULT");
    set_metrics(&mut config, "stalenessMs", json!(staleness_ms));
    let envoy = start_envoy(&config).await;
    wait_gauges(&envoy, QUEUE_SIZE, &eps, &[0.0, 3.0, 3.0]).await;
    settle().await;
    (sims, eps, envoy)
}

/// 20 sequential requests: pod 0 gets at least 5. After a scrape it wins every pick until its
/// picks since that scrape make up the others' queue of 3, then a fair share: more than 5 of 20.
async fn assert_gets_traffic(envoy: &Envoy, eps: &[String], when: &str) {
    let pods = sequential(&envoy.client().unwrap(), BASE, 20).await;
    let counts = tally(eps, &pods);
    assert!(
        counts[0] >= 5,
        "{when}: {} got {} of 20 (want ≥ 5): {counts:?}",
        eps[0],
        counts[0]
    );
}

/// 30 sequential requests all succeed and none reaches pod 0.
async fn assert_gets_none(envoy: &Envoy, eps: &[String], when: &str) {
    let pods = sequential(&envoy.client().unwrap(), BASE, 30).await;
    let counts = tally(eps, &pods);
    assert_eq!(
        counts[0], 0,
        "{when}: {} still got {} of 30: {counts:?}",
        eps[0], counts[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_metrics_answer_500_loses_traffic_at_the_next_scrape_and_regains_it() {
    // Staleness left at its 2 s default: the pod is excluded for the failed scrape, not for age.
    let (sims, eps, envoy) = failure_stack(2000).await;
    assert_gets_traffic(&envoy, &eps, "before the failure").await;

    sims[0].set_metrics_fail(MetricsFail::Status500).await;
    // The next scrape is due within one interval (ticks are a quarter interval); 1 s leaves room
    // for a busy machine.
    let (_, took) = wait_endpoint_metric(
        &envoy,
        UP,
        &eps[0],
        "0",
        |v| v == 0.0,
        Duration::from_millis(1000),
    )
    .await;
    eprintln!("up = 0 after {took:?}");
    settle().await;
    assert_gets_none(&envoy, &eps, "metrics answering 500").await;

    sims[0].set_metrics_fail(MetricsFail::Ok).await;
    wait_endpoint_metric(
        &envoy,
        UP,
        &eps[0],
        "1",
        |v| v == 1.0,
        Duration::from_millis(1000),
    )
    .await;
    settle().await;
    assert_gets_traffic(&envoy, &eps, "after the metrics recovered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_metrics_hang_loses_traffic_within_staleness_and_regains_it() {
    const STALENESS_MS: u64 = 500;
    let (sims, eps, envoy) = failure_stack(STALENESS_MS).await;
    assert_gets_traffic(&envoy, &eps, "before the hang").await;

    // The scrape hangs; its timeout (1 s by default) is longer than the staleness: the last good
    // scrape ages out first. Bound: staleness + 2 intervals (the scrape answered just before
    // the hang, and a scrape round in flight).
    sims[0].set_metrics_fail(MetricsFail::Hang).await;
    let hung = Instant::now();
    tokio::time::sleep(Duration::from_millis(STALENESS_MS + 2 * INTERVAL_MS)).await;
    assert_gets_none(&envoy, &eps, "metrics hanging beyond the staleness bound").await;

    // The hung scrape times out (timeoutMs 1000) and counts as failed: up = 0.
    let (_, _) = wait_endpoint_metric(&envoy, UP, &eps[0], "0", |v| v == 0.0, PROMPT).await;
    let took = hung.elapsed();
    assert!(
        took <= Duration::from_millis(1000 + 2 * INTERVAL_MS + 900),
        "up = 0 only {took:?} after the hang (timeout 1 s)"
    );

    sims[0].set_metrics_fail(MetricsFail::Ok).await;
    wait_endpoint_metric(
        &envoy,
        UP,
        &eps[0],
        "1",
        |v| v == 1.0,
        Duration::from_millis(1000),
    )
    .await;
    settle().await;
    assert_gets_traffic(&envoy, &eps, "after the metrics recovered").await;
}

/// Start a simulator on `addr` again, retrying while the old listener is being torn down.
async fn restart(addr: SocketAddr, config: &SimConfig) -> Sim {
    let deadline = Instant::now() + PROMPT;
    loop {
        match Sim::start(addr, config.clone()).await {
            Ok(sim) => return sim,
            Err(e) => {
                assert!(Instant::now() < deadline, "restarting {addr}: {e:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_loses_traffic_and_regains_it_when_restarted_on_its_address() {
    let (mut sims, eps, envoy) = failure_stack(2000).await;
    assert_gets_traffic(&envoy, &eps, "before the kill").await;

    let addr = sims[0].addr();
    drop(sims.remove(0));
    // Its next scrape fails to connect: up = 0 within an interval (1 s with slack).
    wait_endpoint_metric(
        &envoy,
        UP,
        &eps[0],
        "0",
        |v| v == 0.0,
        Duration::from_millis(1000),
    )
    .await;
    settle().await;
    assert_gets_none(&envoy, &eps, "pod killed").await;

    let back = restart(addr, &fast_sim()).await;
    back.pin(load(0, 0.1)).await;
    wait_endpoint_metric(
        &envoy,
        UP,
        &eps[0],
        "1",
        |v| v == 1.0,
        Duration::from_millis(1000),
    )
    .await;
    settle().await;
    assert_gets_traffic(&envoy, &eps, "after the restart").await;
    assert!(back.request_count() >= 5);
}

// ---- Collector modes --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_collector_steers_around_a_long_queue() {
    long_queue_is_avoided(Some(json!({"mode": "service"}))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_collector_steers_around_a_long_queue() {
    long_queue_is_avoided(Some(json!({"mode": "embedded"}))).await;
}

/// Scrapes of each pod over a 2 s window without inference traffic, counted by Envoy (per-host
/// `rq_total` of the pool's cluster). One collector scraping every 100 ms, on ticks of 25 ms,
/// makes 16–20 in 2 s; two workers both scraping would make 32–40. Accepted: 10..=26.
async fn scrapes_once_per_interval(mode: &str) {
    let sims = sims(2, &fast_sim()).await;
    let eps = endpoints(&sims);
    let mut config = config(&eps, "DEFAULT");
    config["collector"] = json!({"mode": mode});
    let envoy = start_envoy(&config).await;
    wait_all_up(&envoy, &eps).await;
    settle().await;

    const WINDOW: Duration = Duration::from_secs(2);
    let mut before = Vec::new();
    for e in &eps {
        before.push(upstream_requests(&envoy, POOL, e).await);
    }
    let start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let mut after = Vec::new();
    for e in &eps {
        after.push(upstream_requests(&envoy, POOL, e).await);
    }
    let elapsed = start.elapsed();
    let expected = elapsed.as_millis() as f64 / INTERVAL_MS as f64;
    for (i, e) in eps.iter().enumerate() {
        let n = after[i] - before[i];
        eprintln!("{mode}: {n} scrapes of {e} in {elapsed:?}");
        assert!(
            (10..=26).contains(&n),
            "{mode} collector: {n} scrapes of {e} in {elapsed:?} (one collector makes ≈ {expected:.0}; \
             want 10..=26)"
        );
        assert_eq!(
            sims[i].request_count(),
            0,
            "no inference traffic in the window"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_collector_scrapes_from_one_worker_only() {
    scrapes_once_per_interval("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_collector_scrapes_once_per_interval() {
    scrapes_once_per_interval("service").await;
}

/// Every pod's /metrics fails at once (a pool-wide outage, as when every page times out under a
/// burst), then one answers again: it must not draw every request. The others' last numbers are
/// trusted while within staleness, so the requests keep spreading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_wide_metrics_outage_does_not_herd_onto_the_first_pod_back() {
    let sims = sims(4, &fast_sim()).await;
    let eps = endpoints(&sims);
    for s in &sims {
        s.pin(load(3, 0.1)).await;
    }
    let mut config = config(&eps, "DEFAULT");
    set_metrics(&mut config, "stalenessMs", json!(20_000));
    let envoy = start_envoy(&config).await;
    wait_gauges(&envoy, QUEUE_SIZE, &eps, &[3.0; 4]).await;
    for s in &sims {
        s.set_metrics_fail(MetricsFail::Status500).await;
    }
    for ep in &eps {
        wait_endpoint_metric(&envoy, UP, ep, "0", |v| v == 0.0, Duration::from_secs(5)).await;
    }
    sims[0].set_metrics_fail(MetricsFail::Ok).await;
    wait_endpoint_metric(
        &envoy,
        UP,
        &eps[0],
        "1",
        |v| v == 1.0,
        Duration::from_secs(5),
    )
    .await;
    settle().await;
    let pods = sequential(&envoy.client().unwrap(), BASE, 40).await;
    let counts = tally(&eps, &pods);
    assert!(
        counts[0] <= 25,
        "the first pod back took {} of 40: {counts:?}",
        counts[0]
    );
    assert!(counts[1..].iter().all(|&n| n > 0), "{counts:?}");
}
