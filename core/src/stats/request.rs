//! The per-request metrics (docs/contract.md section 5) and their label values. Labels are
//! indices into the configuration, never request text, so a metric's label set is bounded by the
//! configuration: configured model names, else `other`. The host defines each (metric, labels)
//! once and caches its id.

use super::{
    name_with_labels, COMPLETION_TOKENS_TOTAL, PROMPT_TOKENS_TOTAL, REQUESTS_TOTAL,
    REQUEST_DURATION_MS, TIME_PER_OUTPUT_TOKEN_MS, TIME_TO_FIRST_TOKEN_MS,
};
use crate::config::Config;
use crate::request::ModelDecision;

/// The label value for anything the configuration does not name.
pub const OTHER: &str = "other";

/// Label values of one request, as indices into the configuration.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub pool: Option<usize>,
    /// Index into `config.models`.
    pub model: Option<usize>,
    pub target: TargetLabel,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetLabel {
    #[default]
    Other,
    /// The model is served as named.
    Same,
    /// Index into the model's target names.
    Target(usize),
    /// Index into the pool's rewrite fallback targets.
    Fallback(usize),
}

impl RequestLabels {
    /// The labels of a decided request.
    pub fn of(config: &Config, decision: &ModelDecision<'_>) -> RequestLabels {
        match decision {
            ModelDecision::Configured { model, target } => RequestLabels {
                pool: Some(model.pool),
                model: config.model_index(&model.name),
                target: match target {
                    None => TargetLabel::Same,
                    Some(t) => model
                        .targets
                        .as_ref()
                        .and_then(|ts| ts.names().iter().position(|n| n == t))
                        .map_or(TargetLabel::Same, TargetLabel::Target),
                },
            },
            ModelDecision::Fallback { pool, target } => RequestLabels {
                pool: Some(*pool),
                model: None,
                target: config
                    .rewrite_fallbacks
                    .get(*pool)
                    .and_then(Option::as_ref)
                    .and_then(|ts| ts.names().iter().position(|n| n == target))
                    .map_or(TargetLabel::Other, TargetLabel::Fallback),
            },
            ModelDecision::Passthrough { pool } => RequestLabels {
                pool: *pool,
                ..RequestLabels::default()
            },
            ModelDecision::Reject => RequestLabels::default(),
        }
    }
}

/// The per-request metrics and the time per output token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestMetric {
    /// `inference_router_requests_total` with this outcome.
    Requests(&'static str),
    PromptTokens,
    CompletionTokens,
    Duration,
    TimeToFirstToken,
    TimePerOutputToken,
}

impl RequestMetric {
    pub fn is_histogram(self) -> bool {
        matches!(
            self,
            RequestMetric::Duration
                | RequestMetric::TimeToFirstToken
                | RequestMetric::TimePerOutputToken
        )
    }

    /// The metric's name for `labels`, carrying the label values for Envoy's stats_tags.
    pub fn name(self, config: &Config, labels: RequestLabels) -> String {
        let pool = labels
            .pool
            .and_then(|i| config.pools.get(i))
            .map_or("none", |p| p.name.as_str());
        let model = labels.model.and_then(|i| config.models.get(i));
        let target = match (labels.target, model) {
            (TargetLabel::Same, Some(m)) => Some(m.name.as_str()),
            (TargetLabel::Target(i), Some(m)) => m
                .targets
                .as_ref()
                .and_then(|t| t.names().get(i))
                .map(String::as_str),
            (TargetLabel::Fallback(i), _) => labels
                .pool
                .and_then(|p| config.rewrite_fallbacks.get(p))
                .and_then(Option::as_ref)
                .and_then(|t| t.names().get(i))
                .map(String::as_str),
            _ => None,
        };
        let model = model.map_or(OTHER, |m| m.name.as_str());
        let target = target.unwrap_or(OTHER);
        let base = match self {
            RequestMetric::Requests(outcome) => {
                return name_with_labels(
                    REQUESTS_TOTAL,
                    &[
                        ("pool", pool),
                        ("model", model),
                        ("target_model", target),
                        ("outcome", outcome),
                    ],
                )
            }
            RequestMetric::PromptTokens => PROMPT_TOKENS_TOTAL,
            RequestMetric::CompletionTokens => COMPLETION_TOKENS_TOTAL,
            RequestMetric::Duration => REQUEST_DURATION_MS,
            RequestMetric::TimeToFirstToken => TIME_TO_FIRST_TOKEN_MS,
            RequestMetric::TimePerOutputToken => TIME_PER_OUTPUT_TOKEN_MS,
        };
        // `model` ahead of `target_model`: the `model` tag rule takes the leftmost `model=`,
        // which must not be inside `target_model=`.
        name_with_labels(
            base,
            &[("pool", pool), ("model", model), ("target_model", target)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::decide_model;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn names_carry_configured_labels_only() {
        let c = Config::parse(
            br#"{"pools":[{"name":"p","endpoints":[]}],"defaultPool":"p",
                 "models":[{"modelName":"lora","poolRef":"p",
                            "targetModels":[{"name":"a","weight":1}]}]}"#,
        )
        .unwrap();
        let d = decide_model(&c, "lora", None, 0);
        let l = RequestLabels::of(&c, &d);
        assert_eq!(
            RequestMetric::Requests("routed").name(&c, l),
            "pool=.=p;.;model=.=lora;.;target_model=.=a;.;outcome=.=routed;.;inference_router_requests_total"
        );
        // Any other name a client sends is `other`, never its own label value.
        let d = decide_model(&c, "client-says-anything", None, 0);
        let l = RequestLabels::of(&c, &d);
        assert_eq!(
            RequestMetric::CompletionTokens.name(&c, l),
            "pool=.=p;.;model=.=other;.;target_model=.=other;.;inference_router_completion_tokens_total"
        );
        assert!(RequestMetric::Duration.is_histogram());
        assert!(!RequestMetric::PromptTokens.is_histogram());
    }
}
