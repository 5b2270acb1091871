//! `vllm-sim`: the fake vLLM pod as a process, one server per `--addr`.
//!
//! vllm-sim --addr 127.0.0.11:8000 --addr 127.0.0.12:8000 [--adapters sql-lora,tweet-summary]
//!          [--base-model tiny-llama] [--strict]
//!
//! `--addr` repeats or takes a comma-separated list; `--strict` answers vLLM's 404 for models that
//! are neither the base model nor a listed adapter.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use wasm_tests::pod::{Pod, PodOptions};

struct Args {
    addrs: Vec<SocketAddr>,
    options: PodOptions,
}

fn parse_args() -> Result<Args> {
    let mut addrs = Vec::new();
    let mut options = PodOptions::default();
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
            "--adapters" => {
                options.adapters = value("--adapters")?
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "--base-model" => options.base_model = value("--base-model")?,
            "--strict" => options.strict_models = true,
            "-h" | "--help" => {
                println!("usage: vllm-sim --addr IP:PORT[,IP:PORT…] [--addr …] [--adapters A,B] [--base-model NAME] [--strict]");
                std::process::exit(0);
            }
            other => return Err(anyhow!("unknown argument {other:?} (try --help)")),
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.11:8000".parse()?);
    }
    Ok(Args { addrs, options })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut pods = Vec::new();
    for addr in &args.addrs {
        let pod = Pod::start(*addr, args.options.clone()).await?;
        println!("vllm-sim serving on http://{}", pod.addr());
        pods.push(pod);
    }
    wasm_tests::wait_for_shutdown_signal().await?;
    drop(pods);
    Ok(())
}
