//! The scheduling benchmark's own parts: the oracle's choices on simulated pods in known states,
//! and one small run of the bench through the real Envoy, so `make bench` cannot rot unnoticed.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::time::Duration;
use wasm_tests::client::Client;
use wasm_tests::schedbench::oracle::Oracle;
use wasm_tests::schedbench::workload::{self, Scale};
use wasm_tests::schedbench::{self, Setup, Strategy};
use wasm_tests::sim::{start_sims, Sim, SimConfig};
use wasm_tests::PROMPT;

fn config() -> SimConfig {
    SimConfig {
        adapters: ["a", "b", "c"].map(str::to_string).to_vec(),
        // Slow enough that a long request is still running when the oracle looks.
        time_scale: 0.05,
        ..SimConfig::default()
    }
}

/// Send a long request straight to `sim` (no Envoy) and leave it running.
fn occupy(sim: &Sim, model: &str, prompt: &str) -> tokio::task::JoinHandle<()> {
    let client = Client::new(sim.addr()).unwrap();
    let body = json!({"model": model, "prompt": prompt, "max_tokens": 2000}).to_string();
    tokio::spawn(async move {
        let _ = client.post("/v1/completions", body, &[]).await;
    })
}

async fn wait_running(sim: &Sim, n: u64) {
    sim.wait_until(PROMPT, |s| s.running >= n).await.unwrap();
}

#[tokio::test]
async fn oracle_keeps_a_third_adapter_off_a_pod_whose_slots_are_taken() {
    let sims = start_sims(2, &config()).await.unwrap();
    let _a = occupy(&sims[0], "a", "one");
    let _b = occupy(&sims[0], "b", "two");
    wait_running(&sims[0], 2).await;
    let mut oracle = Oracle::new(&config(), sims.len());
    // Pod 0 is busier, but `c` would wait there for `a` or `b` to drain.
    let key = sims[0].request_key("c", "three");
    assert_eq!(oracle.pick(&sims, &key, 100), 1);
    // Again, with `c` now on its way to pod 1: it joins it there.
    let key = sims[0].request_key("c", "four");
    assert_eq!(oracle.pick(&sims, &key, 100), 1);
}

#[tokio::test]
async fn oracle_follows_the_prefix_cache_and_prompts_on_their_way() {
    let sims = start_sims(3, &config()).await.unwrap();
    // Under load, as in the benchmark: recomputing a prefix elsewhere delays that pod's requests.
    let _busy: Vec<_> = sims.iter().map(|s| occupy(s, "b", "busy")).collect();
    for s in &sims {
        wait_running(s, 1).await;
    }
    let system = workload::Rng::new(7).text(2000);
    let mut oracle = Oracle::new(&config(), sims.len());
    // The first prompt of a group goes somewhere; the group's next prompts follow it, first
    // while it is still on its way, then while its pod computes or holds the prefix.
    let first = format!("{system} question one");
    let key = sims[0].request_key("a", &first);
    let home = oracle.pick(&sims, &key, 10);
    let key = sims[0].request_key("a", &format!("{system} question two"));
    assert_eq!(oracle.pick(&sims, &key, 10), home, "in transit");
    let client = Client::new(sims[home].addr()).unwrap();
    let r = client
        .post(
            "/v1/completions",
            json!({"model": "a", "prompt": first, "max_tokens": 10}).to_string(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let key = sims[0].request_key("a", &format!("{system} question three"));
    assert_eq!(oracle.pick(&sims, &key, 10), home, "cached");
}

/// A miniature of `make bench`'s scheduling matrix: every strategy serves every request of a
/// small workload through the real Envoy, and the result has the figures the report reads.
#[tokio::test]
async fn a_small_run_serves_every_request_with_every_strategy() {
    let sim = SimConfig {
        base_model: "base".to_string(),
        adapters: (0..4).map(|i| format!("lora-{i}")).collect(),
        time_scale: 0.02,
        ..SimConfig::default()
    };
    let setup = Setup {
        sim,
        pods: 3,
        scrape_interval_ms: 20,
        sample_every_s: 1.0,
        scheduling_extra: None,
        flow_control: serde_json::json!({"enabled": true}),
    };
    let scale = Scale {
        random_prompts: 12,
        random_concurrency: 6,
        prefix_groups: 3,
        prefix_rate: 20.0,
    };
    let adapters = setup.sim.adapters.clone();
    let workloads = [
        (workload::zipf(&scale, &adapters), Strategy::ALL.to_vec()),
        (
            workload::shared_prefix(&scale, "base"),
            vec![Strategy::PrefixCache, Strategy::Oracle],
        ),
    ];
    for (w, strategies) in &workloads {
        for &strategy in strategies {
            let r = tokio::time::timeout(
                Duration::from_secs(120),
                schedbench::run(&setup, w, strategy),
            )
            .await
            .unwrap_or_else(|_| panic!("{} {}: timed out", w.key, strategy.key()))
            .unwrap();
            let what = format!("{} {}", w.key, strategy.key());
            assert_eq!(r["ok"], w.requests.len(), "{what}: {r}");
            assert_eq!(r["errors"], 0, "{what}");
            let served: u64 = r["per_pod_requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .sum();
            assert_eq!(
                served,
                w.requests.len() as u64,
                "{what}: every reply names its pod"
            );
            for k in ["ttft_s", "e2e_s", "itl_s"] {
                let p90 = r[k]["p90"].as_f64().unwrap();
                assert!(p90.is_finite() && p90 > 0.0, "{what}: {k} {p90}");
            }
            assert!(!r["kv_series"].as_array().unwrap().is_empty(), "{what}");
        }
    }
}
