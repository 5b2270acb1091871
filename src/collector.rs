//! The metrics collector: on every tick it starts the scrapes that are due (one in flight per
//! endpoint at most), parses each answer with the pool's engine dialect, and publishes the pool's
//! snapshot in shared data for the filters. Two ways to run (CONTRACT section 2):
//! - service: the singleton bootstrap VM (`root_id: inference-router-collector`) always scrapes;
//! - embedded: every worker's filter root runs this, and only the holder of a lease in shared
//!   data scrapes; a holder that stops renewing is replaced within two intervals.

use crate::counters::{fingerprint, PoolCounters};
use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use router_core::config::Config;
use router_core::config::Discovery;
use router_core::metrics::{parse_page, Dialect};
use router_core::pool::discovery::members_from_admin;
use router_core::pool::{self, CollectorState, Due, Lease};
use router_core::stats;
use std::collections::HashMap;
use std::time::Duration;

const LEASE_KEY: &str = "inference-router/collector-lease";

pub fn snapshot_key(pool: &str) -> String {
    format!("inference-router/snapshot/{pool}")
}

pub fn version_key(pool: &str) -> String {
    format!("inference-router/snapshot-version/{pool}")
}

/// Stat names of one endpoint, built once.
struct EndpointStats {
    queue: String,
    running: String,
    kv_permille: String,
    up: String,
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

/// What an outstanding HTTP call of the collector is for.
enum Call {
    /// A metrics scrape of the endpoint with this address (its index may move with discovery).
    /// `picks`: the endpoint's pick counter when the scrape was sent. Picks after that count as not
    /// yet in the scraped numbers: a request picked while the page is on its way may be missing
    /// from it, and counting it twice is the safer error (it spreads a burst, never herds it).
    Scrape {
        pool: usize,
        endpoint: String,
        picks: u32,
    },
    Discovery {
        pool: usize,
    },
}

struct PoolTarget {
    cluster: String,
    path: String,
    metrics_port: Option<u16>,
    timeout: Duration,
    endpoints: Vec<String>,
    dialect: Dialect,
    counters: PoolCounters,
    name: String,
    stats: Vec<EndpointStats>,
    discovery: Option<DiscoveryTarget>,
}

impl PoolTarget {
    /// New members (discovery): counters and stat names follow the list.
    fn set_endpoints(&mut self, endpoints: Vec<String>) {
        self.counters = PoolCounters::new(&self.name, endpoints.len(), fingerprint(&endpoints));
        self.stats = endpoints
            .iter()
            .map(|e| EndpointStats::new(&self.name, e))
            .collect();
        self.endpoints = endpoints;
    }
}

pub struct Collector {
    pools: Vec<PoolTarget>,
    state: CollectorState,
    calls: HashMap<u32, Call>,
    destination_header: String,
    /// Embedded mode: this worker's lease identity; None in service mode.
    lease_owner: Option<u64>,
    lease_ttl_ms: u64,
    holds_lease: bool,
    tick: Duration,
}

impl Collector {
    /// Dialect errors (bad `metrics.names` overrides) refuse the configuration.
    pub fn new(config: &Config, embedded_owner: Option<u64>) -> Result<Collector, String> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for (i, p) in config.pools.iter().enumerate() {
            let dialect = Dialect::new(p.engine, &p.metrics.names)
                .map_err(|e| format!("pools[{i}].metrics.names: {e}"))?;
            pools.push(PoolTarget {
                cluster: p.cluster.clone(),
                path: p.metrics.path.clone(),
                metrics_port: p.metrics.port,
                timeout: Duration::from_millis(p.metrics.timeout_ms),
                endpoints: p.endpoints.clone(),
                dialect,
                counters: PoolCounters::new(&p.name, p.endpoints.len(), fingerprint(&p.endpoints)),
                name: p.name.clone(),
                stats: p
                    .endpoints
                    .iter()
                    .map(|e| EndpointStats::new(&p.name, e))
                    .collect(),
                discovery: p.discovery.clone().map(|config| DiscoveryTarget {
                    config,
                    next_due_ms: 0,
                    in_flight: false,
                }),
            });
        }
        let min_interval = config
            .pools
            .iter()
            .map(|p| p.metrics.interval_ms)
            .min()
            .unwrap_or(1000);
        Ok(Collector {
            pools,
            state: CollectorState::new(config),
            calls: HashMap::new(),
            destination_header: config.destination_header.clone(),
            lease_owner: embedded_owner,
            lease_ttl_ms: 2 * min_interval,
            holds_lease: embedded_owner.is_none(),
            // A tick a quarter of the shortest interval keeps scrapes close to their due time.
            tick: Duration::from_millis((min_interval / 4).max(10)),
        })
    }

    pub fn tick_period(&self) -> Duration {
        self.tick
    }

    pub fn on_tick(&mut self, now_ms: u64) {
        if let Some(me) = self.lease_owner {
            let held = self.renew_lease(me, now_ms);
            if held && !self.holds_lease {
                log::info!("collector lease taken by this worker ({me:016x})");
                self.adopt_published();
            }
            self.holds_lease = held;
            if !held {
                return;
            }
        }
        for pool in 0..self.pools.len() {
            self.start_discovery(pool, now_ms);
        }
        for due in self.state.due(now_ms) {
            self.start_scrape(due, now_ms);
        }
        for pool in 0..self.pools.len() {
            self.publish(pool);
        }
    }

    /// Take or renew the lease with compare-and-swap; true when this worker holds it now.
    fn renew_lease(&self, me: u64, now_ms: u64) -> bool {
        let (bytes, cas) = hostcalls::get_shared_data(LEASE_KEY).unwrap_or((None, None));
        let current = bytes.as_deref().and_then(Lease::decode);
        match Lease::claim(current, me, now_ms, self.lease_ttl_ms) {
            None => false,
            Some(lease) => {
                hostcalls::set_shared_data(LEASE_KEY, Some(&lease.encode()), cas).is_ok()
            }
        }
    }

    /// A new lease holder continues from what the previous one published.
    fn adopt_published(&mut self) {
        for (i, p) in self.pools.iter().enumerate() {
            if let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&snapshot_key(&p.name)) {
                if let Ok(previous) = pool::decode(&bytes) {
                    self.state.adopt(i, &previous);
                }
            }
        }
    }

    fn start_scrape(&mut self, due: Due, now_ms: u64) {
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
        let headers = vec![
            (":method", "GET"),
            (":path", p.path.as_str()),
            (":authority", target.as_str()),
            (self.destination_header.as_str(), target.as_str()),
        ];
        match hostcalls::dispatch_http_call(&p.cluster, headers, None, vec![], p.timeout) {
            Ok(token) => {
                let picks = p
                    .counters
                    .load()
                    .picks
                    .get(due.endpoint)
                    .copied()
                    .unwrap_or(0);
                let call = Call::Scrape {
                    pool: due.pool,
                    endpoint: endpoint.clone(),
                    picks,
                };
                self.calls.insert(token, call);
            }
            Err(e) => {
                log::warn!(
                    "scrape of {target} via cluster {} not started: {e:?}",
                    p.cluster
                );
                self.state.not_started(due, now_ms);
            }
        }
    }

    /// Whether `token` is one of this collector's scrapes.
    pub fn owns(&self, token: u32) -> bool {
        self.calls.contains_key(&token)
    }

    /// A call's answer: `status` None means the call failed (reset, timeout).
    pub fn on_response(
        &mut self,
        token: u32,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) {
        let (due, sent_picks) = match self.calls.remove(&token) {
            None => return,
            Some(Call::Discovery { pool }) => return self.on_discovery(pool, status, body, now_ms),
            // Members may have changed while the scrape ran: find the endpoint by address.
            Some(Call::Scrape {
                pool,
                endpoint,
                picks,
            }) => {
                let Some(i) = self
                    .pools
                    .get(pool)
                    .and_then(|p| p.endpoints.iter().position(|e| *e == endpoint))
                else {
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
        match (status, body) {
            (Some(200), Some(page)) => {
                let scrape = parse_page(&page, &p.dialect);
                if scrape.missing.is_empty() {
                    self.state.succeeded(due, scrape.state, now_ms, sent_picks);
                } else {
                    log::warn!(
                        "scrape of {endpoint}: metrics missing from the page: {}",
                        scrape.missing.join(", ")
                    );
                    self.state.failed(due, now_ms);
                }
            }
            (status, _) => {
                log::debug!("scrape of {endpoint} failed: status {status:?}");
                self.state.failed(due, now_ms);
            }
        }
        self.record_stats(due);
        if !self.state.busy(due.pool) {
            self.publish(due.pool);
        }
    }

    /// Ask Envoy's admin for the members of a discovery pool, when due.
    fn start_discovery(&mut self, pool: usize, now_ms: u64) {
        let Some(d) = self.pools.get_mut(pool).and_then(|p| p.discovery.as_mut()) else {
            return;
        };
        if d.in_flight || now_ms < d.next_due_ms {
            return;
        }
        d.next_due_ms = now_ms + d.config.refresh_ms;
        let headers = vec![
            (":method", "GET"),
            (":path", d.config.admin_path.as_str()),
            (":authority", "envoy-admin"),
        ];
        let timeout = Duration::from_millis(d.config.refresh_ms.clamp(100, 5000));
        match hostcalls::dispatch_http_call(&d.config.admin_cluster, headers, None, vec![], timeout)
        {
            Ok(token) => {
                d.in_flight = true;
                self.calls.insert(token, Call::Discovery { pool });
            }
            Err(e) => log::warn!(
                "discovery via cluster {} not started: {e:?}",
                d.config.admin_cluster
            ),
        }
    }

    fn on_discovery(
        &mut self,
        pool: usize,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        _now_ms: u64,
    ) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        let Some(d) = p.discovery.as_mut() else {
            return;
        };
        d.in_flight = false;
        let members = match (status, body) {
            (Some(200), Some(json)) => members_from_admin(&json, &d.config.cluster, d.config.port),
            (status, _) => Err(format!("admin answered {status:?}")),
        };
        match members {
            Ok(members) => {
                if self.state.set_endpoints(pool, &members) {
                    log::info!(
                        "pool {}: {} members discovered in cluster {}",
                        p.name,
                        members.len(),
                        d.config.cluster
                    );
                    p.set_endpoints(members);
                    self.publish(pool);
                }
            }
            // Keep the last known members: a failed refresh must not empty the pool.
            Err(e) => log::warn!("pool {}: discovery failed: {e}", p.name),
        }
    }

    /// Per-endpoint gauges as of the scrape that just ended.
    fn record_stats(&self, due: Due) {
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
            host_stats::increment(&names.scrape_errors, 1);
            host_stats::gauge(&names.up, 0);
            return;
        }
        host_stats::gauge(&names.up, 1);
        host_stats::gauge(&names.queue, u64::from(s.waiting));
        host_stats::gauge(&names.running, u64::from(s.running));
        host_stats::gauge(
            &names.kv_permille,
            (f64::from(s.kv_cache_usage) * 1000.0).round() as u64,
        );
    }

    fn publish(&mut self, pool: usize) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let Some((version, bytes)) = self.state.publish(pool) else {
            return;
        };
        // Snapshot first, version second: a filter that sees the new version finds the new data.
        let stored = hostcalls::set_shared_data(&snapshot_key(&p.name), Some(&bytes), None)
            .and_then(|_| {
                hostcalls::set_shared_data(
                    &version_key(&p.name),
                    Some(&version.to_le_bytes()),
                    None,
                )
            });
        if let Err(e) = stored {
            log::warn!("snapshot of pool {} not published: {e:?}", p.name);
        }
    }
}
