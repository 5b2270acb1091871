//! Deployment coherence, seen from a filter: is a collector publishing for this plugin instance,
//! and was it given the same pools? A filter whose collector is missing or configured differently
//! still routes (failureMode decides how), so this is said once, loudly, with what to do, rather
//! than left for an operator to infer from odd routing.

use crate::config::{CollectorMode, Config};
use crate::host::{Level, Say, SharedStore};
use crate::shared::{decode_version, CollectorInfo, Keys};

pub struct Coherence {
    keys: Keys,
    pools: Vec<String>,
    fingerprint: u64,
    mode: CollectorMode,
    /// How long after its start a filter waits for a first publication before saying so.
    grace_ms: u64,
    started_ms: Option<u64>,
    next_check_ms: u64,
    said_missing: bool,
    said_mismatch: bool,
    settled: bool,
}

impl Coherence {
    /// None when nothing here needs a collector (no metrics-based strategy, no discovery).
    pub fn new(config: &Config) -> Option<Coherence> {
        let needed =
            config.strategy.needs_metrics() || config.pools.iter().any(|p| p.discovery.is_some());
        if !needed || config.pools.is_empty() {
            return None;
        }
        let longest = config
            .pools
            .iter()
            .map(|p| p.metrics.interval_ms.max(p.metrics.timeout_ms))
            .max()
            .unwrap_or(1000);
        Some(Coherence {
            keys: Keys::new(&config.instance),
            pools: config.pools.iter().map(|p| p.name.clone()).collect(),
            fingerprint: config.pools_fingerprint,
            mode: config.collector,
            grace_ms: 3 * longest + 5000,
            started_ms: None,
            next_check_ms: 0,
            said_missing: false,
            said_mismatch: false,
            settled: false,
        })
    }

    /// Whether a matching collector has been seen (nothing more to check).
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// Look, at most once a second, and say what is wrong once.
    pub fn check(
        &mut self,
        store: &(impl SharedStore + ?Sized),
        say: &(impl Say + ?Sized),
        now_ms: u64,
    ) {
        let started = *self.started_ms.get_or_insert(now_ms);
        if self.settled || now_ms < self.next_check_ms {
            return;
        }
        self.next_check_ms = now_ms + 1000;
        let info = store
            .get(&self.keys.collector())
            .and_then(|(b, _)| CollectorInfo::decode(&b));
        let published = self.pools.iter().any(|p| {
            store
                .get(&self.keys.version(p))
                .and_then(|(b, _)| decode_version(&b))
                .is_some()
        });
        if let Some(info) = info {
            if info.fingerprint != self.fingerprint {
                if !self.said_mismatch {
                    self.said_mismatch = true;
                    say.say(
                        Level::Error,
                        &format!(
                            "the {} collector publishing for this plugin was given different pools \
                             (fingerprint {:016x}, this filter {:016x}): give the filter and the \
                             collector the same document",
                            if info.service { "service" } else { "embedded" },
                            info.fingerprint,
                            self.fingerprint
                        ),
                    );
                }
                return;
            }
            if published {
                self.settled = true;
                return;
            }
        }
        if !published && !self.said_missing && now_ms.saturating_sub(started) >= self.grace_ms {
            self.said_missing = true;
            let what = match self.mode {
                CollectorMode::Service => {
                    "collector.mode is service: run the bootstrap collector (root_id \
                     inference-router-collector, singleton) with the same vm_id and the same \
                     document; under Istio or Envoy Gateway use collector.mode: embedded"
                }
                CollectorMode::Embedded => {
                    "collector.mode is embedded, so this filter's VMs scrape: see the log for \
                     scrape or discovery errors (the pool's cluster, the admin cluster)"
                }
            };
            say.say(
                Level::Error,
                &format!(
                    "no collector has published pool metrics {} s after this filter started; \
                     routing goes on as failureMode says. {what}",
                    self.grace_ms / 1000
                ),
            );
        }
    }
}
