//! For `tests/prometheus.rs`: installs Debian's `prometheus` package when `prometheus` or
//! `promtool` is missing, runs promtool, runs a private Prometheus (own config, storage in a
//! temporary directory, loopback port), queries its HTTP API, and reads the shipped examples
//! (`examples/prometheus/`, `examples/grafana/`).

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn examples_dir() -> PathBuf {
    wasm_tests::repo_root().join("examples")
}

pub fn read_example(rel: &str) -> String {
    let path = examples_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- Installing ---------------------------------------------------------------------------

/// How long to wait for another apt/dpkg process to let go of its lock.
const APT_LOCK_WAIT: Duration = Duration::from_secs(900);

fn runs(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `prometheus` and `promtool` on PATH, installing Debian's package if either is missing (needs
/// root). Only our own `prometheus` processes are used: whether the package's service starts
/// (it does not in a container with policy-rc.d) does not matter. Cheap when installed.
pub fn ensure_installed() -> Result<()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if runs("prometheus") && runs("promtool") {
        return Ok(());
    }
    eprintln!("prometheus/promtool missing: installing Debian's prometheus package");
    apt(&["update"])?;
    apt(&["install", "-y", "--no-install-recommends", "prometheus"])?;
    if !(runs("prometheus") && runs("promtool")) {
        bail!("apt-get installed the prometheus package, but prometheus/promtool do not run");
    }
    Ok(())
}

/// `apt-get ARGS`, waiting while another apt or dpkg holds its lock.
fn apt(args: &[&str]) -> Result<()> {
    let deadline = Instant::now() + APT_LOCK_WAIT;
    loop {
        let out = Command::new("apt-get")
            // dpkg's frontend lock: apt waits for it itself.
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .context("running apt-get")?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // The lists lock (apt-get update) is not covered by the timeout above.
        let locked = ["Could not get lock", "Unable to lock", "is held by process"]
            .iter()
            .any(|m| err.contains(m));
        if !locked || Instant::now() > deadline {
            bail!("apt-get {} failed ({}): {err}", args.join(" "), out.status);
        }
        eprintln!(
            "apt-get {}: lock held by another process, waiting",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

// ---- promtool -----------------------------------------------------------------------------

/// `promtool ARGS` in `dir`; Err with its output when it fails.
pub fn promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let out: Output = Command::new("promtool")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "promtool {} (in {}) failed:\n{text}",
            args.join(" "),
            dir.display()
        );
    }
    Ok(text)
}

// ---- Rewriting the shipped configurations -------------------------------------------------

/// Replace `from` by `to` in `text`, failing when `from` is not there (the shipped file changed
/// shape: the rewrite must follow).
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "expected {from:?} in the shipped file");
    text.replace(from, to)
}

/// Scrape and rule evaluation every second (tests cannot wait 15 s per sample).
pub fn fast_intervals(text: &str) -> String {
    let text = replace_once(text, "scrape_interval: 15s", "scrape_interval: 1s");
    replace_once(&text, "evaluation_interval: 15s", "evaluation_interval: 1s")
}

/// The text of `job_name: JOB`'s section (up to the next job), for rewriting one job only.
pub fn with_job_section(text: &str, job: &str, f: impl FnOnce(&str) -> String) -> String {
    let marker = format!("  - job_name: {job}\n");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("no job {job} in the shipped file"));
    let end = text[start + marker.len()..]
        .find("\n  - job_name: ")
        .map_or(text.len(), |i| start + marker.len() + i + 1);
    format!("{}{}{}", &text[..start], f(&text[start..end]), &text[end..])
}

// ---- A private Prometheus -----------------------------------------------------------------

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Prometheus process with its configuration files and storage in a temporary directory;
/// killed on drop (its log tail printed when the test panicked).
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Prometheus {
    /// Write `files` (name, text) into a fresh directory, check `config` there with promtool
    /// (so relative rule files resolve as in production), then run Prometheus on it.
    pub async fn start(files: &[(&str, String)], config: &str) -> Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-test-")
            .tempdir()?;
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text)?;
        }
        promtool(dir.path(), &["check", "config", config])?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let mut command = Command::new("prometheus");
        command
            .current_dir(dir.path())
            .arg(format!("--config.file={config}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the kernel kills Prometheus with the test process.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().context("spawning prometheus")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut p = Prometheus {
            child,
            dir,
            addr,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", p.log());
            }
            let ready = p
                .http
                .get(format!("http://{addr}/-/ready"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready after 60 s:\n{}", p.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, form: Option<(&str, &str)>) -> Result<Value> {
        let url = format!("http://{}{path}", self.addr);
        let request = match form {
            None => self.http.get(url),
            Some((k, v)) => self
                .http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("{k}={}", urlencode(v))),
        };
        let body: Value = serde_json::from_str(&request.send().await?.text().await?)?;
        if body["status"] != "success" {
            return Err(anyhow!(
                "{} ({})",
                body["error"].as_str().unwrap_or("?"),
                body["errorType"].as_str().unwrap_or("?")
            ));
        }
        Ok(body["data"].clone())
    }

    /// An instant query now: its samples, or Err with Prometheus' error (e.g. a parse error).
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let data = self.api("/api/v1/query", Some(("query", expr))).await?;
        let result = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": data["result"]})],
            other => bail!("unexpected result type {other:?}"),
        };
        Ok(result
            .iter()
            .map(|s| Sample {
                labels: s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// `/api/v1/rules`: every group's rules (name, query, type, health, state, lastError).
    pub async fn rules(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/rules", None).await?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// `/api/v1/targets?state=any`.
    pub async fn targets(&self) -> Result<Value> {
        self.api("/api/v1/targets?state=any", None).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- Prometheus log tail ---");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- Grafana dashboards -------------------------------------------------------------------

/// One query of a dashboard: where it is and its PromQL as written (with Grafana variables).
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub legend: String,
    pub expr: String,
}

/// Every panel target of a dashboard (rows' nested panels included).
pub fn panel_queries(file: &str) -> Vec<PanelQuery> {
    let d: Value = serde_json::from_str(&read_example(file)).unwrap();
    let mut out = Vec::new();
    let mut stack: Vec<Value> = d["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().cloned().unwrap_or_default());
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                dashboard: file.to_string(),
                panel: p["title"].as_str().unwrap_or_default().to_string(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                legend: t["legendFormat"].as_str().unwrap_or_default().to_string(),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    out.sort_by(|a, b| (&a.panel, &a.ref_id).cmp(&(&b.panel, &b.ref_id)));
    out
}

/// Template variables' queries, as PromQL: Grafana's `label_values(SELECTOR, LABEL)` is
/// `count by (LABEL) (SELECTOR)` (what Grafana itself asks Prometheus for is a series lookup).
pub fn variable_queries(file: &str) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&read_example(file)).unwrap();
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or_default();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!("{file}: variable {} is not label_values(…): {q}", v["name"])
            });
        let (selector, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("{file}: label_values without a label: {q}"));
        out.push((
            v["name"].as_str().unwrap_or_default().to_string(),
            format!("count by ({}) ({})", label.trim(), selector.trim()),
        ));
    }
    out
}

/// PromQL as Grafana would send it with every variable at "All": `$__rate_interval` becomes
/// `window`, any other `$var` / `${var}` the All value `.*` (all our variables are regex matchers).
pub fn expand_grafana(expr: &str, window: &str) -> String {
    let expr = expr.replace("$__rate_interval", window);
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name_len, skip) = if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').unwrap_or(r.len());
            (end, end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (end, end)
        };
        assert!(name_len > 0, "a lone $ in {expr}");
        out.push_str(".*");
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}
