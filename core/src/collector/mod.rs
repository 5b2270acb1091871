//! The metrics collector: on every tick it starts the scrapes that are due (one in flight per
//! endpoint at most), parses each answer with the pool's engine dialect, and publishes the pool's
//! snapshot in shared data for the filters. Two ways to run (docs/contract.md section 2):
//! - service: the singleton bootstrap VM (`root_id: inference-router-collector`) always scrapes;
//! - embedded: every worker's filter root runs this, and only the holder of a lease in shared
//!   data scrapes and publishes; a holder that stops renewing is replaced within two intervals.
//!
//! Everything here goes through the [`Host`] traits, so it runs natively in tests against an
//! in-memory shared store (`crate::host::memory`).

pub mod coherence;
mod state;

pub use state::{CollectorState, Due};

use crate::config::{CollectorMode, Config, Discovery};
use crate::host::{update, Host, Level};
use crate::metrics::{parse_page, Dialect};
use crate::pool::counters::{self, Counts, PoolCounters};
use crate::pool::discovery::members_from_admin;
use crate::scheduling::endpoint_id;
use crate::shared::lease::Lease;
use crate::shared::{self, encode_version, CollectorInfo, Keys};
use crate::stats;
use std::collections::HashMap;
use std::time::Duration;

/// Stat names of one endpoint, built once.
struct EndpointStats {
    queue: String,
    running: String,
    kv_permille: String,
    up: String,
    member: String,
    in_flight: String,
    scrape_errors: String,
}

impl EndpointStats {
    fn new(pool: &str, endpoint: &str) -> EndpointStats {
        let n = |name| stats::name_with_labels(name, &[("pool", pool), ("endpoint", endpoint)]);
        EndpointStats {
            queue: n(stats::ENDPOINT_QUEUE_SIZE),
            running: n(stats::ENDPOINT_RUNNING),
            kv_permille: n(stats::ENDPOINT_KV_PERMILLE),
            up: n(stats::ENDPOINT_UP),
            member: n(stats::ENDPOINT_MEMBER),
            in_flight: n(stats::ENDPOINT_IN_FLIGHT),
            scrape_errors: n(stats::ENDPOINT_SCRAPE_ERRORS_TOTAL),
        }
    }
}

/// A pool's member discovery through Envoy's admin `/clusters`.
struct DiscoveryTarget {
    config: Discovery,
    next_due_ms: u64,
    in_flight: bool,
}

/// The admin's cluster list is read whole; a sidecar with every service of a big mesh can list
/// many clusters, so the cap is generous.
pub const DISCOVERY_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// An endpoint's scrape failures are said at warn at most this often.
const WARN_EVERY_MS: u64 = 60_000;
/// Bound of the endpoints remembered for that (members come and go with discovery).
const WARNED_MAX: usize = 4096;

/// What came back for a call.
enum Answer<'a> {
    Got(Option<u16>, Option<&'a [u8]>),
    TooLarge(usize),
}

/// What an outstanding HTTP call of the collector is for.
enum Call {
    /// A metrics scrape of the endpoint with this address (its index may move with discovery).
    /// `picks`: the endpoint's pick counter when the scrape was sent. Picks after that count as not
    /// yet in the scraped numbers: a request picked while the page is on its way may be missing
    /// from it, and counting it twice is the safer error (it spreads a burst, never herds it).
    Scrape {
        pool: usize,
        endpoint: String,
        /// The endpoint's index when the scrape started: found again without a search unless
        /// the members changed meanwhile.
        index: usize,
        picks: u32,
    },
    Discovery {
        pool: usize,
    },
}

struct PoolTarget {
    name: String,
    cluster: String,
    path: String,
    metrics_port: Option<u16>,
    timeout: Duration,
    max_page_bytes: u64,
    endpoints: Vec<String>,
    dialect: Dialect,
    counters: PoolCounters,
    stats: Vec<EndpointStats>,
    discovery: Option<DiscoveryTarget>,
    /// Whether the per-endpoint stats were set up (members gauge, zero counters).
    stats_ready: bool,
}

impl PoolTarget {
    fn counters_for(keys: &Keys, name: &str, endpoints: &[String]) -> PoolCounters {
        PoolCounters::new(
            keys.counters(name),
            endpoints.iter().map(|e| endpoint_id(e)).collect(),
        )
    }
}

pub struct Collector {
    keys: Keys,
    info: CollectorInfo,
    /// A service-mode collector whose document asks for the embedded one.
    mode_mismatch: bool,
    pools: Vec<PoolTarget>,
    state: CollectorState,
    calls: HashMap<u32, Call>,
    /// When each endpoint's scrape failure was last said at warn.
    warned_ms: HashMap<String, u64>,
    destination_header: String,
    /// Embedded mode: this worker's lease identity; None in service mode.
    lease_owner: Option<u64>,
    lease_ttl_ms: u64,
    holds_lease: bool,
    /// Said what it had to say at its start (mode mismatch, another collector's document).
    announced: bool,
    tick: Duration,
}

impl Collector {
    /// Dialect errors (bad `metrics.names` overrides) refuse the configuration.
    pub fn new(config: &Config, embedded_owner: Option<u64>) -> Result<Collector, String> {
        let keys = Keys::new(&config.instance);
        let mut pools = Vec::with_capacity(config.pools.len());
        for (i, p) in config.pools.iter().enumerate() {
            let dialect = Dialect::new(p.engine, &p.metrics.names)
                .map_err(|e| format!("pools[{i}].metrics.names: {e}"))?;
            pools.push(PoolTarget {
                cluster: p.cluster.clone(),
                path: p.metrics.path.clone(),
                metrics_port: p.metrics.port,
                timeout: Duration::from_millis(p.metrics.timeout_ms),
                max_page_bytes: p.metrics.max_page_bytes,
                counters: PoolTarget::counters_for(&keys, &p.name, &p.endpoints),
                stats: p
                    .endpoints
                    .iter()
                    .map(|e| EndpointStats::new(&p.name, e))
                    .collect(),
                endpoints: p.endpoints.clone(),
                dialect,
                name: p.name.clone(),
                discovery: p.discovery.clone().map(|config| DiscoveryTarget {
                    config,
                    next_due_ms: 0,
                    in_flight: false,
                }),
                stats_ready: false,
            });
        }
        let min_interval = config
            .pools
            .iter()
            .map(|p| p.metrics.interval_ms)
            .min()
            .unwrap_or(1000);
        Ok(Collector {
            info: CollectorInfo {
                fingerprint: config.pools_fingerprint,
                service: embedded_owner.is_none(),
                since_ms: 0,
            },
            mode_mismatch: embedded_owner.is_none() && config.collector == CollectorMode::Embedded,
            keys,
            pools,
            state: CollectorState::new(config),
            calls: HashMap::new(),
            warned_ms: HashMap::new(),
            destination_header: config.destination_header.clone(),
            lease_owner: embedded_owner,
            lease_ttl_ms: 2 * min_interval,
            holds_lease: embedded_owner.is_none(),
            announced: false,
            // A tick a quarter of the shortest interval keeps scrapes close to their due time.
            tick: Duration::from_millis((min_interval / 4).max(10)),
        })
    }

    pub fn tick_period(&self) -> Duration {
        self.tick
    }

    /// Whether this collector scrapes and publishes now (service mode: always).
    pub fn holds_lease(&self) -> bool {
        self.holds_lease
    }

    pub fn on_tick(&mut self, host: &(impl Host + ?Sized), now_ms: u64) {
        if let Some(me) = self.lease_owner {
            let held = self.renew_lease(host, me, now_ms);
            if held && !self.holds_lease {
                host.say(
                    Level::Info,
                    &format!("collector lease taken by this worker ({me:016x})"),
                );
                self.adopt_published(host);
                self.announced = false;
            } else if !held && self.holds_lease {
                host.say(
                    Level::Info,
                    &format!(
                        "collector lease lost by this worker ({me:016x}); it stops publishing"
                    ),
                );
            }
            self.holds_lease = held;
            if !held {
                return;
            }
        }
        if !self.announced {
            self.announce(host, now_ms);
        }
        for pool in 0..self.pools.len() {
            self.ready_stats(host, pool);
            self.start_discovery(host, pool, now_ms);
        }
        // Each pool's pick counters are read once per tick, not once per scrape: the table holds
        // every member, so reading it per scrape made a round of N scrapes cost O(N²).
        let mut counts: Vec<Option<Counts>> = vec![None; self.pools.len()];
        for due in self.state.due(now_ms) {
            let Some(slot) = counts.get_mut(due.pool) else {
                continue;
            };
            if slot.is_none() {
                *slot = self.pools.get(due.pool).map(|p| p.counters.load(host));
            }
            if let Some(c) = slot.as_ref() {
                self.start_scrape(host, due, c, now_ms);
            }
        }
        for pool in 0..self.pools.len() {
            self.publish(host, pool);
        }
    }

    /// Say once what the deployment should know, and publish this collector's info.
    fn announce(&mut self, host: &(impl Host + ?Sized), now_ms: u64) {
        self.announced = true;
        if self.mode_mismatch {
            host.say(
                Level::Warn,
                "this is the service-mode collector (root_id inference-router-collector), but the \
                 document says collector.mode: embedded, so the filters scrape too: give the \
                 filters collector.mode: service, or remove this bootstrap collector",
            );
        }
        let key = self.keys.collector();
        if let Some(other) = host.get(&key).and_then(|(b, _)| CollectorInfo::decode(&b)) {
            if other.fingerprint != self.info.fingerprint {
                host.say(
                    Level::Warn,
                    &format!(
                        "another collector with different pools (fingerprint {:016x}, this one \
                         {:016x}) published for instance {} before: give every role of this \
                         plugin the same document",
                        other.fingerprint,
                        self.info.fingerprint,
                        self.keys.collector()
                    ),
                );
            }
        }
        self.info.since_ms = now_ms;
        host.set(&key, &self.info.encode(), None);
    }

    /// Take or renew the lease with compare-and-swap; true when this worker holds it now.
    fn renew_lease(&self, host: &(impl Host + ?Sized), me: u64, now_ms: u64) -> bool {
        let ttl = self.lease_ttl_ms;
        update(host, &self.keys.lease(), 1, |current| {
            let current = current.and_then(Lease::decode);
            Lease::claim(current, me, now_ms, ttl).map(|l| l.encode().to_vec())
        })
    }

    /// A new lease holder continues from what the previous one published.
    fn adopt_published(&mut self, host: &(impl Host + ?Sized)) {
        for (i, p) in self.pools.iter().enumerate() {
            if let Some((bytes, _)) = host.get(&self.keys.snapshot(&p.name)) {
                if let Ok(previous) = shared::decode(&bytes) {
                    self.state.adopt(i, &previous);
                }
            }
        }
    }

    /// Member gauges and zero counters for every endpoint, once per member list: so `rate()` and
    /// `increase()` over the error counter see its first error, and a departed endpoint's gauges
    /// are marked as no longer a member.
    fn ready_stats(&mut self, host: &(impl Host + ?Sized), pool: usize) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if p.stats_ready {
            return;
        }
        p.stats_ready = true;
        for s in &p.stats {
            host.set_gauge(&s.member, 1);
            host.add_counter(&s.scrape_errors, 0);
        }
    }

    fn start_scrape(
        &mut self,
        host: &(impl Host + ?Sized),
        due: Due,
        counts: &Counts,
        now_ms: u64,
    ) {
        let Some(p) = self.pools.get(due.pool) else {
            return;
        };
        let Some(endpoint) = p.endpoints.get(due.endpoint) else {
            return;
        };
        let target = match (p.metrics_port, endpoint.rsplit_once(':')) {
            (Some(port), Some((ip, _))) => format!("{ip}:{port}"),
            _ => endpoint.clone(),
        };
        let headers = [
            (":method", "GET"),
            (":path", p.path.as_str()),
            (":authority", target.as_str()),
            (self.destination_header.as_str(), target.as_str()),
        ];
        match host.dispatch(&p.cluster, &headers, p.timeout) {
            Ok(token) => {
                let picks = counts.picks.get(due.endpoint).copied().unwrap_or(0);
                if let Some(names) = p.stats.get(due.endpoint) {
                    let in_flight = counts.in_flight.get(due.endpoint).copied().unwrap_or(0);
                    host.set_gauge(&names.in_flight, u64::from(in_flight));
                }
                let call = Call::Scrape {
                    pool: due.pool,
                    endpoint: endpoint.clone(),
                    index: due.endpoint,
                    picks,
                };
                self.calls.insert(token, call);
            }
            Err(e) => {
                host.say(
                    Level::Warn,
                    &format!(
                        "scrape of {target} via cluster {} not started: {e}",
                        p.cluster
                    ),
                );
                self.state.not_started(due, now_ms);
            }
        }
    }

    /// The most bytes of `token`'s answer worth reading: a scrape's page is capped by its pool's
    /// `metrics.maxPageBytes`, the admin's cluster list by [`DISCOVERY_MAX_BYTES`]. None: not
    /// this collector's call. The host checks before it copies the body into the VM.
    pub fn body_limit(&self, token: u32) -> Option<usize> {
        let limit = match self.calls.get(&token)? {
            Call::Scrape { pool, .. } => self.pools.get(*pool).map_or(0, |p| p.max_page_bytes),
            Call::Discovery { .. } => DISCOVERY_MAX_BYTES,
        };
        Some(usize::try_from(limit).unwrap_or(usize::MAX))
    }

    /// A call's answer: `status` None means the call failed (reset, timeout).
    pub fn on_response(
        &mut self,
        host: &(impl Host + ?Sized),
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
        now_ms: u64,
    ) {
        self.answer(host, token, Answer::Got(status, body), now_ms);
    }

    /// A call answered with more than [`Collector::body_limit`] bytes: a failed scrape (or
    /// discovery refresh), the body left unread.
    pub fn on_oversized(
        &mut self,
        host: &(impl Host + ?Sized),
        token: u32,
        size: usize,
        now_ms: u64,
    ) {
        self.answer(host, token, Answer::TooLarge(size), now_ms);
    }

    fn answer(&mut self, host: &(impl Host + ?Sized), token: u32, answer: Answer, now_ms: u64) {
        let (due, sent_picks) = match self.calls.remove(&token) {
            None => return,
            Some(Call::Discovery { pool }) => {
                return self.on_discovery(host, pool, answer);
            }
            // Members may have changed while the scrape ran: find the endpoint by address.
            Some(Call::Scrape {
                pool,
                endpoint,
                index,
                picks,
            }) => {
                // Where it was when the scrape started, unless the members changed since.
                let Some(i) = self.pools.get(pool).and_then(|p| {
                    if p.endpoints.get(index) == Some(&endpoint) {
                        Some(index)
                    } else {
                        p.endpoints.iter().position(|e| *e == endpoint)
                    }
                }) else {
                    return;
                };
                (Due { pool, endpoint: i }, picks)
            }
        };
        let Some(p) = self.pools.get(due.pool) else {
            return;
        };
        let endpoint = p
            .endpoints
            .get(due.endpoint)
            .map(String::as_str)
            .unwrap_or("?");
        let failure = match answer {
            Answer::Got(Some(200), Some(page)) => {
                let scrape = parse_page(page, &p.dialect);
                if scrape.missing.is_empty() {
                    self.state.succeeded(due, scrape.state, now_ms, sent_picks);
                    None
                } else {
                    Some(format!(
                        "metrics missing from the page: {}",
                        scrape.missing.join(", ")
                    ))
                }
            }
            Answer::Got(status, _) => Some(match status {
                Some(s) => format!("status {s}"),
                None => "no answer (reset or timeout)".to_string(),
            }),
            Answer::TooLarge(size) => Some(format!(
                "page of {size} bytes is over metrics.maxPageBytes ({})",
                p.max_page_bytes
            )),
        };
        if let Some(why) = failure {
            // At warn when an endpoint starts failing, at most once a minute (a flapping page
            // would say it at every other interval); at debug while it goes on failing.
            let quiet = self
                .warned_ms
                .get(endpoint)
                .is_some_and(|t| now_ms < t.saturating_add(WARN_EVERY_MS));
            let level = if self.state.failures(due) == 0 && !quiet {
                if self.warned_ms.len() >= WARNED_MAX {
                    self.warned_ms
                        .retain(|_, t| now_ms < t.saturating_add(WARN_EVERY_MS));
                }
                self.warned_ms.insert(endpoint.to_string(), now_ms);
                Level::Warn
            } else {
                Level::Debug
            };
            host.say(level, &format!("scrape of {endpoint} failed: {why}"));
            self.state.failed(due, now_ms);
        }
        self.record_stats(host, due);
        if !self.state.busy(due.pool) {
            self.publish_checked(host, due.pool, now_ms);
        }
    }

    /// Ask Envoy's admin for the members of a discovery pool, when due.
    fn start_discovery(&mut self, host: &(impl Host + ?Sized), pool: usize, now_ms: u64) {
        let Some(d) = self.pools.get_mut(pool).and_then(|p| p.discovery.as_mut()) else {
            return;
        };
        if d.in_flight || now_ms < d.next_due_ms {
            return;
        }
        d.next_due_ms = now_ms + d.config.refresh_ms;
        let headers = [
            (":method", "GET"),
            (":path", d.config.admin_path.as_str()),
            (":authority", "envoy-admin"),
        ];
        let timeout = Duration::from_millis(d.config.refresh_ms.clamp(100, 5000));
        match host.dispatch(&d.config.admin_cluster, &headers, timeout) {
            Ok(token) => {
                d.in_flight = true;
                self.calls.insert(token, Call::Discovery { pool });
            }
            Err(e) => host.say(
                Level::Warn,
                &format!(
                    "discovery via cluster {} not started: {e}",
                    d.config.admin_cluster
                ),
            ),
        }
    }

    fn on_discovery(&mut self, host: &(impl Host + ?Sized), pool: usize, answer: Answer) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let Some(d) = p.discovery.as_mut() else {
            return;
        };
        d.in_flight = false;
        let members = match answer {
            Answer::Got(Some(200), Some(json)) => {
                members_from_admin(json, &d.config.cluster, d.config.port)
            }
            Answer::Got(status, _) => Err(format!("admin answered {status:?}")),
            Answer::TooLarge(size) => Err(format!(
                "admin answer of {size} bytes is over {DISCOVERY_MAX_BYTES}"
            )),
        };
        let members = match members {
            Ok(m) => m,
            // Keep the last known members: a failed refresh must not empty the pool.
            Err(e) => {
                host.say(
                    Level::Warn,
                    &format!("pool {}: discovery failed: {e}", p.name),
                );
                return;
            }
        };
        if !self.state.set_endpoints(pool, &members) {
            return;
        }
        host.say(
            Level::Info,
            &format!(
                "pool {}: {} members discovered in cluster {}",
                p.name,
                members.len(),
                d.config.cluster
            ),
        );
        // Departed endpoints: no longer members (their last gauges stay, marked so), and their
        // idle counter slots go.
        for (addr, s) in p.endpoints.iter().zip(&p.stats) {
            if !members.contains(addr) {
                host.set_gauge(&s.member, 0);
            }
        }
        let ids: Vec<u64> = members.iter().map(|e| endpoint_id(e)).collect();
        if self.holds_lease {
            counters::retire(host, &self.keys.counters(&p.name), &ids);
        }
        p.counters = PoolCounters::new(self.keys.counters(&p.name), ids);
        p.stats = members
            .iter()
            .map(|e| EndpointStats::new(&p.name, e))
            .collect();
        p.endpoints = members;
        p.stats_ready = false;
        self.ready_stats(host, pool);
        self.publish(host, pool);
    }

    /// Per-endpoint gauges as of the scrape that just ended.
    fn record_stats(&self, host: &(impl Host + ?Sized), due: Due) {
        let Some(p) = self.pools.get(due.pool) else {
            return;
        };
        let Some(names) = p.stats.get(due.endpoint) else {
            return;
        };
        let Some((_, s)) = self
            .state
            .snapshot(due.pool)
            .and_then(|s| s.endpoints.get(due.endpoint))
        else {
            return;
        };
        if s.consecutive_failures > 0 {
            host.add_counter(&names.scrape_errors, 1);
            host.set_gauge(&names.up, 0);
            return;
        }
        host.set_gauge(&names.up, 1);
        host.set_gauge(&names.queue, u64::from(s.waiting));
        host.set_gauge(&names.running, u64::from(s.running));
        host.set_gauge(
            &names.kv_permille,
            (f64::from(s.kv_cache_usage) * 1000.0).round() as u64,
        );
    }

    /// Publish from an HTTP answer: an embedded collector first checks that the lease is still its
    /// own (another worker may have taken it since this one's last tick).
    fn publish_checked(&mut self, host: &(impl Host + ?Sized), pool: usize, now_ms: u64) {
        if let Some(me) = self.lease_owner {
            let lease = host
                .get(&self.keys.lease())
                .and_then(|(b, _)| Lease::decode(&b));
            let mine = lease.is_some_and(|l| l.owner == me && l.expires_ms > now_ms);
            if !mine {
                if self.holds_lease {
                    host.say(
                        Level::Info,
                        &format!(
                            "collector lease lost by this worker ({me:016x}); it stops publishing"
                        ),
                    );
                }
                self.holds_lease = false;
                return;
            }
        }
        self.publish(host, pool);
    }

    /// Publish `pool`'s snapshot if it changed, while this collector holds the lease.
    fn publish(&mut self, host: &(impl Host + ?Sized), pool: usize) {
        if !self.holds_lease {
            return;
        }
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let Some((version, bytes)) = self.state.publish(pool) else {
            return;
        };
        // Snapshot first, version second: a filter that sees the new version finds the new data.
        let stored = host.set(&self.keys.snapshot(&p.name), &bytes, None)
            == crate::host::Write::Done
            && host.set(&self.keys.version(&p.name), &encode_version(version), None)
                == crate::host::Write::Done;
        if !stored {
            host.say(
                Level::Warn,
                &format!("snapshot of pool {} not published", p.name),
            );
        }
    }
}

#[cfg(test)]
mod tests;
