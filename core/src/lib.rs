//! inference-router's pure core: every decision the gateway makes, with no proxy-wasm calls, so
//! it is tested natively and under wasm-bindgen-test. The host layer (`src/` at the top of the
//! repository) feeds it request facts and carries out what it decides; what the core needs of the
//! proxy (shared data, HTTP calls, stats, the log) it reaches through the traits of [`host`].
//!
//! Data flows one way: a request's body → [`request::plan`] (the [`openai`] scan, the [`rollout`]
//! pick of a target, the [`scheduling`] pick of an endpoint from the [`pool`] view) → what the host
//! does. Beside it, the [`collector`] scrapes the pods ([`metrics`]) and publishes through
//! [`shared`] what the pool views read.

pub mod collector;
pub mod config;
pub mod flow;
pub mod fuzzing;
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
