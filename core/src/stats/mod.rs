//! Metric names with labels, in the form Envoy's `stats_tags` turn into Prometheus labels. The
//! encoding is Istio's own, so Istio's `extraStatTags` work unchanged: each label as
//! `label=.=value;.;`, then the metric name (`pool=.=P;.;model=.=M;.;inference_router_requests_total`).
//! Envoy takes each label out with one rule per label, `(pool=\.=(.*?);\.;)` (shipped in `envoy/`),
//! leaving the bare name. Envoy matches every rule against the whole name, so a name with
//! `target_model` always has `model` before it: the `model` rule's leftmost match is then the model,
//! never the tail of `target_model=`.

pub mod request;

pub use request::{RequestLabels, RequestMetric, TargetLabel};

pub const REQUESTS_TOTAL: &str = "inference_router_requests_total";
pub const PROMPT_TOKENS_TOTAL: &str = "inference_router_prompt_tokens_total";
pub const COMPLETION_TOKENS_TOTAL: &str = "inference_router_completion_tokens_total";
pub const ENDPOINT_PICKS_TOTAL: &str = "inference_router_endpoint_picks_total";
pub const REQUEST_DURATION_MS: &str = "inference_router_request_duration_ms";
pub const TIME_TO_FIRST_TOKEN_MS: &str = "inference_router_time_to_first_token_ms";
pub const TIME_PER_OUTPUT_TOKEN_MS: &str = "inference_router_time_per_output_token_ms";
pub const ENDPOINT_QUEUE_SIZE: &str = "inference_router_endpoint_queue_size";
pub const ENDPOINT_RUNNING: &str = "inference_router_endpoint_running_requests";
pub const ENDPOINT_KV_PERMILLE: &str = "inference_router_endpoint_kv_cache_usage_permille";
pub const ENDPOINT_SCRAPE_ERRORS_TOTAL: &str = "inference_router_endpoint_scrape_errors_total";
pub const ENDPOINT_UP: &str = "inference_router_endpoint_up";
/// 1 while the endpoint is a member of its pool, 0 once it has left (its other gauges keep their
/// last values: Envoy cannot remove a stat).
pub const ENDPOINT_MEMBER: &str = "inference_router_endpoint_member";
/// This gateway's requests in flight to the endpoint, as the collector saw them at its last scrape.
pub const ENDPOINT_IN_FLIGHT: &str = "inference_router_endpoint_in_flight";
/// The largest linear memory of any of the plugin's Wasm VMs since Envoy started (each VM reports
/// its own once a second; a VM's memory never shrinks): flat once warm, or something leaks.
pub const WASM_MEMORY_BYTES: &str = "inference_router_wasm_memory_bytes";
/// Gate role: requests answered 503 because their reader's decision did not come in time.
pub const GATE_TIMEOUTS_TOTAL: &str = "inference_router_gate_timeouts_total";
/// Gate role: inference requests that reached the gate without the reader's mark.
pub const GATE_READER_MISSING_TOTAL: &str = "inference_router_gate_reader_missing_total";
/// Reader role: decisions made with no gate on the request's filter chain to carry them out.
pub const READER_GATE_MISSING_TOTAL: &str = "inference_router_reader_gate_missing_total";

/// Flow control: requests waiting in this Envoy's queues, per pool and priority.
pub const FLOW_QUEUE_REQUESTS: &str = "inference_router_flow_queue_requests";
/// Flow control: their body bytes.
pub const FLOW_QUEUE_BYTES: &str = "inference_router_flow_queue_bytes";
/// Flow control: how long a request waited before it was dispatched or dropped (ms).
pub const FLOW_QUEUE_WAIT_MS: &str = "inference_router_flow_queue_wait_ms";
/// Flow control: held requests by how they left the queue (`flow::OUTCOMES`).
pub const FLOW_REQUESTS_TOTAL: &str = "inference_router_flow_requests_total";
/// Flow control: the pool's saturation × 1000 (`WorkerScheduler::load`; ≥ 1000 saturated).
pub const POOL_SATURATION_PERMILLE: &str = "inference_router_pool_saturation_permille";

/// The labels every shipped `stats_tags` rule knows, in the order names carry them.
pub const LABELS: [&str; 6] = [
    "pool",
    "model",
    "target_model",
    "endpoint",
    "priority",
    "outcome",
];

/// `k=.=v;.;…name`. Label values are cleaned of the separators (`;` and `=`), so a value can never
/// open a label of its own.
pub fn name_with_labels(name: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(name.len() + labels.len() * 24);
    for (k, v) in labels {
        out.push_str(k);
        out.push_str("=.=");
        out.extend(
            v.chars()
                .map(|c| if c == ';' || c == '=' { '_' } else { c }),
        );
        out.push_str(";.;");
    }
    out.push_str(name);
    out
}

/// The `stats_tags` regex that extracts `label`, as Istio generates it for `extraStatTags`.
pub fn tag_regex(label: &str) -> String {
    format!("({label}=\\.=(.*?);\\.;)")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn labels_are_encoded_for_stats_tags() {
        assert_eq!(
            name_with_labels(
                ENDPOINT_QUEUE_SIZE,
                &[("pool", "p"), ("endpoint", "10.0.0.1:8000")]
            ),
            "pool=.=p;.;endpoint=.=10.0.0.1:8000;.;inference_router_endpoint_queue_size"
        );
        assert_eq!(
            name_with_labels("m", &[("model", "a;.;b=.=c")]),
            "model=.=a_._b_._c;.;m"
        );
        assert_eq!(tag_regex("pool"), r"(pool=\.=(.*?);\.;)");
    }
}
