//! A test stack: pods, the real Envoy with the plugin configured for them, and a client.

use crate::client::Client;
use crate::envoy::{Envoy, EnvoySpec};
use crate::pod::{start_pods, Pod, PodOptions, Recorded};
use anyhow::Result;
use serde_json::Value;

pub struct Stack {
    pub pods: Vec<Pod>,
    pub envoy: Envoy,
    pub client: Client,
}

impl Stack {
    /// Start `n` pods, build the plugin configuration from their endpoints with `config`, and
    /// start Envoy with it.
    pub async fn start(n: usize, config: impl FnOnce(&[String]) -> Value) -> Result<Stack> {
        let pods = start_pods(n, &PodOptions::default()).await?;
        let endpoints = crate::pod::endpoints(&pods);
        Stack::with_pods(pods, &config(&endpoints)).await
    }

    /// Start Envoy for pods that already run.
    pub async fn with_pods(pods: Vec<Pod>, config: &Value) -> Result<Stack> {
        Stack::with_spec(pods, &EnvoySpec::plugin(config)).await
    }

    pub async fn with_spec(pods: Vec<Pod>, spec: &EnvoySpec) -> Result<Stack> {
        let envoy = Envoy::start(spec).await?;
        let client = envoy.client()?;
        Ok(Stack {
            pods,
            envoy,
            client,
        })
    }

    /// Every request any pod received.
    /// What the pods served, without the metrics collector's `/metrics` scrapes.
    pub fn requests(&self) -> Vec<Recorded> {
        self.pods
            .iter()
            .flat_map(Pod::requests)
            .filter(|r| r.path() != "/metrics")
            .collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        crate::pod::endpoints(&self.pods)
    }
}
