//! `local-stack` (what `make run` starts): four simulated vLLM pods serving the canary adapters
//! and the real Envoy with `envoy/envoy.yaml`, until Ctrl-C or SIGTERM.

use anyhow::{Context, Result};
use wasm_tests::envoy::Envoy;
use wasm_tests::pod::{Pod, PodOptions};

/// The pool in `envoy/envoy.yaml` (and `examples/canary/config.json`).
const PODS: [&str; 4] = [
    "127.0.0.11:8000",
    "127.0.0.12:8000",
    "127.0.0.13:8000",
    "127.0.0.14:8000",
];

#[tokio::main]
async fn main() -> Result<()> {
    let root = wasm_tests::repo_root();
    let options = PodOptions {
        adapters: wasm_tests::canary_adapters(),
        strict_models: true,
        ..PodOptions::default()
    };
    let mut pods = Vec::new();
    for addr in PODS {
        let pod = Pod::start(addr.parse()?, options.clone())
            .await
            .with_context(|| {
                format!("starting the simulated pod {addr} (is another stack running?)")
            })?;
        pods.push(pod);
    }
    let config = root.join("envoy/envoy.yaml");
    let envoy = Envoy::start_file(&config, &root).await?;
    println!("pods (vllm-sim): {}", PODS.join(", "));
    println!(
        "envoy: listener http://{}  admin http://{}",
        envoy.addr()?,
        envoy.admin()
    );
    println!("envoy log: {}", envoy.log_path().display());
    println!();
    println!("try:");
    println!(
        "  curl -s 127.0.0.1:8080/v1/completions -H 'content-type: application/json' \
         -d '{{\"model\":\"lora-request\",\"prompt\":\"hi\",\"max_tokens\":5}}'"
    );
    println!("  curl -s 127.0.0.1:9901/stats/prometheus | grep inference_router");
    println!();
    println!("Ctrl-C stops the stack.");
    wasm_tests::wait_for_shutdown_signal().await?;
    println!("stopping");
    drop(envoy);
    drop(pods);
    Ok(())
}
