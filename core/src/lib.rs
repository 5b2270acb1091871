//! inference-router's pure core: every decision the gateway makes, with no proxy-wasm calls, so
//! it is tested natively and under wasm-bindgen-test. The host layer (`src/` at the top of the
//! repository) feeds it request facts and carries out what it decides.

pub mod collector;
pub mod config;
pub mod gate;
pub mod host;
pub mod metrics;
pub mod openai;
pub mod pool;
pub mod request;
pub mod rollout;
pub mod scheduling;
pub mod shared;
pub mod stats;
