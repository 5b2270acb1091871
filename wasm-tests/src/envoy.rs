//! Runs the real Envoy (`<repo>/.venv/bin/envoy`) with a generated configuration: the plugin in
//! front of ORIGINAL_DST clusters (docs/contract.md section 2), a plain round-robin `passthrough`
//! cluster for requests without a destination header, and optionally a second listener without
//! the plugin for comparisons. Ports are chosen by the kernel and read back from the admin API.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
pub const MODEL_HEADER: &str = "x-gateway-model-name";
/// Listener and cluster buffer limit: larger than any test body, so Envoy itself never answers
/// 413 before the plugin's own `maxRequestBodyBytes` does.
pub const BUFFER_LIMIT_BYTES: u64 = 32 * 1024 * 1024;
/// Name of the listener with the plugin, and of the one without.
pub const MAIN_LISTENER: &str = "inference";
pub const PLAIN_LISTENER: &str = "plain";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn envoy_binary() -> PathBuf {
    crate::repo_root().join(".venv/bin/envoy")
}

pub fn wasm_module() -> PathBuf {
    crate::repo_root().join("dist/inference_router.wasm")
}

/// The fault-injection build (`make build-faults`): traps on a marked request or metrics page.
pub fn faults_module() -> PathBuf {
    crate::repo_root().join("dist/inference_router_faults.wasm")
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct EnvoySpec {
    /// The plugin's configuration document; None runs the listener without the wasm filter.
    pub plugin_config: Option<String>,
    /// ORIGINAL_DST clusters, one per pool (the route sends to the first).
    pub pool_clusters: Vec<String>,
    /// The destination header the ORIGINAL_DST clusters read.
    pub destination_header: String,
    /// Endpoints of the round-robin `passthrough` cluster.
    pub passthrough: Vec<SocketAddr>,
    /// Also run a listener without the plugin.
    pub plain_listener: bool,
    /// Run the metrics collector as a singleton bootstrap service (collector mode "service").
    pub collector_service: bool,
    /// More clusters, as Envoy JSON (e.g. an EDS cluster and an admin cluster for discovery).
    pub extra_clusters: Vec<Value>,
    /// A fixed admin address (default: 127.0.0.1 on a port the kernel picks).
    pub admin_address: Option<SocketAddr>,
    pub wasm: PathBuf,
}

impl EnvoySpec {
    /// The plugin with `config`; clusters, destination header and passthrough endpoints are read
    /// from the document (pools' names and endpoints).
    pub fn plugin(config: &Value) -> EnvoySpec {
        let mut spec = EnvoySpec::raw_plugin(config.to_string());
        let pools = config.get("pools").and_then(Value::as_array);
        let names: Vec<String> = pools
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        if !names.is_empty() {
            spec.pool_clusters = names;
        }
        spec.passthrough = pools
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("endpoints").and_then(Value::as_array))
            .flatten()
            .filter_map(|e| e.as_str().and_then(|s| s.parse().ok()))
            .collect();
        if let Some(h) = config.get("destinationHeader").and_then(Value::as_str) {
            spec.destination_header = h.to_string();
        }
        // Metrics-based strategies (DEFAULT when none is named) get the collector service, unless
        // the document asks for the embedded collector.
        let strategy = config
            .pointer("/scheduling/strategy")
            .and_then(Value::as_str);
        let mode = config.pointer("/collector/mode").and_then(Value::as_str);
        spec.collector_service = matches!(strategy, None | Some("DEFAULT") | Some("PREFIX_CACHE"))
            && mode != Some("embedded");
        spec
    }

    /// Leave the collector service out (the filter then has no fresh metrics).
    pub fn without_collector(mut self) -> EnvoySpec {
        self.collector_service = false;
        self
    }

    /// The plugin with a configuration string taken as is (for documents that must not parse).
    pub fn raw_plugin(config: String) -> EnvoySpec {
        EnvoySpec {
            plugin_config: Some(config),
            pool_clusters: vec!["original-dst".to_string()],
            destination_header: DESTINATION_HEADER.to_string(),
            passthrough: Vec::new(),
            plain_listener: false,
            collector_service: false,
            extra_clusters: Vec::new(),
            admin_address: None,
            wasm: wasm_module(),
        }
    }

    /// No plugin: the same routes and clusters, to check the harness itself.
    pub fn without_plugin(passthrough: Vec<SocketAddr>) -> EnvoySpec {
        EnvoySpec {
            plugin_config: None,
            passthrough,
            ..EnvoySpec::raw_plugin(String::new())
        }
    }

    pub fn with_plain_listener(mut self) -> EnvoySpec {
        self.plain_listener = true;
        self
    }

    /// The bootstrap document. JSON is YAML, so this is written as `envoy.yaml`.
    pub fn render(&self, access_log: &Path) -> Result<Value> {
        for addr in &self.passthrough {
            if !addr.ip().is_loopback() {
                return Err(anyhow!("test traffic only goes to loopback, not {addr}"));
            }
        }
        let wasm = match &self.plugin_config {
            None => None,
            Some(config) => {
                if !self.wasm.is_file() {
                    return Err(anyhow!(
                        "the plugin module {} is missing: build it with `make build`",
                        self.wasm.display()
                    ));
                }
                Some(wasm_filter(&self.wasm, config))
            }
        };
        let first_pool = self
            .pool_clusters
            .first()
            .ok_or_else(|| anyhow!("no ORIGINAL_DST cluster"))?;
        let mut listeners = vec![listener(
            MAIN_LISTENER,
            wasm,
            first_pool,
            &self.destination_header,
            access_log,
        )];
        if self.plain_listener {
            listeners.push(listener(
                PLAIN_LISTENER,
                None,
                first_pool,
                &self.destination_header,
                access_log,
            ));
        }
        let mut clusters: Vec<Value> = self
            .pool_clusters
            .iter()
            .map(|name| original_dst_cluster(name, &self.destination_header))
            .collect();
        clusters.push(static_cluster("passthrough", &self.passthrough));
        clusters.extend(self.extra_clusters.iter().cloned());
        let admin = match self.admin_address {
            Some(a) => socket(&a.ip().to_string(), a.port()),
            None => socket("127.0.0.1", 0),
        };
        let mut bootstrap = json!({
            "admin": {"address": admin},
            // xDS sources (the file-based EDS of the discovery test) need a node identity.
            "node": {"id": "inference-router-test", "cluster": "wasm-tests"},
            "stats_flush_interval": "1s",
            "stats_config": {"stats_tags": stats_tags()},
            "static_resources": {"listeners": listeners, "clusters": clusters},
        });
        if let (true, Some(config)) = (self.collector_service, &self.plugin_config) {
            bootstrap["bootstrap_extensions"] = json!([collector_service(&self.wasm, config)]);
        }
        Ok(bootstrap)
    }
}

/// One rule per label the plugin puts in its metric names (`pool=.=P;.;…;.;name`, Istio's
/// encoding), as shipped in envoy/envoy.yaml.
pub fn stats_tags() -> Value {
    let tags: Vec<Value> = [
        "pool",
        "model",
        "target_model",
        "endpoint",
        "priority",
        "outcome",
    ]
    .iter()
    .map(|t| json!({"tag_name": t, "regex": format!("({t}=\\.=(.*?);\\.;)")}))
    .collect();
    Value::Array(tags)
}

/// The collector in "service" mode: a singleton bootstrap wasm service sharing the filter's vm_id.
fn collector_service(module: &Path, config: &str) -> Value {
    json!({
        "name": "envoy.bootstrap.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
            "singleton": true,
            "config": {
                "name": "inference-router-collector",
                "root_id": "inference-router-collector",
                "vm_config": {
                    "vm_id": "inference-router",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": module.display().to_string()}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config,
                },
            },
        },
    })
}

fn socket(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

fn wasm_filter(module: &Path, config: &str) -> Value {
    json!({
        "name": "inference-router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "inference-router",
                "root_id": "inference-router",
                "vm_config": {
                    "vm_id": "inference-router",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": module.to_string_lossy()}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config,
                },
                // Without it a pause in on_http_request_headers becomes StopAllIteration and the
                // body callback never runs.
                "allow_on_headers_stop_iteration": true,
            },
        },
    })
}

fn listener(
    name: &str,
    wasm: Option<Value>,
    pool: &str,
    destination_header: &str,
    access_log: &Path,
) -> Value {
    let mut filters: Vec<Value> = wasm.into_iter().collect();
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    json!({
        "name": name,
        "address": socket("127.0.0.1", 0),
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                // Held responses can stay silent for a while.
                "stream_idle_timeout": "300s",
                "request_timeout": "0s",
                "access_log": [{
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": access_log.to_string_lossy(),
                        "log_format": {"text_format_source": {"inline_string": format!(
                            "[{name}] %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% \
                             dest=%REQ({destination_header})% upstream=%UPSTREAM_HOST% \
                             cluster=%UPSTREAM_CLUSTER% rx=%BYTES_RECEIVED% tx=%BYTES_SENT%\n")}},
                    },
                }],
                "route_config": {
                    "name": "inference",
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            // The plugin picked an endpoint: go exactly there.
                            {
                                "match": {"prefix": "/", "headers": [{"name": destination_header, "present_match": true}]},
                                "route": {"cluster": pool, "timeout": "0s"},
                            },
                            // Anything else: what a Kubernetes Service would do.
                            {"match": {"prefix": "/"}, "route": {"cluster": "passthrough", "timeout": "0s"}},
                        ],
                    }],
                },
                "http_filters": filters,
            },
        }]}],
    })
}

fn original_dst_cluster(name: &str, destination_header: &str) -> Value {
    json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "original_dst_lb_config": {"use_http_header": true, "http_header_name": destination_header},
    })
}

pub fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({"endpoint": {"address": socket(&a.ip().to_string(), a.port())}}))
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    })
}

/// Envoy did not come up.
#[derive(Debug)]
pub struct StartFailure {
    pub reason: String,
    /// Set when Envoy exited (rather than, say, never becoming ready).
    pub status: Option<ExitStatus>,
    pub log: String,
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Envoy did not start: {} (exit status {:?})\n--- Envoy log ---\n{}",
            self.reason, self.status, self.log
        )
    }
}

impl std::error::Error for StartFailure {}

/// A running Envoy; killed on drop (also when a test panics, which also prints its log tail).
pub struct Envoy {
    child: Child,
    /// Holds the log and the generated files while Envoy runs.
    _dir: tempfile::TempDir,
    log_path: PathBuf,
    access_log_path: PathBuf,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
}

impl Envoy {
    /// Generate the configuration, run Envoy and wait until it serves.
    pub async fn start(spec: &EnvoySpec) -> Result<Envoy> {
        Ok(Envoy::try_start(spec).await?)
    }

    /// Like [`Envoy::start`], but a failure to come up is a value the test can inspect.
    pub async fn try_start(spec: &EnvoySpec) -> Result<Envoy, StartFailure> {
        let setup = || -> Result<(tempfile::TempDir, PathBuf)> {
            let dir = tempfile::Builder::new().prefix("envoy-test-").tempdir()?;
            let config = spec.render(&dir.path().join("access.log"))?;
            let path = dir.path().join("envoy.yaml");
            std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
            Ok((dir, path))
        };
        let (dir, config) = setup().map_err(|e| StartFailure {
            reason: format!("{e:#}"),
            status: None,
            log: String::new(),
        })?;
        let cwd = dir.path().to_path_buf();
        Envoy::launch(&config, &cwd, dir).await
    }

    /// Run Envoy on an existing configuration file with `cwd` as its working directory (for
    /// `envoy/envoy.yaml`, whose module path is relative to the repository root). The log and the
    /// admin address file go into a fresh temporary directory.
    pub async fn start_file(config: &Path, cwd: &Path) -> Result<Envoy> {
        let dir = tempfile::Builder::new().prefix("envoy-").tempdir()?;
        Ok(Envoy::launch(config, cwd, dir).await?)
    }

    async fn launch(
        config: &Path,
        cwd: &Path,
        dir: tempfile::TempDir,
    ) -> Result<Envoy, StartFailure> {
        let fail = |reason: String| StartFailure {
            reason,
            status: None,
            log: String::new(),
        };
        let binary = envoy_binary();
        if !binary.is_file() {
            return Err(fail(format!(
                "{} is missing: the Makefile installs it (`make test` or `make run`)",
                binary.display()
            )));
        }
        let work = dir.path();
        let log_path = work.join("envoy.log");
        let access_log_path = work.join("access.log");
        let admin_path = work.join("admin-address");
        let log =
            std::fs::File::create(&log_path).map_err(|e| fail(format!("creating the log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| fail(format!("{e}")))?;
        let mut command = Command::new(&binary);
        command
            .current_dir(cwd)
            .arg("-c")
            .arg(config)
            .args(["--concurrency", "2", "--disable-hot-restart", "-l", "info"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: prctl is async-signal-safe; it only makes the kernel kill Envoy when the
        // spawning thread dies, so no Envoy outlives a test process that was killed.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| fail(format!("spawning {}: {e}", binary.display())))?;
        let mut envoy = Envoy {
            child,
            _dir: dir,
            log_path,
            access_log_path,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: HashMap::new(),
        };
        match envoy.wait_ready(&admin_path).await {
            Ok(()) => Ok(envoy),
            Err(e) => {
                let status = envoy.child.try_wait().ok().flatten();
                let _ = envoy.child.kill();
                let status = status.or_else(|| envoy.child.wait().ok());
                Err(StartFailure {
                    reason: format!("{e:#}"),
                    status: status.filter(|_| e.is::<Exited>()),
                    log: envoy.log(),
                })
            }
        }
    }

    /// Readiness: the admin address is published, `/ready` says LIVE, every listener accepts.
    async fn wait_ready(&mut self, admin_path: &Path) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut stage = "admin address";
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(Exited(status).into());
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "not ready after {STARTUP_TIMEOUT:?} (waiting for {stage})"
                ));
            }
            if self.admin.port() == 0 {
                if let Some(addr) = std::fs::read_to_string(admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    self.admin = addr;
                    stage = "/ready";
                }
            } else if self.listeners.is_empty() {
                let ready = http
                    .get(format!("http://{}/ready", self.admin))
                    .send()
                    .await;
                let live = match ready {
                    Ok(r) => r.text().await.map(|t| t.trim() == "LIVE").unwrap_or(false),
                    Err(_) => false,
                };
                if live {
                    stage = "listeners";
                    self.listeners = self.read_listeners(&http).await?;
                }
            } else if self
                .listeners
                .values()
                .all(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn read_listeners(&self, http: &reqwest::Client) -> Result<HashMap<String, SocketAddr>> {
        let body: Value = serde_json::from_str(
            &http
                .get(format!("http://{}/listeners?format=json", self.admin))
                .send()
                .await?
                .text()
                .await?,
        )?;
        let mut out = HashMap::new();
        for l in body
            .get("listener_statuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = l.get("name").and_then(Value::as_str).unwrap_or_default();
            let sock = l.pointer("/local_address/socket_address");
            let ip = sock.and_then(|s| s.get("address")).and_then(Value::as_str);
            let port = sock
                .and_then(|s| s.get("port_value"))
                .and_then(Value::as_u64);
            if let (Some(ip), Some(port)) = (ip, port) {
                out.insert(name.to_string(), format!("{ip}:{port}").parse()?);
            }
        }
        if out.is_empty() {
            return Err(anyhow!("admin /listeners lists no listener: {body}"));
        }
        Ok(out)
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Envoy's process id (for its memory, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's resident memory now (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// The listener with the plugin.
    pub fn addr(&self) -> Result<SocketAddr> {
        self.listener(MAIN_LISTENER)
    }

    pub fn listener(&self, name: &str) -> Result<SocketAddr> {
        self.listeners
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("no listener {name:?}; have {:?}", self.listeners.keys()))
    }

    /// A client for the listener with the plugin.
    pub fn client(&self) -> Result<crate::client::Client> {
        crate::client::Client::new(self.addr()?)
    }

    /// A client for the listener without the plugin.
    pub fn plain_client(&self) -> Result<crate::client::Client> {
        crate::client::Client::new(self.listener(PLAIN_LISTENER)?)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The access log so far (one line per request: status, flags, destination header, upstream).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log_path).unwrap_or_default()
    }

    /// An admin endpoint's body, e.g. `/stats/prometheus`.
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let r = http
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await?;
        Ok(r.error_for_status()?.text().await?)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- Envoy log tail ({}) ---", self.log_path.display());
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
            let access = self.access_log();
            let tail: Vec<&str> = access.lines().rev().take(20).collect();
            eprintln!("--- access log tail ---");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
}

#[derive(Debug)]
struct Exited(ExitStatus);

impl fmt::Display for Exited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Envoy exited during startup with {}", self.0)
    }
}

impl std::error::Error for Exited {}
