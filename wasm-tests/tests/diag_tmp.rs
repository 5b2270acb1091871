#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod sched_support;
use sched_support::*;
use serde_json::json;
use wasm_tests::sim::endpoints;

fn text(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = format!("doc{seed} ");
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word_len = 2 + (x % 7) as usize;
        for k in 0..word_len {
            out.push((b'a' + ((x >> (8 + 5 * k)) % 26) as u8) as char);
        }
        out.push(' ');
    }
    out.truncate(len);
    out
}

async fn run(in_flight: f64, round: u64) -> String {
    let sims = sims(4, &fast_sim()).await;
    let eps = endpoints(&sims);
    let mut c = config(&eps, "PREFIX_CACHE");
    c["scheduling"]["scorers"] = json!({"inFlight": in_flight});
    let envoy = start_envoy(&c).await;
    wait_all_up(&envoy, &eps).await;
    settle().await;
    let shared = text(round, 4096);
    let client = envoy.client().unwrap();
    let mut order = Vec::new();
    for i in 0..30 {
        let r = client
            .post(
                "/v1/completions",
                completion_body(
                    BASE,
                    &format!("{shared}\nQuestion {i}: what does line {i} say?"),
                    2,
                ),
                &[],
            )
            .await
            .unwrap();
        order.push(eps.iter().position(|e| e == r.pod().unwrap()).unwrap());
    }
    let st = envoy
        .admin_get("/stats?filter=worker_.*downstream_cx_total|downstream_cx_total")
        .await
        .unwrap();
    format!("{order:?}\n{st}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_a() {
    for r in 0..6 {
        eprintln!("inflight1 {}", run(1.0, r).await);
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_b() {
    for r in 0..6 {
        eprintln!("inflight0 {}", run(0.0, 100 + r).await);
    }
}
