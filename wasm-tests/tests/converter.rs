//! The configuration tool's output routes real traffic: `dist/inference-router-config --target
//! envoy` on the Inference Extension's gray-release example (testdata/inference-extension/), used
//! unchanged as the plugin's document in the real Envoy. The pool finds its pods at run time in
//! the cluster named after it (a STATIC cluster with `override_host`, as in envoy/envoy.yaml),
//! through the `envoy-admin` cluster, and `lora-request` is split over the ten target adapters.
//! And the manifests it prints (`--wasmplugin`, `--envoyextensionpolicy`) in place of the shipped
//! ones, in Envoy as each control plane configures it (`wasm_tests::installs`).

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use wasm_tests::addr::next_pod_ip;
use wasm_tests::envoy::{
    static_cluster, wasm_module, Envoy, EnvoySpec, BUFFER_LIMIT_BYTES, DESTINATION_HEADER,
};
use wasm_tests::installs::{envoy_gateway, istio, serve_file, Manifests, Running, World};
use wasm_tests::pod::{Pod, PodOptions, Recorded};
use wasm_tests::{canary_adapters, repo_root, PROMPT};

const POOL: &str = "vllm-llama2-7b-pool";

fn gray_release() -> String {
    repo_root()
        .join("testdata/inference-extension/gray-release-v1alpha1.yaml")
        .display()
        .to_string()
}

/// What `make build` puts in dist/, run as users run it: its standard output.
fn run_converter(args: &[&str]) -> Vec<u8> {
    let bin = repo_root().join("dist/inference-router-config");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `make build`",
        bin.display()
    );
    let out = Command::new(&bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn convert(args: &[&str]) -> Value {
    serde_json::from_slice(&run_converter(args)).unwrap()
}

async fn canary_pods(n: usize) -> Vec<Pod> {
    let options = PodOptions {
        adapters: canary_adapters(),
        // A name no pod serves would get vLLM's 404.
        strict_models: true,
        ..PodOptions::default()
    };
    let mut pods = Vec::new();
    for _ in 0..n {
        pods.push(Pod::start_next(options.clone()).await.unwrap());
    }
    pods
}

/// The completions the pods served (scrapes apart) went to target adapters, each named in
/// `x-gateway-model-name`, and every adapter got some: returns the count per pod.
fn assert_split_over_the_adapters(pods: &[Pod], n: usize) -> Vec<usize> {
    let adapters = canary_adapters();
    let mut per_adapter: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_pod = Vec::new();
    for p in pods {
        let served: Vec<Recorded> = p
            .requests()
            .into_iter()
            .filter(|r| r.path() == "/v1/completions")
            .collect();
        per_pod.push(served.len());
        for r in served {
            let model = r.model().unwrap();
            assert!(adapters.contains(&model), "{model} is not a target");
            assert_eq!(r.header("x-gateway-model-name"), Some(model.as_str()));
            *per_adapter.entry(model).or_default() += 1;
        }
    }
    assert_eq!(per_pod.iter().sum::<usize>(), n, "{per_pod:?}");
    // Ten adapters at weight 10 each: 200 requests miss one with probability 10 × 0.9^200 < 1e-8.
    assert_eq!(
        per_adapter.len(),
        adapters.len(),
        "every adapter gets traffic: {per_adapter:?}"
    );
    per_pod
}

/// The pool's pods as a plain Envoy configuration holds them: a STATIC cluster whose
/// `override_host` policy follows the destination header to a member.
fn pool_cluster(name: &str, pods: &[SocketAddr]) -> Value {
    let mut cluster = static_cluster(name, pods);
    let obj = cluster.as_object_mut().unwrap();
    obj.remove("lb_policy");
    obj.insert(
        "load_balancing_policy".to_string(),
        json!({"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                "override_host_sources": [{"header": DESTINATION_HEADER}],
                "fallback_policy": {"policies": [{"typed_extension_config": {
                    "name": "envoy.load_balancing_policies.least_request",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"},
                }}]},
            },
        }}]}),
    );
    obj.insert(
        "per_connection_buffer_limit_bytes".to_string(),
        json!(BUFFER_LIMIT_BYTES),
    );
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_converted_gray_release_routes_to_its_ten_adapters() {
    let config = convert(&["--target", "envoy", &gray_release()]);
    assert_eq!(
        config["pools"][0]["discovery"],
        json!({"cluster": POOL, "adminCluster": "envoy-admin", "refreshMs": 2000})
    );
    assert_eq!(config["collector"]["mode"], "service");

    let pods = canary_pods(4).await;
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();

    // The document as printed. The harness's route goes through its own ORIGINAL_DST cluster
    // on the destination header; the pool's cluster (the pool's name, which the document
    // discovers and scrapes through) and the admin cluster are the ones a plain Envoy
    // configuration gives it.
    let admin: SocketAddr = (next_pod_ip(), 9901).into();
    let mut spec = EnvoySpec::plugin(&config);
    assert!(spec.collector_service, "collector.mode service");
    spec.pool_clusters = vec!["original-dst".to_string()];
    spec.admin_address = Some(admin);
    spec.extra_clusters = vec![
        pool_cluster(POOL, &addrs),
        static_cluster("envoy-admin", &[admin]),
    ];
    let envoy = Envoy::start(&spec).await.unwrap();
    let client = envoy.client().unwrap();

    // Until the first discovery the pool has no member (503); then every request goes through.
    let start = Instant::now();
    loop {
        let r = client.completion("lora-request", &[]).await.unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no member discovered\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &pods {
        p.clear();
    }

    let n = 200;
    for _ in 0..n {
        let r = client.completion("lora-request", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_split_over_the_adapters(&pods, n);
    // Each pod was discovered and scraped through the pool's cluster.
    for p in &pods {
        assert!(p.scrape_count() > 0, "{} never scraped", p.endpoint());
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ControlPlane {
    Istio,
    EnvoyGateway,
}

/// The printed manifest in place of the shipped one, beside the shipped routing objects: the
/// gateway, the route, the pool's Service (named apart from the pool, hence --service / --route)
/// and the routing policies.
async fn manifest_routes_the_gray_release(cp: ControlPlane) {
    let (flags, example, others): (&[&str], &str, &[&str]) = match cp {
        ControlPlane::Istio => (
            &["--wasmplugin", "--service", "vllm-llama2-7b"],
            "istio",
            &["routing.yaml", "gateway.yaml"],
        ),
        ControlPlane::EnvoyGateway => (
            &["--envoyextensionpolicy", "--route", "inference"],
            "envoy-gateway",
            &["traffic-policies.yaml", "gateway.yaml"],
        ),
    };
    let gray = gray_release();
    let mut args = flags.to_vec();
    args.push(&gray);
    let dir = tempfile::tempdir().unwrap();
    let printed = dir.path().join("inference-router.yaml");
    std::fs::write(&printed, run_converter(&args)).unwrap();
    let mut paths = vec![printed];
    paths.extend(
        others
            .iter()
            .map(|f| repo_root().join("examples").join(example).join(f)),
    );
    let manifests = Manifests::read(&paths).unwrap();

    let pods = canary_pods(3).await;
    let members: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    let module = wasm_module();
    let module_server = match cp {
        ControlPlane::EnvoyGateway => Some(serve_file(&module).await.unwrap()),
        ControlPlane::Istio => None,
    };
    let world = World {
        pods: members.clone(),
        module,
        admin: (next_pod_ip(), 9901).into(),
        module_server,
    };
    let generated = match cp {
        ControlPlane::Istio => istio::generate(&manifests, &world),
        ControlPlane::EnvoyGateway => envoy_gateway::generate(&manifests, &world),
    }
    .unwrap();
    let running = Running::start(generated, &members).await.unwrap();
    // Discovered and scraped (embedded collector) before traffic.
    let deadline = Instant::now() + PROMPT;
    while pods.iter().any(|p| p.scrape_count() == 0) {
        assert!(Instant::now() < deadline, "{cp:?}: pods never scraped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = running.client().unwrap();
    let n = 200;
    for _ in 0..n {
        let r = client.completion("lora-request", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{cp:?}: {}", r.text());
    }
    assert_split_over_the_adapters(&pods, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_wasmplugins_route_the_gray_release_under_istio() {
    manifest_routes_the_gray_release(ControlPlane::Istio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_extension_policy_routes_the_gray_release_under_envoy_gateway() {
    manifest_routes_the_gray_release(ControlPlane::EnvoyGateway).await;
}

/// The Inference Extension's newer resources, converted: InferenceModelRewrite's weighted rule
/// splits `support-bot` 90/10 over its two adapters and sends every other name to the base
/// model; InferenceObjective's priority, named by the `x-gateway-inference-objective` header,
/// decides who is shed when the pool is saturated (below zero: sheddable) — as under llm-d.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_objectives_and_model_rewrites_route_as_the_resources_say() {
    objectives_and_rewrites_route("objectives-rewrites-v1alpha2.yaml", "batch", "interactive")
        .await;
}

/// The same under llm-d's group, as `kubectl get -o yaml` lists the resources: two rewrites
/// match `support-bot` and the older one's 90/10 rule is the one applied (the newer would send
/// all of it to `support-bot-v2`), the newer one's catch-all still applies; `batch` (priority
/// -1) is shed on a saturated pool, `interactive` (no priority: 0) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_llm_d_resources_route_as_llm_d_would() {
    let yaml = repo_root()
        .join("testdata/inference-extension/objectives-rewrites-llm-d.yaml")
        .display()
        .to_string();
    let bin = repo_root().join("dist/inference-router-config");
    let out = Command::new(&bin)
        .args(["--target", "envoy", &yaml])
        .output()
        .unwrap();
    assert!(out.status.success());
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.contains(
            "(InferenceModelRewrite/support-bot-rollback): spec.rules[0].matches[0]: left out"
        ),
        "{warnings}"
    );
    objectives_and_rewrites_route("objectives-rewrites-llm-d.yaml", "batch", "interactive").await;
}

/// Converts testdata/inference-extension/`file` (pool `llama3-8b`; a rewrite splitting
/// `support-bot` 90/10 over `support-bot-v1` and `-v2`, a catch-all to the base model; the
/// objective `shed` below zero, `served` at or above) and routes through the real Envoy.
async fn objectives_and_rewrites_route(file: &str, shed: &str, served: &str) {
    let yaml = repo_root()
        .join("testdata/inference-extension")
        .join(file)
        .display()
        .to_string();
    let config = convert(&["--target", "envoy", &yaml]);
    let pool = "llama3-8b";
    let base = "meta-llama/Llama-3.1-8B-Instruct";
    let options = PodOptions {
        base_model: base.to_string(),
        adapters: vec!["support-bot-v1".to_string(), "support-bot-v2".to_string()],
        strict_models: true,
    };
    let mut pods = Vec::new();
    for _ in 0..2 {
        pods.push(Pod::start_next(options.clone()).await.unwrap());
    }
    let addrs: Vec<SocketAddr> = pods.iter().map(Pod::addr).collect();
    let admin: SocketAddr = (next_pod_ip(), 9901).into();
    let mut spec = EnvoySpec::plugin(&config);
    spec.pool_clusters = vec!["original-dst".to_string()];
    spec.admin_address = Some(admin);
    spec.extra_clusters = vec![
        pool_cluster(pool, &addrs),
        static_cluster("envoy-admin", &[admin]),
    ];
    let envoy = Envoy::start(&spec).await.unwrap();
    let client = envoy.client().unwrap();
    let start = Instant::now();
    loop {
        let r = client.completion("support-bot", &[]).await.unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            start.elapsed() < PROMPT,
            "no member discovered\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &pods {
        p.clear();
    }

    let n = 200;
    for _ in 0..n {
        let r = client.completion("support-bot", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = client.completion("anything-else", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for req in pods.iter().flat_map(Pod::requests) {
        if req.path() == "/v1/completions" {
            *seen.entry(req.model().unwrap_or_default()).or_default() += 1;
        }
    }
    let v1 = seen.get("support-bot-v1").copied().unwrap_or(0);
    let v2 = seen.get("support-bot-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "{seen:?}");
    assert!((150..=195).contains(&v1), "90/10 over {n}: {seen:?}");
    assert_eq!(seen.get(base), Some(&1), "the catch-all rule: {seen:?}");

    // Saturated: the objective below zero is shed, the one above is served.
    for p in &pods {
        p.pin(&wasm_tests::sim::Pin {
            waiting: Some(50),
            kv: Some(0.1),
            ..Default::default()
        });
    }
    let deadline = Instant::now() + PROMPT;
    loop {
        let r = client
            .completion("support-bot", &[("x-gateway-inference-objective", shed)])
            .await
            .unwrap();
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "never shed\n{}", envoy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client
        .completion("support-bot", &[("x-gateway-inference-objective", served)])
        .await
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "{served} is served while saturated: {}",
        r.text()
    );
}
