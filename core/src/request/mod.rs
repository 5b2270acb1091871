//! The per-request model decision: which pool serves the requested model and which target model
//! the body is rewritten to. Pure: the host gives the request's facts and a random number.

pub mod plan;

use crate::config::{Config, Model, UnknownModels};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelDecision<'c> {
    /// A configured model. `target` is the model the server will see; `None` leaves the body as sent.
    Configured {
        model: &'c Model,
        target: Option<&'c str>,
    },
    /// A model no entry lists, rewritten by its default pool's match-everything rewrite rule.
    Fallback { pool: usize, target: &'c str },
    /// A model no entry lists, routed unchanged to the default pool (`None`: Envoy's own route decides).
    Passthrough { pool: Option<usize> },
    /// A model no entry lists, with `unknownModels: reject` (404).
    Reject,
}

impl PartialEq for Model {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.pool == other.pool
    }
}
impl Eq for Model {}

/// Decide pool and target for `model`. `session` is the session header's value, else the body's
/// `user`; with one, the weighted pick is sticky.
pub fn decide_model<'c>(
    config: &'c Config,
    model: &str,
    session: Option<&[u8]>,
    random: u64,
) -> ModelDecision<'c> {
    let Some(entry) = config.model(model) else {
        // A rule that matches every model takes what nothing else serves, before unknownModels.
        let fallback = config
            .default_pool
            .and_then(|p| Some((p, config.rewrite_fallbacks.get(p)?.as_ref()?)));
        if let Some((pool, targets)) = fallback {
            let target = match session {
                Some(key) if !key.is_empty() => targets.pick_sticky(key),
                _ => targets.pick_random(random),
            };
            return ModelDecision::Fallback { pool, target };
        }
        return match config.unknown_models {
            UnknownModels::Reject => ModelDecision::Reject,
            UnknownModels::Passthrough => ModelDecision::Passthrough {
                pool: config.default_pool,
            },
        };
    };
    let target = entry.targets.as_ref().map(|t| match session {
        Some(key) if !key.is_empty() => t.pick_sticky(key),
        _ => t.pick_random(random),
    });
    ModelDecision::Configured {
        model: entry,
        // Rewriting to the same name would only cost a copy.
        target: target.filter(|t| *t != model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config(extra: &str) -> Config {
        let doc = format!(
            r#"{{"pools":[{{"name":"p","endpoints":["127.0.0.11:8000"]}},{{"name":"q","endpoints":[]}}],
               "models":[{{"modelName":"lora-request","poolRef":"p",
                           "targetModels":[{{"name":"a","weight":1}},{{"name":"b","weight":1}}]}},
                         {{"modelName":"base","poolRef":"q"}}]{extra}}}"#
        );
        Config::parse(doc.as_bytes()).unwrap()
    }

    #[test]
    fn configured_model_gets_a_target_of_its_pool() {
        let c = config("");
        match decide_model(&c, "lora-request", None, 0) {
            ModelDecision::Configured { model, target } => {
                assert_eq!(model.pool, 0);
                assert_eq!(target, Some("a"));
            }
            other => panic!("{other:?}"),
        }
        match decide_model(&c, "lora-request", None, 1) {
            ModelDecision::Configured { target, .. } => assert_eq!(target, Some("b")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn model_without_targets_is_served_as_named() {
        let c = config("");
        match decide_model(&c, "base", None, 0) {
            ModelDecision::Configured { model, target } => {
                assert_eq!(model.pool, 1);
                assert_eq!(target, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_makes_the_pick_ignore_randomness() {
        let c = config("");
        let first = decide_model(&c, "lora-request", Some(b"alice"), 0);
        for r in 1..50 {
            assert_eq!(decide_model(&c, "lora-request", Some(b"alice"), r), first);
        }
    }

    #[test]
    fn unknown_models_follow_the_policy() {
        let c = config(r#","defaultPool":"q""#);
        assert_eq!(
            decide_model(&c, "nope", None, 0),
            ModelDecision::Passthrough { pool: Some(1) }
        );
        let c = config(r#","unknownModels":"reject""#);
        assert_eq!(decide_model(&c, "nope", None, 0), ModelDecision::Reject);
    }
}
