//! `vllm-sim`: simulated vLLM pods (see `wasm_tests::sim`), one per `--addr`.
//!
//! vllm-sim --addr 127.0.0.11:8000,127.0.0.12:8000 [--addr …] [--adapters sql-lora,tweet-summary]
//!          [--base-model tiny-llama] [--time-scale 0.1] [--max-loras 2] [--max-num-seqs 256] …
//!
//! `--addr` repeats or takes a comma-separated list. Every `SimConfig` parameter has a flag
//! (`--help` lists them with their defaults). `--lenient` serves unknown model names as the base
//! model instead of vLLM's 404; `--strict` (the default) is accepted for compatibility.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use wasm_tests::sim::{Sim, SimConfig};

/// Flags that take a value and map onto `SimConfig::set`.
const PARAMS: &[&str] = &[
    "base-model",
    "adapters",
    "max-loras",
    "max-num-seqs",
    "max-num-batched-tokens",
    "num-gpu-blocks",
    "block-size",
    "max-model-len",
    "prefill-tokens-per-s",
    "itl-ms",
    "itl-growth",
    "lora-load-ms",
    "time-scale",
    "default-max-tokens",
    "kv-bytes-per-token",
    "prefix-caching",
];

fn usage() -> String {
    let d = SimConfig::default();
    format!(
        "usage: vllm-sim --addr IP:PORT[,IP:PORT…] [--addr …] [options]\n\
         options (defaults: Llama-2-7B on one A100-80GB):\n  \
         --base-model NAME ({})\n  --adapters A,B,… ({})\n  --max-loras N ({})\n  \
         --max-num-seqs N ({})\n  --max-num-batched-tokens N ({})\n  --num-gpu-blocks N ({})\n  \
         --block-size N ({})\n  --max-model-len N ({})\n  --prefill-tokens-per-s X ({})\n  \
         --itl-ms X ({}; step time = itl × (1 + growth × (batch − 1)) + prefill / rate + loads × load)\n  \
         --itl-growth X ({})\n  --lora-load-ms X ({})\n  --time-scale X ({}; 0.01 = 100× faster)\n  \
         --default-max-tokens N ({})\n  --kv-bytes-per-token N ({})\n  --prefix-caching true|false ({})\n  \
         --lenient (serve unknown models as the base model)\n\
         admin: POST /__sim/pin, DELETE /__sim/pin, POST /__sim/metrics-fail, GET /__sim/stats, GET /__sim/config",
        d.base_model,
        d.adapters.join(","),
        d.max_loras,
        d.max_num_seqs,
        d.max_num_batched_tokens,
        d.num_gpu_blocks,
        d.block_size,
        d.max_model_len,
        d.prefill_tokens_per_s,
        d.base_itl_s * 1000.0,
        d.itl_growth,
        d.lora_load_s * 1000.0,
        d.time_scale,
        d.default_max_tokens,
        d.kv_bytes_per_token,
        d.enable_prefix_caching,
    )
}

fn parse_args() -> Result<(Vec<SocketAddr>, SimConfig)> {
    let mut addrs = Vec::new();
    let mut config = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--addr" => {
                for a in value("--addr")?.split(',').filter(|a| !a.is_empty()) {
                    addrs.push(
                        a.parse()
                            .with_context(|| format!("--addr {a}: not ip:port"))?,
                    );
                }
            }
            "--strict" => config.strict_models = true,
            "--lenient" => config.strict_models = false,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            flag => match flag.strip_prefix("--").filter(|k| PARAMS.contains(k)) {
                Some(key) => config.set(key, &value(flag)?)?,
                None => return Err(anyhow!("unknown argument {flag:?} (try --help)")),
            },
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.11:8000".parse()?);
    }
    config.validate()?;
    Ok((addrs, config))
}

#[tokio::main]
async fn main() -> Result<()> {
    let (addrs, config) = parse_args()?;
    let mut sims = Vec::new();
    for addr in &addrs {
        let sim = Sim::start(*addr, config.clone()).await?;
        println!("vllm-sim serving on http://{}", sim.addr());
        sims.push(sim);
    }
    println!(
        "model {} with adapters [{}], time scale {}",
        config.base_model,
        config.adapters.join(", "),
        config.time_scale
    );
    wasm_tests::wait_for_shutdown_signal().await?;
    drop(sims);
    Ok(())
}
