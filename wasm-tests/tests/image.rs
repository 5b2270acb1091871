//! The image `make image` writes, through real parts: Debian's `docker-registry` (the CNCF
//! Distribution registry) and `skopeo`, installed when missing. The packaging binary's own code
//! writes the layout of `dist/inference_router.wasm` into a temporary directory (so the image is
//! fresh for the module under test); the push command it prints pushes it; the registry's HTTP
//! API hands it back the way Istio's Wasm image fetcher (and Envoy Gateway's copy of it) reads
//! it; and the real Envoy runs the module taken out of it, fetched over HTTP with its sha256, as
//! Envoy Gateway's wasm cache serves it — and refuses it with a wrong sha256.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use inference_router_packaging as packaging;
use serde_json::{json, Value};
use sha2::Digest;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasm_tests::envoy::{self, Envoy, EnvoySpec, DESTINATION_HEADER};
use wasm_tests::pod::{endpoints, start_pods, PodOptions};

const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What go-containerregistry (Istio's and Envoy Gateway's fetchers) accepts for a manifest.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";

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

/// `docker-registry` and `skopeo` on PATH, installing Debian's packages when missing (needs root;
/// the package's own registry service is not used). Fails, never skips, when they cannot be had.
fn ensure_tools() -> Result<()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let wanted = [("docker-registry", "docker-registry"), ("skopeo", "skopeo")];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(binary, _)| !runs(binary))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("{missing:?} missing: installing Debian's packages");
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    for (binary, _) in wanted {
        if !runs(binary) {
            bail!("apt-get installed {missing:?}, but `{binary} --version` does not run");
        }
    }
    Ok(())
}

/// `apt-get ARGS`, waiting while another apt or dpkg holds its lock (as prometheus/mod.rs does).
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- The image, as `make image` writes it -------------------------------------------------

/// What the packaging binary printed, and where it wrote.
struct Built {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    /// The `manifest digest: sha256:…` it printed.
    printed_digest: String,
    /// The push command it printed, as words.
    push_command: Vec<String>,
    tag: String,
}

/// Run the packaging binary's code (`make image` runs the same `run`) on the module under test,
/// into a temporary directory, and read what it printed.
fn build_image() -> Built {
    let module = envoy::wasm_module();
    assert!(
        module.is_file(),
        "{} is missing: build it with `make build`",
        module.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("image-test-")
        .tempdir()
        .unwrap();
    let layout = dir.path().join("image");
    let args: Vec<String> = [
        "--wasm",
        module.to_str().unwrap(),
        "--out",
        layout.to_str().unwrap(),
        "--revision",
        "0000000000000000000000000000000000000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let mut out = Vec::new();
    let image = packaging::run(&args, &mut out).unwrap();
    let printed = String::from_utf8(out).unwrap();
    eprintln!("packaging: {:?}\n{printed}", started.elapsed());
    let printed_digest = printed
        .lines()
        .find_map(|l| l.strip_prefix("manifest digest: "))
        .unwrap_or_else(|| panic!("no `manifest digest:` line in:\n{printed}"))
        .to_string();
    let push_command: Vec<String> = printed
        .lines()
        .find_map(|l| l.strip_prefix("push: "))
        .unwrap_or_else(|| panic!("no `push:` line in:\n{printed}"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(printed_digest.starts_with("sha256:") && printed_digest.len() == 71);
    Built {
        _dir: dir,
        layout,
        printed_digest,
        push_command,
        tag: image.meta.tag,
    }
}

// ---- A private registry -------------------------------------------------------------------

/// Debian's `docker-registry` with its configuration and storage in a temporary directory, on a
/// free loopback port; killed on drop (its log tail printed when the test panicked).
struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Registry {
    async fn start() -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix("registry-").tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let mut command = Command::new("docker-registry");
        command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the kernel kills the registry with the test process.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().context("spawning docker-registry")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut registry = Registry {
            child,
            dir,
            addr,
            http,
        };
        let deadline = Instant::now() + wasm_tests::PROMPT;
        loop {
            if let Some(status) = registry.child.try_wait()? {
                bail!("docker-registry exited with {status}:\n{}", registry.log());
            }
            let up = registry
                .http
                .get(format!("http://{addr}/v2/"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if up {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry not serving /v2/ after {:?}:\n{}",
                    wasm_tests::PROMPT,
                    registry.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// GET `/v2/{path}` with `accept`: status, content type, `Docker-Content-Digest`, body.
    async fn get(&self, path: &str, accept: &str) -> Result<(u16, String, String, Vec<u8>)> {
        let r = self
            .http
            .get(format!("http://{}/v2/{path}", self.addr))
            .header("accept", accept)
            .send()
            .await?;
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (status, content_type, digest) = (
            r.status().as_u16(),
            header("content-type"),
            header("docker-content-digest"),
        );
        Ok((status, content_type, digest, r.bytes().await?.to_vec()))
    }

    /// A blob, checked against its digest and size as go-containerregistry checks it.
    async fn blob(&self, name: &str, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap();
        let (status, _, _, body) = self
            .get(&format!("{name}/blobs/{digest}"), "*/*")
            .await
            .unwrap();
        assert_eq!(status, 200, "blob {digest}");
        assert_eq!(format!("sha256:{}", sha256_hex(&body)), digest);
        assert_eq!(descriptor["size"].as_u64(), Some(body.len() as u64));
        body
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- docker-registry log tail ---");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
}

/// Run the printed push command with REGISTRY filled in; plain HTTP, so `--dest-tls-verify=false`,
/// and `--insecure-policy` so the test does not depend on the machine's /etc/containers policy.
async fn push(built: &Built, registry: &Registry) -> String {
    let command = &built.push_command;
    assert_eq!(
        command.get(..3).map(|w| w.join(" ")),
        Some(format!("skopeo copy oci:{}", built.layout.display())),
        "the printed push command: {command:?}"
    );
    let destination = command[3].replace("REGISTRY", &registry.addr.to_string());
    assert_eq!(command.len(), 4, "{command:?}");
    let reference = destination
        .strip_prefix(&format!("docker://{}/", registry.addr))
        .unwrap_or_else(|| panic!("not docker://REGISTRY/…: {}", command[3]))
        .to_string();
    let started = Instant::now();
    let out = tokio::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(&command[1..3])
        .arg("--dest-tls-verify=false")
        .arg(&destination)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("skopeo copy: {:?}", started.elapsed());
    reference
}

// ---- Istio's image fetcher, step by step --------------------------------------------------

/// What a fetcher got from the registry.
struct Fetched {
    /// `Docker-Content-Digest` of the manifest.
    registry_digest: String,
    /// The hex sha256 of the manifest bytes: what Istio compares `WasmPlugin.sha256` with.
    actual_digest: String,
    manifest: Value,
    /// `plugin.wasm` out of the last layer.
    module: Vec<u8>,
}

/// Read `reference` (`name:tag`) the way istio/istio pkg/wasm/imagefetcher.go does: the
/// manifest; a Docker schema 2 manifest's last layer must be Docker's gzip layer, else the
/// *compat* variant's last layer must be an OCI tar+gzip layer (the *oci* variant would need
/// exactly two layers of Wasm media types); the layer is gunzipped, walked as a tar, and the first
/// entry whose base name is `plugin.wasm` is the module, which must start with `\0asm`.
async fn fetch_like_istio(registry: &Registry, reference: &str) -> Fetched {
    let (name, tag) = reference.rsplit_once(':').unwrap();
    let (status, content_type, registry_digest, body) = registry
        .get(&format!("{name}/manifests/{tag}"), ACCEPT)
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, packaging::MANIFEST_MEDIA_TYPE);
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let last = layers.last().expect("at least one layer");
    let expected_layer_type = if manifest["mediaType"] == DOCKER_MANIFEST {
        DOCKER_LAYER
    } else {
        packaging::LAYER_MEDIA_TYPE
    };
    assert_eq!(last["mediaType"], expected_layer_type, "the compat variant");
    let layer = registry.blob(name, last).await;
    let mut tar = Vec::new();
    GzDecoder::new(&layer[..])
        .read_to_end(&mut tar)
        .expect("the last layer is gzip");
    // The config's diff_ids name the uncompressed layers (pulling tools check them).
    let config: Value =
        serde_json::from_slice(&registry.blob(name, &manifest["config"]).await).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"]
            .as_array()
            .and_then(|d| d.last()),
        Some(&json!(format!("sha256:{}", sha256_hex(&tar))))
    );
    let mut module = None;
    for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
        let mut entry = entry.expect("the last layer is a tar");
        let path = entry.path().unwrap().into_owned();
        if path.file_name().and_then(|n| n.to_str()) == Some(packaging::PLUGIN_FILE) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            module = Some(bytes);
            break;
        }
    }
    let module = module.expect("a plugin.wasm entry in the last layer");
    // Istio's isValidWasmBinary.
    assert!(
        module.len() >= 8 && module.starts_with(b"\0asm"),
        "not Wasm"
    );
    Fetched {
        registry_digest,
        actual_digest: sha256_hex(&body),
        manifest,
        module,
    }
}

/// Build, push and fetch back: the module a control plane would hand to Envoy.
async fn module_through_registry() -> (Built, Fetched) {
    ensure_tools().unwrap();
    let built = build_image();
    let registry = Registry::start().await.unwrap();
    let reference = push(&built, &registry).await;
    let started = Instant::now();
    let fetched = fetch_like_istio(&registry, &reference).await;
    eprintln!("fetched back: {:?}", started.elapsed());
    (built, fetched)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pushed_image_is_what_the_fetchers_accept() {
    let (built, fetched) = module_through_registry().await;
    // The digest `make image` printed is the registry's, and the one Istio computes.
    assert_eq!(fetched.registry_digest, built.printed_digest);
    assert_eq!(
        format!("sha256:{}", fetched.actual_digest),
        built.printed_digest
    );
    // The registry holds the manifest as written (skopeo did not convert it).
    let index: Value =
        serde_json::from_slice(&std::fs::read(built.layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        built.printed_digest.as_str()
    );
    assert_eq!(
        index["manifests"][0]["annotations"][packaging::REF_NAME],
        built.tag.as_str()
    );
    assert_eq!(built.tag, env!("CARGO_PKG_VERSION"));
    assert_eq!(fetched.manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        fetched.manifest["annotations"][packaging::VERSION],
        env!("CARGO_PKG_VERSION")
    );
    for key in [packaging::REVISION, packaging::SOURCE, packaging::TITLE] {
        assert!(fetched.manifest["annotations"][key].is_string(), "{key}");
    }
    // The module out of the image is the module built.
    let module = std::fs::read(envoy::wasm_module()).unwrap();
    assert!(
        fetched.module == module,
        "plugin.wasm differs from dist/inference_router.wasm"
    );
    assert!(fetched.module.starts_with(b"\0asm"));
    // Built again: the same digest.
    assert_eq!(build_image().printed_digest, built.printed_digest);
}

/// The shipped manifests pull the image `make image` writes (tag = the workspace version) and
/// their header comments give the push command it prints and the digest rule.
#[test]
fn the_shipped_manifests_name_the_image_make_image_pushes() {
    let version = env!("CARGO_PKG_VERSION");
    // The Makefile passes --out dist/image.
    let push = packaging::push_command(Path::new("dist/image"), version);
    let reference = format!("REGISTRY/{}:{version}", packaging::IMAGE_NAME);
    for (file, url) in [
        (
            "examples/istio/wasmplugin.yaml",
            format!("oci://{reference}"),
        ),
        (
            "examples/envoy-gateway/extension-policy.yaml",
            reference.clone(),
        ),
    ] {
        let text = std::fs::read_to_string(wasm_tests::repo_root().join(file)).unwrap();
        assert!(
            text.contains(&format!("#   {push}\n")),
            "{file}: no `{push}`"
        );
        assert!(
            text.contains("is the manifest digest `make image` prints"),
            "{file}: the sha256 rule"
        );
        let urls: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("url: "))
            .collect();
        assert_eq!(urls, vec![url.as_str(); 2], "{file}");
    }
}

// ---- The module from the image in the real Envoy ------------------------------------------

/// Serves `bytes` to every GET, counting the fetches: Envoy Gateway's wasm cache in front of
/// its proxies.
async fn serve_module(bytes: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((wasm_tests::addr::next_pod_ip(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let bytes = Arc::new(bytes);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (bytes, counter) = (bytes.clone(), counter.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&bytes).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, fetches)
}

/// The harness's plugin configuration, with the module fetched from `server` over HTTP and
/// checked against `sha256` (Envoy's `vm_config.code.remote`, as Envoy Gateway configures it,
/// without its retries), `fail_open` as given, and a cluster for the server.
/// Where the harness's wasm filter config is in its bootstrap.
const FILTER_CONFIG: &str = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/config";

fn remote_module_bootstrap(
    config: &Value,
    server: SocketAddr,
    sha256: &str,
    fail_open: bool,
    dir: &Path,
) -> PathBuf {
    let mut bootstrap = EnvoySpec::plugin(config)
        .render(&dir.join("access.log"))
        .unwrap();
    let code = bootstrap
        .pointer_mut(&format!("{FILTER_CONFIG}/vm_config/code"))
        .expect("the harness's wasm filter");
    *code = json!({"remote": {
        "http_uri": {"uri": format!("http://{server}/plugin.wasm"), "cluster": "wasm-module", "timeout": "10s"},
        "sha256": sha256,
        "retry_policy": {"num_retries": 0},
    }});
    bootstrap.pointer_mut(FILTER_CONFIG).unwrap()["fail_open"] = json!(fail_open);
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(envoy::static_cluster("wasm-module", &[server]));
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    path
}

fn rollout_config(endpoints: Vec<String>) -> Value {
    json!({
        "pools": [{"name": "pool", "endpoints": endpoints}],
        "models": [{"modelName": "lora-request", "poolRef": "pool",
                    "targetModels": [{"name": "tweet-summary", "weight": 1}]}],
        "defaultPool": "pool",
        "unknownModels": "reject",
        "scheduling": {"strategy": "ROUND_ROBIN"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_runs_the_module_from_the_image() {
    let (_built, fetched) = module_through_registry().await;
    let pods = start_pods(2, &PodOptions::default()).await.unwrap();
    let (server, fetches) = serve_module(fetched.module.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = remote_module_bootstrap(
        &rollout_config(endpoints(&pods)),
        server,
        &sha256_hex(&fetched.module),
        false,
        dir.path(),
    );
    let started = Instant::now();
    let envoy = Envoy::start_file(&config, dir.path()).await.unwrap();
    eprintln!("Envoy ready: {:?}", started.elapsed());
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch of the module");
    let reply = envoy
        .client()
        .unwrap()
        .completion("lora-request", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let requests: Vec<_> = pods.iter().flat_map(|p| p.requests()).collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].model().as_deref(), Some("tweet-summary"));
    let picked = requests[0].header(DESTINATION_HEADER).unwrap().to_string();
    assert!(endpoints(&pods).contains(&picked), "{picked}");
}

/// What Envoy 1.40 does with a module whose sha256 is not the one configured (measured): it
/// fetches the module (once: no retries configured), refuses it ("Retry limit exceeded for
/// fetching data from remote data source", then "Plugin inference-router failed to load"), and
/// comes up anyway: the listener is created and serves, but without the plugin. With
/// `fail_open: false` (what the shipped installs set) every request on it gets Envoy's own 503
/// with an empty body and reaches no pod; with `fail_open: true` requests go through untouched
/// (no routing, no model substitution).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refuses_the_module_with_a_wrong_sha256() {
    let (_built, fetched) = module_through_registry().await;
    let pods = start_pods(1, &PodOptions::default()).await.unwrap();
    let (server, fetches) = serve_module(fetched.module.clone()).await;
    let mut wrong = sha256_hex(&fetched.module);
    wrong.replace_range(..1, if wrong.starts_with('0') { "1" } else { "0" });

    for fail_open in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = remote_module_bootstrap(
            &rollout_config(endpoints(&pods)),
            server,
            &wrong,
            fail_open,
            dir.path(),
        );
        let before = fetches.load(Ordering::SeqCst);
        let started = Instant::now();
        let envoy = Envoy::start_file(&config, dir.path())
            .await
            .expect("Envoy comes up (without the plugin) when the module's sha256 is wrong");
        eprintln!(
            "fail_open {fail_open}: Envoy ready after {:?}",
            started.elapsed()
        );
        // The module arrived whole and was refused: one fetch, answered 200.
        assert_eq!(fetches.load(Ordering::SeqCst) - before, 1);
        let stats = envoy
            .admin_get("/stats?filter=^cluster.wasm-module.upstream_rq_200$")
            .await
            .unwrap();
        assert_eq!(stats.trim(), "cluster.wasm-module.upstream_rq_200: 1");
        let log = envoy.log();
        assert!(
            log.contains("Plugin inference-router failed to load"),
            "{log}"
        );

        pods[0].clear();
        let reply = envoy
            .client()
            .unwrap()
            .completion("lora-request", &[])
            .await
            .unwrap();
        let requests = pods[0].requests();
        if fail_open {
            // Through untouched: the cluster's own balancing, the client's model.
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(requests.len(), 1);
            assert_eq!(requests[0].model().as_deref(), Some("lora-request"));
            assert_eq!(requests[0].header(DESTINATION_HEADER), None);
        } else {
            assert!(
                log.contains("Plugin configured to fail closed failed to load"),
                "{log}"
            );
            assert_eq!(reply.status, 503, "{}", reply.text());
            assert!(
                reply.body.is_empty(),
                "Envoy's 503, not the plugin's: {}",
                reply.text()
            );
            assert!(requests.is_empty(), "{requests:?}");
        }
    }
}
