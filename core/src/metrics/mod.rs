//! Scraped `/metrics` pages → [`EndpointState`](crate::pool::EndpointState).
//!
//! `prometheus` is a zero-copy Prometheus text-format reader that skips unwanted lines
//! unparsed; `engines` knows which series each serving engine (vLLM, SGLang, TensorRT-LLM,
//! Triton, vLLM-Ascend) uses and folds a page into one endpoint state.

mod engines;
mod prometheus;

pub use engines::{parse_page, Dialect, Scrape, OVERRIDE_KEYS};
pub use prometheus::{for_each_sample, Labels, ParseStats, Sample, Samples};
