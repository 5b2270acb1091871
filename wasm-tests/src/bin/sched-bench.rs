//! `sched-bench`: scheduling quality of every strategy on the three workloads, through the real
//! Envoy with the real module, against simulated vLLM pods (see `wasm_tests::schedbench`).
//! `make bench` runs it; `bench.py report` turns its JSON into docs/benchmarks.md.
//!
//! sched-bench --out FILE [--quick] [--workloads random,prefix,zipf]
//!             [--strategies round-robin,RANDOM,LEAST_REQUEST,DEFAULT,PREFIX_CACHE,oracle]
//!             [--time-scale X] [--scrape-ms N]

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::time::Instant;
use wasm_tests::schedbench::workload::{self, Scale};
use wasm_tests::schedbench::{self, Setup, Strategy};
use wasm_tests::sim::SimConfig;

struct Args {
    out: String,
    quick: bool,
    workloads: Vec<String>,
    strategies: Vec<Strategy>,
    time_scale: Option<f64>,
    scrape_ms: Option<u64>,
    scheduling: Option<serde_json::Value>,
    prefix_rate: Option<f64>,
    concurrency: Option<usize>,
    prompts: Option<usize>,
    overload_rate: f64,
    overload_seconds: f64,
    pods: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        out: String::new(),
        quick: false,
        workloads: vec!["random".into(), "prefix".into(), "zipf".into()],
        strategies: Strategy::ALL.to_vec(),
        time_scale: None,
        scrape_ms: None,
        scheduling: None,
        prefix_rate: None,
        concurrency: None,
        prompts: None,
        overload_rate: 4.0,
        overload_seconds: 120.0,
        pods: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => a.out = value()?,
            "--quick" => a.quick = true,
            "--workloads" => a.workloads = value()?.split(',').map(str::to_string).collect(),
            "--strategies" => {
                a.strategies = value()?
                    .split(',')
                    .map(Strategy::parse)
                    .collect::<Result<_>>()?
            }
            "--time-scale" => a.time_scale = Some(value()?.parse()?),
            "--scrape-ms" => a.scrape_ms = Some(value()?.parse()?),
            // Extra plugin `scheduling` fields as JSON, e.g. '{"scorers":{"loraAffinity":4}}'.
            "--scheduling" => a.scheduling = Some(serde_json::from_str(&value()?)?),
            // Workload sizes: (b)'s arrival rate, (a)/(c)'s concurrency and prompts.
            "--prefix-rate" => a.prefix_rate = Some(value()?.parse()?),
            "--concurrency" => a.concurrency = Some(value()?.parse()?),
            "--prompts" => a.prompts = Some(value()?.parse()?),
            // The overload workload: arrivals per simulated second and for how long.
            "--overload-rate" => a.overload_rate = value()?.parse()?,
            "--overload-seconds" => a.overload_seconds = value()?.parse()?,
            "--pods" => a.pods = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if a.out.is_empty() {
        bail!("--out FILE is required");
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut sim = SimConfig {
        base_model: "meta-llama/Llama-2-7b-hf".to_string(),
        adapters: wasm_tests::canary_adapters(),
        ..SimConfig::default()
    };
    // 20× faster than a GPU: wall time stays short while 1 ms of host delay is only 20 ms
    // simulated (latencies are read from the pods' own timelines, which the delay does not enter).
    sim.time_scale = args.time_scale.unwrap_or(0.05);
    let time_scale = sim.time_scale;
    // The plugin's default is 100 ms of wall time; scaled with the simulation it would be 5 ms,
    // more scrapes than this 2-CPU machine serves beside everything else. 20 ms wall = 400 ms
    // simulated: the collector is staler, relative to the engines, than in production.
    let scrape_ms = args.scrape_ms.unwrap_or(20);
    let setup = Setup {
        sim,
        pods: args.pods,
        scrape_interval_ms: scrape_ms,
        sample_every_s: 2.0,
        scheduling_extra: args.scheduling.clone(),
        // The wait bounds in wall milliseconds: 60 s and 10 s simulated, the plugin's defaults.
        flow_control: json!({"enabled": true,
                             "ttlMs": (60_000.0 * time_scale).round() as u64,
                             "noEndpointTtlMs": (10_000.0 * time_scale).round() as u64}),
    };
    let scale = if args.quick {
        Scale {
            random_prompts: 160,
            random_concurrency: 80,
            prefix_groups: 40,
            prefix_rate: 20.0,
        }
    } else {
        Scale {
            random_prompts: 600,
            random_concurrency: 200,
            prefix_groups: 150,
            prefix_rate: 20.0,
        }
    };
    let mut scale = scale;
    if let Some(r) = args.prefix_rate {
        scale.prefix_rate = r;
    }
    if let Some(c) = args.concurrency {
        scale.random_concurrency = c;
    }
    if let Some(n) = args.prompts {
        scale.random_prompts = n;
    }
    let adapters = setup.sim.adapters.clone();
    let mut results = Vec::new();
    let started = Instant::now();
    for key in &args.workloads {
        let w = match key.as_str() {
            "random" => workload::random(&scale, &adapters),
            "prefix" => workload::shared_prefix(&scale, &setup.sim.base_model),
            "zipf" => workload::zipf(&scale, &adapters),
            "overload" => workload::overload(args.overload_rate, args.overload_seconds),
            other => bail!("unknown workload {other}"),
        };
        for strategy in &args.strategies {
            let t = Instant::now();
            let r = schedbench::run(&setup, &w, *strategy)
                .await
                .with_context(|| format!("{} with {}", w.key, strategy.key()))?;
            let get = |k: &str, q: &str| r[k][q].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "sched-bench: {:<7} {:<13} {:>4} ok {:>3} err  {:6.2} req/s {:8.0} tok/s (sustained {:6.0})  TTFT p50 {:7.2} p90 {:7.2} s  ITL p50 {:6.1} ms  prefix {:4.2}  loads {:>4}  ({:.1} s wall)",
                w.key,
                strategy.key(),
                r["ok"],
                r["errors"],
                r["requests_per_s"].as_f64().unwrap_or(f64::NAN),
                r["output_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                r["sustained_output_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                get("ttft_s", "p50"),
                get("ttft_s", "p90"),
                get("itl_s", "p50") * 1000.0,
                r["prefix_hit_rate"].as_f64().unwrap_or(0.0),
                r["adapter_loads"],
                t.elapsed().as_secs_f64()
            );
            if let Some(classes) = r["by_class"].as_object() {
                for (class, c) in classes {
                    eprintln!(
                        "sched-bench:   {class:<10} {:>5} sent {:>5} ok {}  client TTFT p50 {:7.2} p90 {:7.2} p99 {:7.2} s  {:6.0} tok/s  tenants {}",
                        c["requests"], c["ok"], c["statuses"],
                        c["ttft_client_s"]["p50"].as_f64().unwrap_or(f64::NAN),
                        c["ttft_client_s"]["p90"].as_f64().unwrap_or(f64::NAN),
                        c["ttft_client_s"]["p99"].as_f64().unwrap_or(f64::NAN),
                        c["output_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                        c["tenants_served"],
                    );
                }
            }
            results.push(r);
        }
        let mut w_json = json!({"key": w.key, "title": w.title, "description": w.description});
        w_json["requests"] = json!(w.requests.len());
        results.push(json!({"workload_info": w_json}));
    }
    let doc = json!({
        "sim": setup.sim.to_json(),
        "pods": setup.pods,
        "scrape_interval_ms": setup.scrape_interval_ms,
        "quick": args.quick,
        "wall_s": started.elapsed().as_secs_f64(),
        "results": results,
    });
    std::fs::write(&args.out, serde_json::to_string(&doc)?)
        .with_context(|| format!("writing {}", args.out))?;
    eprintln!(
        "sched-bench: wrote {} in {:.0} s",
        args.out,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
