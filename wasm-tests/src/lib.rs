//! The real-Envoy test layer: fake vLLM pods ([`pod`]), a harness that runs the real Envoy binary
//! with the built module ([`envoy`]), an HTTP client that can send exact bytes and read streams
//! chunk by chunk ([`client`]), and small statistics helpers for the distribution tests ([`stats`]).

pub mod addr;
pub mod client;
pub mod envoy;
pub mod installs;
pub mod pod;
pub mod schedbench;
pub mod sim;
pub mod stack;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

/// How long a test waits for something that should happen promptly before failing loudly.
pub const PROMPT: Duration = Duration::from_secs(20);

/// The canary example's ten adapters (examples/canary/config.json, envoy/envoy.yaml): what
/// `make run`'s pods and the scheduling benchmark serve.
pub fn canary_adapters() -> Vec<String> {
    let mut names = Vec::new();
    for base in ["sql-lora", "tweet-summary"] {
        names.push(base.to_string());
        names.extend((1..=4).map(|i| format!("{base}-{i}")));
    }
    names
}

/// The repository root: the parent of this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The real vLLM 0.32 fixtures in the repository (`<repo>/testdata/vllm-0.32-cpu`; see its README).
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("testdata/vllm-0.32-cpu")
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
