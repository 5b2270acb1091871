//! The conversion on the manifests in testdata/inference-extension/ (the gray-release example in
//! the older v1alpha1 shape, and manifests written in the shapes of the Inference Extension's and
//! llm-d's own examples), its errors, the manifests it prints, and docs/config.schema.json.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use inference_router_config::{run, Error};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn testdata(name: &str) -> String {
    repo()
        .join("testdata/inference-extension")
        .join(name)
        .display()
        .to_string()
}

const TESTDATA: [&str; 6] = [
    "gray-release-v1alpha1.yaml",
    "pool-v1.yaml",
    "pools-v1alpha2.yaml",
    "list.yaml",
    "objectives-rewrites-v1alpha2.yaml",
    "objectives-rewrites-llm-d.yaml",
];

/// The command's output for `args` (stdin: `input`); it warns of nothing.
fn output(args: &[&str], input: &str) -> Result<String, Error> {
    let (out, warnings) = output_and_warnings(args, input)?;
    assert_eq!(warnings, "", "unexpected warnings for {args:?}");
    Ok(out)
}

/// The command's output for `args` (stdin: `input`) and what it wrote as warnings.
fn output_and_warnings(args: &[&str], input: &str) -> Result<(String, String), Error> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    let mut warn = Vec::new();
    run(&args, &mut input.as_bytes(), &mut out, &mut warn)?;
    Ok((
        String::from_utf8(out).unwrap(),
        String::from_utf8(warn).unwrap(),
    ))
}

/// The document for `files` with the extra `flags` (whatever it warns of).
fn document(files: &[&str], flags: &[&str]) -> Value {
    let paths: Vec<String> = files.iter().map(|f| testdata(f)).collect();
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(paths.iter().map(String::as_str));
    serde_json::from_str(&output_and_warnings(&args, "").unwrap().0).unwrap()
}

/// The error for YAML given on stdin.
fn refused(yaml: &str, flags: &[&str]) -> String {
    let mut args = flags.to_vec();
    args.push("-");
    match output(&args, yaml) {
        Ok(out) => panic!("accepted:\n{yaml}\nprinted:\n{out}"),
        Err(e) => e.to_string(),
    }
}

fn schema() -> Value {
    let text = std::fs::read_to_string(repo().join("docs/config.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_valid(schema: &Value, doc: &Value, what: &str) {
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{doc:#}");
}

fn adapters() -> Vec<Value> {
    [
        "tweet-summary",
        "tweet-summary-1",
        "tweet-summary-2",
        "tweet-summary-3",
        "tweet-summary-4",
        "sql-lora",
        "sql-lora-1",
        "sql-lora-2",
        "sql-lora-3",
        "sql-lora-4",
    ]
    .iter()
    .map(|n| json!({"name": n, "weight": 10}))
    .collect()
}

#[test]
fn gray_release_for_istio() {
    let doc = document(&["gray-release-v1alpha1.yaml"], &[]);
    let cluster = "outbound|8000||vllm-llama2-7b-pool.default.svc.cluster.local";
    assert_eq!(
        doc,
        json!({
            "pools": [{"name": "vllm-llama2-7b-pool", "cluster": cluster,
                       "discovery": {"cluster": cluster, "adminCluster": "prometheus_stats",
                                     "refreshMs": 2000}}],
            "models": [{"modelName": "lora-request", "poolRef": "vllm-llama2-7b-pool",
                        "targetModels": adapters()}],
            "defaultPool": "vllm-llama2-7b-pool",
            "collector": {"mode": "embedded"},
            "maxRequestBodyBytes": 1048576,
        })
    );
    // The Service of the shipped Istio example is named apart from the pool.
    let doc = document(
        &["gray-release-v1alpha1.yaml"],
        &["--target", "istio", "--service", "vllm-llama2-7b"],
    );
    let cluster = "outbound|8000||vllm-llama2-7b.default.svc.cluster.local";
    assert_eq!(doc["pools"][0]["cluster"], cluster);
    assert_eq!(doc["pools"][0]["discovery"]["cluster"], cluster);
}

#[test]
fn gray_release_for_envoy_gateway_and_envoy() {
    let doc = document(&["gray-release-v1alpha1.yaml"], &["--target=envoy-gateway"]);
    let cluster = "httproute/default/vllm-llama2-7b-pool/rule/0";
    assert_eq!(doc["pools"][0]["cluster"], cluster);
    assert_eq!(
        doc["pools"][0]["discovery"],
        json!({"cluster": cluster, "adminCluster": "prometheus_stats", "refreshMs": 2000})
    );
    assert_eq!(doc["collector"]["mode"], "embedded");
    // The shipped Envoy Gateway example's route.
    let doc = document(
        &["gray-release-v1alpha1.yaml"],
        &["--target", "envoy-gateway", "--route", "inference"],
    );
    assert_eq!(
        doc["pools"][0]["discovery"]["cluster"],
        "httproute/default/inference/rule/0"
    );

    let doc = document(&["gray-release-v1alpha1.yaml"], &["--target", "envoy"]);
    assert_eq!(
        doc,
        json!({
            "pools": [{"name": "vllm-llama2-7b-pool",
                       "discovery": {"cluster": "vllm-llama2-7b-pool", "adminCluster": "envoy-admin",
                                     "refreshMs": 2000}}],
            "models": [{"modelName": "lora-request", "poolRef": "vllm-llama2-7b-pool",
                        "targetModels": adapters()}],
            "defaultPool": "vllm-llama2-7b-pool",
            "collector": {"mode": "service"},
        })
    );
}

#[test]
fn inference_pool_v1_with_target_ports_and_endpoint_picker() {
    let doc = document(&["pool-v1.yaml"], &[]);
    let cluster = "outbound|8200||qwen3-32b.llm-serving.svc.cluster.local";
    assert_eq!(
        doc,
        json!({
            "pools": [{"name": "qwen3-32b", "cluster": cluster,
                       "discovery": {"cluster": cluster, "adminCluster": "prometheus_stats",
                                     "refreshMs": 2000}}],
            "models": [
                {"modelName": "Qwen/Qwen3-32B", "poolRef": "qwen3-32b", "criticality": "Critical"},
                {"modelName": "support-bot", "poolRef": "qwen3-32b", "criticality": "Sheddable",
                 "targetModels": [{"name": "support-bot-v3", "weight": 90},
                                  {"name": "support-bot-v4", "weight": 10}]},
            ],
            "defaultPool": "qwen3-32b",
            "collector": {"mode": "embedded"},
            "maxRequestBodyBytes": 1048576,
            // endpointPickerRef.failureMode
            "failureMode": "FailOpen",
        })
    );
    // -n only fills in objects that name no namespace.
    let again = document(&["pool-v1.yaml"], &["-n", "elsewhere"]);
    assert_eq!(again, doc);
}

#[test]
fn several_v1alpha2_pools() {
    let doc = document(&["pools-v1alpha2.yaml"], &["--target", "envoy"]);
    assert_eq!(
        doc,
        json!({
            "pools": [
                {"name": "llama3-8b-instruct",
                 "discovery": {"cluster": "llama3-8b-instruct", "adminCluster": "envoy-admin",
                               "refreshMs": 2000}},
                {"name": "mistral-7b",
                 "discovery": {"cluster": "mistral-7b", "adminCluster": "envoy-admin",
                               "refreshMs": 2000}},
            ],
            "models": [
                {"modelName": "food-review", "poolRef": "llama3-8b-instruct",
                 "criticality": "Standard",
                 "targetModels": [{"name": "food-review-1", "weight": 75},
                                  {"name": "food-review-2", "weight": 25}]},
                {"modelName": "summaries", "poolRef": "llama3-8b-instruct",
                 "targetModels": [{"name": "summaries-a"}, {"name": "summaries-b"}]},
                {"modelName": "mistralai/Mistral-7B-Instruct-v0.3", "poolRef": "mistral-7b",
                 "criticality": "Sheddable"},
            ],
            // Two pools: no default unless asked; extensionRef (and its failureMode) is the
            // external picker's, not read.
            "collector": {"mode": "service"},
        })
    );
    let doc = document(
        &["pools-v1alpha2.yaml"],
        &[
            "--default-pool",
            "mistral-7b",
            "--service",
            "mistral-7b=mistral",
            "-n",
            "models",
        ],
    );
    assert_eq!(doc["defaultPool"], "mistral-7b");
    assert_eq!(
        doc["pools"][0]["cluster"],
        "outbound|8000||llama3-8b-instruct.models.svc.cluster.local"
    );
    assert_eq!(
        doc["pools"][1]["cluster"],
        "outbound|8080||mistral.models.svc.cluster.local"
    );
}

#[test]
fn a_list_of_v1alpha1_objects() {
    let doc = document(&["list.yaml"], &["--target", "envoy-gateway"]);
    assert_eq!(
        doc["pools"][0]["discovery"]["cluster"],
        "httproute/team-a/gemma-pool/rule/0"
    );
    assert_eq!(
        doc["models"],
        // v1alpha1: `Default` is the middle criticality, and a missing weight is 1.
        json!([{"modelName": "gemma-chat", "poolRef": "gemma-pool", "criticality": "Standard",
                "targetModels": [{"name": "gemma-chat-lora-a", "weight": 3},
                                 {"name": "gemma-chat-lora-b", "weight": 1}]}])
    );
}

#[test]
fn several_files_and_stdin_make_one_document() {
    let gray = std::fs::read_to_string(testdata("gray-release-v1alpha1.yaml")).unwrap();
    let v1alpha2 = testdata("pools-v1alpha2.yaml");
    let out = output(&["--target", "envoy", &v1alpha2, "-"], &gray).unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    let pools: Vec<&str> = doc["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        pools,
        ["llama3-8b-instruct", "mistral-7b", "vllm-llama2-7b-pool"]
    );
    assert_eq!(doc["models"].as_array().unwrap().len(), 4);
}

#[test]
fn other_kinds_are_refused_or_skipped() {
    let mut yaml = std::fs::read_to_string(testdata("gray-release-v1alpha1.yaml")).unwrap();
    yaml.push_str(
        "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: vllm-llama2-7b-pool}\n\
         spec: {selector: {app: vllm-llama2-7b-pool}, ports: [{port: 8000}]}\n",
    );
    let e = refused(&yaml, &[]);
    assert!(
        e.contains("<stdin>: document 3 (Service/vllm-llama2-7b-pool): kind: "),
        "{e}"
    );
    let out = output(&["--skip-other-kinds", "-"], &yaml).unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["models"][0]["targetModels"], json!(adapters()));
}

const POOL: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: pool}
spec: {selector: {app: vllm}, targetPortNumber: 8000}
";

fn with_model(spec: &str) -> String {
    format!(
        "{POOL}---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\n\
         metadata: {{name: chat}}\nspec:\n{spec}"
    )
}

#[test]
fn each_error_names_the_document_and_the_field() {
    let cases: Vec<(String, &str)> = vec![
        // The InferenceModel's own checks.
        (
            with_model(
                "  modelName: chat\n  poolRef: {name: pool}\n  targetModels:\n  \
                 - {name: a, weight: 1}\n  - {name: b, weight: -1}\n",
            ),
            "<stdin>: document 2 (InferenceModel/chat): spec.targetModels[1].weight: -1 is not \
             an integer between 0 and 1000000",
        ),
        (
            with_model("  modelName: chat\n  poolRef: {name: other}\n"),
            "<stdin>: document 2 (InferenceModel/chat): spec.poolRef.name: no InferencePool \
             \"other\" in the input",
        ),
        (
            with_model("  modelName: chat\n  poolRef: {name: pool, kind: Service}\n"),
            "document 2 (InferenceModel/chat): spec.poolRef.kind: \"Service\" is not InferencePool",
        ),
        (
            with_model("  modelName: chat\n  criticality: Default\n  poolRef: {name: pool}\n"),
            "spec.criticality: \"Default\" is not one of Critical, Standard, Sheddable",
        ),
        (
            with_model(
                "  modelName: chat\n  poolRef: {name: pool}\n  targetModels: [{name: a, weight: 1}, {name: b}]\n",
            ),
            "document 2 (InferenceModel/chat): spec.targetModels: give a weight to every target \
             model or to none",
        ),
        (
            with_model(
                "  modelName: chat\n  poolRef: {name: pool}\n  targetModels: [{name: a}, {name: a}]\n",
            ),
            "spec.targetModels[1].name: duplicate target model \"a\"",
        ),
        (
            with_model("  modelName: chat\n  poolRef: {name: pool}\n  targetModel: [{name: a}]\n"),
            "document 2 (InferenceModel/chat): spec.targetModel: unknown field `targetModel`",
        ),
        (
            with_model("  modelName: 7\n  poolRef: {name: pool}\n"),
            "document 2 (InferenceModel/chat): spec.modelName: invalid type: integer `7`",
        ),
        (
            with_model("  poolRef: {name: pool}\n"),
            "document 2 (InferenceModel/chat): spec: missing field `modelName`",
        ),
        (
            format!(
                "{}---\n{}",
                with_model("  modelName: chat\n  poolRef: {name: pool}\n"),
                with_model("  modelName: chat\n  poolRef: {name: pool}\n")
                    .replace(POOL, "")
                    .replace("{name: chat}", "{name: chat-2}")
                    .trim_start_matches("---\n")
            ),
            "<stdin>: document 3 (InferenceModel/chat-2): spec.modelName: \"chat\" is served \
             already by <stdin>: document 2 (InferenceModel/chat)",
        ),
        (
            with_model("  modelName: chat\n  poolRef: {name: pool}\n")
                .replace("metadata: {name: chat}", "metadata: {name: chat, namespace: b}"),
            "document 2 (InferenceModel/chat): spec.poolRef.name: InferencePool \"pool\" is in \
             namespace default, not b",
        ),
        // Pools.
        (
            POOL.replace(", targetPortNumber: 8000", ""),
            "<stdin>: document 1 (InferencePool/pool): spec: missing field `targetPortNumber`",
        ),
        (
            POOL.replace("8000", "0"),
            "document 1 (InferencePool/pool): spec.targetPortNumber: 0 is not a port number",
        ),
        (
            format!("{POOL}---\n{POOL}"),
            "<stdin>: document 2 (InferencePool/pool): metadata.name: a second InferencePool \
             \"pool\"",
        ),
        (
            POOL.replace("metadata: {name: pool}\n", ""),
            "<stdin>: document 1 (InferencePool): metadata.name: missing",
        ),
        (
            "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: p}\n\
             spec:\n  selector: {app: vllm}\n  targetPorts: [{number: 8000}]\n"
                .to_string(),
            "document 1 (InferencePool/p): spec.selector.app: unknown field `app`, expected \
             `matchLabels`",
        ),
        (
            "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: p}\n\
             spec:\n  selector: {matchLabels: {app: vllm}}\n  targetPorts: []\n"
                .to_string(),
            "document 1 (InferencePool/p): spec.targetPorts: must list the pool's target port",
        ),
        (
            "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: p}\n\
             spec:\n  selector: {matchLabels: {app: vllm}}\n  targetPorts: [{number: 8000}]\n  \
             endpointPickerRef: {name: epp, failureMode: FailSometimes}\n"
                .to_string(),
            "spec.endpointPickerRef.failureMode: \"FailSometimes\" is not one of FailOpen, FailClose",
        ),
        (
            format!(
                "{}---\n{}",
                std::fs::read_to_string(testdata("pool-v1.yaml")).unwrap(),
                "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: p2}\n\
                 spec:\n  selector: {matchLabels: {app: vllm}}\n  targetPorts: [{number: 8000}]\n  \
                 endpointPickerRef: {name: epp, failureMode: FailClose}\n"
            ),
            "document 4 (InferencePool/p2): spec.endpointPickerRef.failureMode: FailClose, but \
             <stdin>: document 1 (InferencePool/qwen3-32b) says FailOpen",
        ),
        // Kinds, versions, YAML.
        (
            format!(
                "{POOL}---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n\
                 metadata: {{name: chat}}\nspec: {{priority: 10, poolRef: {{name: other}}}}\n"
            ),
            "<stdin>: document 2 (InferenceObjective/chat): spec.poolRef.name: no InferencePool \
             \"other\" in namespace default in the input",
        ),
        (
            format!(
                "{POOL}---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n\
                 metadata: {{name: chat}}\nspec: {{priority: 4294967296, poolRef: {{name: pool}}}}\n"
            ),
            "<stdin>: document 2 (InferenceObjective/chat): spec.priority: must be a 32-bit integer",
        ),
        (
            format!(
                "{POOL}---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModelRewrite\n\
                 metadata: {{name: canary}}\nspec: {{poolRef: {{name: pool}}, rules: [{{matches: \
                 [{{model: {{value: a}}}}], targets: []}}]}}\n"
            ),
            "<stdin>: document 2 (InferenceModelRewrite/canary): spec.rules[0].targets: must name \
             at least one target",
        ),
        (
            format!(
                "{POOL}---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModelRewrite\n\
                 metadata: {{name: canary}}\nspec: {{poolRef: {{name: pool}}, rules: [{{matches: \
                 [{{model: {{value: a}}}}], targets: [{{modelRewrite: b, weight: 1}}, \
                 {{modelRewrite: c}}]}}]}}\n"
            ),
            "<stdin>: document 2 (InferenceModelRewrite/canary): spec.rules[0].targets",
        ),
        (
            POOL.replace("v1alpha2", "v1beta1"),
            "document 1 (InferencePool/pool): apiVersion: inference.networking.x-k8s.io/v1beta1 \
             is not a known version of InferencePool",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n".to_string(),
            "<stdin>: document 1 (ConfigMap/cm): kind: ConfigMap (v1) is not an InferencePool, \
             InferenceModel, InferenceObjective or InferenceModelRewrite",
        ),
        (
            format!("{POOL}---\nkind: InferenceModel\nmetadata: {{name: m}}\n"),
            "<stdin>: document 2 (InferenceModel/m): apiVersion: missing",
        ),
        (
            format!("{POOL}---\nspec: [1, 2\n"),
            "<stdin>: document 2: not valid YAML: ",
        ),
        (
            format!("{POOL}---\n- just\n- a list\n"),
            "<stdin>: document 2: not a Kubernetes object",
        ),
        (
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- {}",
                with_model("  modelName: chat\n  poolRef: {name: nowhere}\n")
                    .split("---\n")
                    .nth(1)
                    .unwrap()
                    .replace('\n', "\n  ")
            ),
            "<stdin>: document 1 items[0] (InferenceModel/chat): spec.poolRef.name: no \
             InferencePool \"nowhere\"",
        ),
        ("".to_string(), "no InferencePool in the input"),
    ];
    for (yaml, expected) in &cases {
        let e = refused(yaml, &[]);
        assert!(
            e.contains(expected),
            "expected …{expected}…\ngot {e}\nfor\n{yaml}"
        );
    }
}

#[test]
fn flags_are_checked() {
    let gray = testdata("gray-release-v1alpha1.yaml");
    let two = testdata("pools-v1alpha2.yaml");
    for (args, expected) in [
        (
            vec!["--target", "nginx", &gray],
            "--target nginx: not one of",
        ),
        (
            vec!["--target", "envoy", "--service", "x", &gray],
            "--service is for --target istio",
        ),
        (
            vec!["--route", "x", &gray],
            "--route is for --target envoy-gateway",
        ),
        (
            vec!["--service", "x", &two],
            "the input has 2 pools; give --service POOL=x",
        ),
        (
            vec!["--service", "nope=x", &two],
            "no InferencePool \"nope\"",
        ),
        (
            vec!["--default-pool", "nope", &two],
            "--default-pool nope: no InferencePool",
        ),
        (
            vec!["--wasmplugin", "--target", "envoy", &gray],
            "--wasmplugin is for --target istio",
        ),
        (
            vec!["--wasmplugin", "--envoyextensionpolicy", &gray],
            "at most one of",
        ),
        (
            vec!["--sha256", "abc", &gray],
            "--sha256 abc: not 64 hex digits",
        ),
        (vec!["--bogus", &gray], "unknown flag --bogus"),
        (vec![], "no input"),
        (vec!["--schema", &gray], "--schema takes no FILE"),
        (
            vec!["/nonexistent/x.yaml"],
            "/nonexistent/x.yaml: cannot read",
        ),
    ] {
        let e = output(&args, "").unwrap_err().to_string();
        assert!(
            e.contains(expected),
            "{args:?}: expected …{expected}… got {e}"
        );
    }
    let help = output(&["--help"], "").unwrap();
    for needle in [
        "--target istio|envoy-gateway|envoy",
        "outbound|PORT||",
        "httproute/",
    ] {
        assert!(help.contains(needle), "{needle}");
    }
}

/// The shipped manifests' keys, recursively, minus what a test leaves out.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "pluginConfig" | "config"))
                .map(|(k, v)| (k.clone(), shape(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        _ => Value::Null,
    }
}

fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn wasmplugins_in_the_shape_of_the_istio_example() {
    let gray = testdata("gray-release-v1alpha1.yaml");
    let out = output(&["--wasmplugin", "--service", "vllm-llama2-7b", &gray], "").unwrap();
    let docs = yaml_documents(&out);
    let example = yaml_documents(
        &std::fs::read_to_string(repo().join("examples/istio/wasmplugin.yaml")).unwrap(),
    );
    assert_eq!(docs.len(), 2);
    // The same objects with the same fields as the shipped install, reader then gate.
    assert_eq!(shape(&docs[0]), shape(&example[0]));
    assert_eq!(shape(&docs[1]), shape(&example[1]));
    assert_eq!(docs[0]["metadata"], example[0]["metadata"]);
    assert_eq!(docs[1]["metadata"], example[1]["metadata"]);
    for (d, e) in docs.iter().zip(&example) {
        for f in [
            "targetRefs",
            "url",
            "pluginName",
            "failStrategy",
            "imagePullPolicy",
        ] {
            assert_eq!(d["spec"][f], e["spec"][f], "{f}");
        }
    }
    assert_eq!(docs[0]["spec"]["phase"], "STATS");
    assert_eq!(docs[1]["spec"].get("phase"), None);
    // The reader carries the document, the gate its own settings.
    let doc = document(
        &["gray-release-v1alpha1.yaml"],
        &["--service", "vllm-llama2-7b"],
    );
    assert_eq!(docs[0]["spec"]["pluginConfig"], doc);
    assert_eq!(
        docs[1]["spec"]["pluginConfig"],
        example[1]["spec"]["pluginConfig"]
    );
    // The reader's pool is the shipped example's, but for the target models.
    let shipped = &example[0]["spec"]["pluginConfig"]["pools"][0];
    assert_eq!(doc["pools"][0]["cluster"], shipped["cluster"]);
    assert_eq!(doc["pools"][0]["discovery"], shipped["discovery"]);

    // Image, digest, gateway, namespace.
    let sha = "ab".repeat(32);
    let out = output(
        &[
            "--wasmplugin",
            "--image",
            "registry.example/ir:1.2",
            "--sha256",
            &format!("sha256:{sha}"),
            "--gateway",
            "gw",
            &testdata("pool-v1.yaml"),
        ],
        "",
    )
    .unwrap();
    for d in yaml_documents(&out) {
        assert_eq!(d["spec"]["url"], "oci://registry.example/ir:1.2");
        assert_eq!(d["spec"]["sha256"], sha.as_str());
        assert_eq!(d["spec"]["targetRefs"][0]["name"], "gw");
        assert_eq!(d["metadata"]["namespace"], "llm-serving");
    }
    // The gate fails as the document says.
    let docs = yaml_documents(&out);
    assert_eq!(docs[1]["spec"]["pluginConfig"]["failureMode"], "FailOpen");
}

#[test]
fn extension_policy_in_the_shape_of_the_envoy_gateway_example() {
    let gray = testdata("gray-release-v1alpha1.yaml");
    let out = output(
        &["--envoyextensionpolicy", "--route", "inference", &gray],
        "",
    )
    .unwrap();
    let docs = yaml_documents(&out);
    let example = yaml_documents(
        &std::fs::read_to_string(repo().join("examples/envoy-gateway/extension-policy.yaml"))
            .unwrap(),
    );
    assert_eq!(docs.len(), 1);
    assert_eq!(shape(&docs[0]), shape(&example[0]));
    assert_eq!(docs[0]["metadata"], example[0]["metadata"]);
    assert_eq!(
        docs[0]["spec"]["targetRefs"],
        example[0]["spec"]["targetRefs"]
    );
    for i in 0..2 {
        let (d, e) = (&docs[0]["spec"]["wasm"][i], &example[0]["spec"]["wasm"][i]);
        for f in ["name", "rootID", "code", "failOpen"] {
            assert_eq!(d[f], e[f], "wasm[{i}].{f}");
        }
    }
    let doc = document(
        &["gray-release-v1alpha1.yaml"],
        &["--target", "envoy-gateway", "--route", "inference"],
    );
    assert_eq!(docs[0]["spec"]["wasm"][0]["config"], doc);
    assert_eq!(
        docs[0]["spec"]["wasm"][1]["config"],
        example[0]["spec"]["wasm"][1]["config"]
    );
    let shipped = &example[0]["spec"]["wasm"][0]["config"]["pools"][0];
    assert_eq!(doc["pools"][0]["cluster"], shipped["cluster"]);
    assert_eq!(doc["pools"][0]["discovery"], shipped["discovery"]);

    // Two pools: one policy on both routes; a module over HTTPS.
    let out = output(
        &[
            "--envoyextensionpolicy",
            "--image",
            "https://example.com/inference_router.wasm",
            &testdata("pools-v1alpha2.yaml"),
        ],
        "",
    )
    .unwrap();
    let policy = &yaml_documents(&out)[0];
    let routes: Vec<&str> = policy["spec"]["targetRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["llama3-8b-instruct", "mistral-7b"]);
    assert_eq!(
        policy["spec"]["wasm"][0]["code"],
        json!({"type": "HTTP", "http": {"url": "https://example.com/inference_router.wasm"}})
    );
}

#[test]
fn manifests_need_one_namespace() {
    let e = output(
        &[
            "--wasmplugin",
            &testdata("pool-v1.yaml"),
            &testdata("gray-release-v1alpha1.yaml"),
        ],
        "",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("several namespaces (default, llm-serving)"),
        "{e}"
    );
}

#[test]
fn the_schema_file_is_generated_from_the_types() {
    let generated = output(&["--schema"], "").unwrap();
    let path = repo().join("docs/config.schema.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "docs/config.schema.json is not what the configuration types generate; regenerate it \
         from the repository root with\n  cargo run -q -p inference-router-config -- --schema > \
         docs/config.schema.json\n(or dist/inference-router-config --schema after make build)"
    );
}

#[test]
fn every_output_validates_against_the_schema() {
    let schema = schema();
    for file in TESTDATA {
        for target in ["istio", "envoy-gateway", "envoy"] {
            let doc = document(&[file], &["--target", target]);
            assert_valid(&schema, &doc, &format!("{file} --target {target}"));
        }
    }
    for (flag, pointers) in [
        (
            "--wasmplugin",
            ["/0/spec/pluginConfig", "/1/spec/pluginConfig"],
        ),
        (
            "--envoyextensionpolicy",
            ["/0/spec/wasm/0/config", "/0/spec/wasm/1/config"],
        ),
    ] {
        let out = output(&[flag, &testdata("pool-v1.yaml")], "").unwrap();
        let docs = Value::Array(yaml_documents(&out));
        for p in pointers {
            assert_valid(&schema, docs.pointer(p).unwrap(), &format!("{flag} {p}"));
        }
    }
}

#[test]
fn the_shipped_documents_validate_and_mistakes_do_not() {
    let schema = schema();
    let canary: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/canary/config.json")).unwrap(),
    )
    .unwrap();
    assert_valid(&schema, &canary, "examples/canary/config.json");
    let istio = yaml_documents(
        &std::fs::read_to_string(repo().join("examples/istio/wasmplugin.yaml")).unwrap(),
    );
    for d in &istio {
        assert_valid(&schema, &d["spec"]["pluginConfig"], "examples/istio");
    }
    let eg = yaml_documents(
        &std::fs::read_to_string(repo().join("examples/envoy-gateway/extension-policy.yaml"))
            .unwrap(),
    );
    for w in eg[0]["spec"]["wasm"].as_array().unwrap() {
        assert_valid(&schema, &w["config"], "examples/envoy-gateway");
    }
    // The newer sections too.
    let traffic = json!({
        "pools": [{"name": "p"}], "defaultPool": "p",
        "objectives": [{"name": "batch", "priority": -1}, {"name": "chat", "priority": 5, "poolRef": "p"}],
        "defaultObjective": "batch",
        "models": [{"modelName": "m", "objective": "chat"}],
        "modelRewrites": [{"name": "rw", "poolRef": "p", "rules": [
            {"matches": [{"model": {"type": "Exact", "value": "x"}}],
             "targets": [{"modelRewrite": "y", "weight": 1}, {"modelRewrite": "z", "weight": 3}]}]}],
        "objectiveHeader": "x-objective", "fairnessHeader": "",
        "flowControl": {"enabled": true, "ttlMs": 1000, "maxRequestsPerBand": 10},
    });
    assert_valid(&schema, &traffic, "objectives, modelRewrites, flowControl");
    router_core::config::Config::parse(traffic.to_string().as_bytes()).unwrap();
    // `$schema` is accepted by the schema and by the plugin.
    let with_schema = json!({"$schema": "../docs/config.schema.json", "pools": [{"name": "p"}]});
    assert_valid(&schema, &with_schema, "$schema");
    router_core::config::Config::parse(with_schema.to_string().as_bytes()).unwrap();

    let validator = jsonschema::validator_for(&schema).unwrap();
    for bad in [
        json!({"pools": [{"name": "p", "endpoint": ["10.0.0.1:80"]}]}),
        json!({"pools": [{"name": "p"}], "unknownModels": "drop"}),
        json!({"pools": [{"name": "p"}], "scheduling": {"strategy": "FASTEST"}}),
        json!({"models": [{"modelName": "m", "targetModels": [{"name": "a", "weight": -1}]}]}),
        json!({"pools": [{"name": "p", "metrics": {"intervalMs": 0}}]}),
        json!({"gate": {"timeoutMs": 600001}}),
        json!({"pools": [{"name": "p"}], "modelRewrites": [{"poolRef": "p", "rules": [
            {"matches": [{"model": {"type": "Prefix", "value": "x"}}], "targets": [{"modelRewrite": "y"}]}]}]}),
        json!({"flowControl": {"enabled": true, "maxRequestsPerBand": 0}}),
    ] {
        assert!(!validator.is_valid(&bad), "the schema accepts {bad}");
        assert!(
            router_core::config::Config::parse(bad.to_string().as_bytes()).is_err(),
            "the plugin accepts {bad}"
        );
    }
}

/// The binary as users run it: output on stdout, one line naming the document on stderr and a
/// non-zero exit on bad input.
#[test]
fn the_command_line() {
    let bin = env!("CARGO_BIN_EXE_inference-router-config");
    let ok = Command::new(bin)
        .args(["--target", "envoy", &testdata("gray-release-v1alpha1.yaml")])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let doc: Value = serde_json::from_slice(&ok.stdout).unwrap();
    router_core::config::Config::parse(&ok.stdout).unwrap();
    assert_eq!(doc["collector"]["mode"], "service");

    let mut child = Command::new(bin)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(with_model("  modelName: chat\n  poolRef: {name: other}\n").as_bytes())
            .unwrap();
    }
    let bad = child.wait_with_output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty());
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(
        stderr,
        "inference-router-config: <stdin>: document 2 (InferenceModel/chat): spec.poolRef.name: \
         no InferencePool \"other\" in the input\n"
    );
}

#[test]
fn objectives_and_model_rewrites_keep_their_shape() {
    let doc = document(&["objectives-rewrites-v1alpha2.yaml"], &[]);
    assert_eq!(
        doc["objectives"],
        json!([
            {"name": "interactive", "priority": 10, "poolRef": "llama3-8b"},
            {"name": "batch", "priority": -5, "poolRef": "llama3-8b"},
        ])
    );
    assert_eq!(
        doc["modelRewrites"],
        json!([{
            "name": "support-bot-canary",
            "poolRef": "llama3-8b",
            "rules": [
                {"matches": [{"model": {"type": "Exact", "value": "support-bot"}}],
                 "targets": [{"modelRewrite": "support-bot-v1", "weight": 90},
                             {"modelRewrite": "support-bot-v2", "weight": 10}]},
                {"matches": [], "targets": [{"modelRewrite": "meta-llama/Llama-3.1-8B-Instruct"}]},
            ],
        }])
    );
    assert_eq!(doc["models"], json!([]));
    // llm-d's API group reads the same.
    let yaml = std::fs::read_to_string(testdata("objectives-rewrites-v1alpha2.yaml"))
        .unwrap()
        .replace(
            "inference.networking.x-k8s.io/v1alpha2",
            "llm-d.ai/v1alpha2",
        );
    let llm_d: Value = serde_json::from_str(&output(&["-"], &yaml).unwrap()).unwrap();
    assert_eq!(llm_d["objectives"], doc["objectives"]);
    assert_eq!(llm_d["modelRewrites"], doc["modelRewrites"]);
}

/// An InferenceModelRewrite of `pool` at `api_version` (metadata lines `meta`, rules in flow
/// style).
fn rewrite(api_version: &str, name: &str, meta: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: {api_version}\nkind: InferenceModelRewrite\nmetadata: {{name: {name}{meta}}}\n\
         spec: {{poolRef: {{name: pool}}, rules: {rules}}}\n"
    )
}

const LLM_D: &str = "llm-d.ai/v1alpha2";
const X: &str = "inference.networking.x-k8s.io/v1alpha2";

#[test]
fn objective_and_rewrite_versions_and_pool_references() {
    // The served versions: the Inference Extension's x-k8s.io v1alpha2 and llm-d's llm-d.ai
    // v1alpha2, for both kinds.
    for v in [X, LLM_D] {
        let yaml = format!(
            "{POOL}---\napiVersion: {v}\nkind: InferenceObjective\nmetadata: {{name: batch}}\n\
             spec: {{poolRef: {{group: inference.networking.k8s.io, kind: InferencePool, name: pool}}}}\n{}",
            rewrite(v, "rw", "", "[{targets: [{modelRewrite: b}]}]")
        );
        let doc: Value = serde_json::from_str(&output(&["-"], &yaml).unwrap()).unwrap();
        // No priority: the API's consumers read 0, and so does the plugin.
        assert_eq!(
            doc["objectives"],
            json!([{"name": "batch", "poolRef": "pool"}]),
            "{v}"
        );
        assert_eq!(
            doc["modelRewrites"],
            json!([{"name": "rw", "poolRef": "pool",
                    "rules": [{"matches": [], "targets": [{"modelRewrite": "b"}]}]}]),
            "{v}"
        );
    }
    let objective = |v: &str, pool_ref: &str| {
        format!(
            "{POOL}---\napiVersion: {v}\nkind: InferenceObjective\nmetadata: {{name: o}}\n\
             spec: {{priority: 1, poolRef: {pool_ref}}}\n"
        )
    };
    for (yaml, expected) in [
        // llm-d's v1 is not served (and has poolRefs); x-k8s.io v1alpha1 never had the kinds.
        (
            objective("llm-d.ai/v1", "{name: pool}"),
            "document 2 (InferenceObjective/o): apiVersion: llm-d.ai/v1 is not a known version \
             of InferenceObjective (known: llm-d.ai/v1alpha2, inference.networking.x-k8s.io/v1alpha2)",
        ),
        (
            format!(
                "{POOL}{}",
                rewrite(
                    "inference.networking.x-k8s.io/v1alpha1",
                    "rw",
                    "",
                    "[{targets: [{modelRewrite: b}]}]"
                )
            ),
            "document 2 (InferenceModelRewrite/rw): apiVersion: \
             inference.networking.x-k8s.io/v1alpha1 is not a known version of \
             InferenceModelRewrite",
        ),
        (
            objective("inference.llm-d.ai/v1alpha2", "{name: pool}"),
            "apiVersion: inference.llm-d.ai/v1alpha2 is not a known version",
        ),
        (
            objective(LLM_D, "{group: apps, name: pool}"),
            "(InferenceObjective/o): spec.poolRef.group: \"apps\" is not",
        ),
        (
            objective(X, "{kind: Service, name: pool}"),
            "(InferenceObjective/o): spec.poolRef.kind: \"Service\" is not InferencePool",
        ),
        (
            objective(X, "{name: pool}").replace("priority: 1", "priority: 2147483648"),
            "(InferenceObjective/o): spec.priority: must be a 32-bit integer",
        ),
        (
            format!(
                "{POOL}---\napiVersion: {LLM_D}\nkind: InferenceModelRewrite\nmetadata: {{name: rw}}\n\
                 spec: {{poolRef: {{group: llm-d.ai, name: pool}}, rules: []}}\n"
            ),
            "(InferenceModelRewrite/rw): spec.poolRef.group: \"llm-d.ai\" is not",
        ),
        (
            format!(
                "{POOL}{}",
                rewrite(LLM_D, "rw", "", "[{targets: [{modelRewrite: b}]}]")
                    .replace("name: pool}", "name: elsewhere}")
            ),
            "(InferenceModelRewrite/rw): spec.poolRef.name: no InferencePool \"elsewhere\" in \
             namespace default in the input",
        ),
    ] {
        let e = refused(&yaml, &[]);
        assert!(e.contains(expected), "expected …{expected}…\ngot {e}\nfor\n{yaml}");
    }
    // A kind of the same name in another API is skipped on request, as other kinds are; a
    // version of ours that is not served is not.
    let other = objective("example.com/v1", "{name: pool}");
    assert!(refused(&other, &[]).contains("apiVersion: example.com/v1 is not a known version"));
    let doc: Value =
        serde_json::from_str(&output(&["--skip-other-kinds", "-"], &other).unwrap()).unwrap();
    assert!(doc.get("objectives").is_none(), "{doc}");
    assert!(refused(
        &objective("llm-d.ai/v1", "{name: pool}"),
        &["--skip-other-kinds"]
    )
    .contains("llm-d.ai/v1 is not a known version"));
}

#[test]
fn rewrite_targets_weights_and_v1_2_split() {
    // The Inference Extension v1.2 called the targets `split`: read as `targets`.
    let split = format!(
        "{POOL}{}",
        rewrite(
            X,
            "rw",
            "",
            "[{matches: [{model: {value: a}}], split: [{modelRewrite: b, weight: 3}, \
             {modelRewrite: c, weight: 1}]}]"
        )
    );
    let doc: Value = serde_json::from_str(&output(&["-"], &split).unwrap()).unwrap();
    assert_eq!(
        doc["modelRewrites"][0]["rules"],
        json!([{"matches": [{"model": {"value": "a"}}],
                "targets": [{"modelRewrite": "b", "weight": 3}, {"modelRewrite": "c", "weight": 1}]}])
    );
    // No weights at all: an even split, as the API says (the document keeps them unweighted).
    let even = format!(
        "{POOL}{}",
        rewrite(
            LLM_D,
            "rw",
            "",
            "[{matches: [{model: {value: a}}], targets: [{modelRewrite: b}, {modelRewrite: c}]}]"
        )
    );
    let doc: Value = serde_json::from_str(&output(&["-"], &even).unwrap()).unwrap();
    assert_eq!(
        doc["modelRewrites"][0]["rules"][0]["targets"],
        json!([{"modelRewrite": "b"}, {"modelRewrite": "c"}])
    );

    let rules = |v: &str, rules: &str| format!("{POOL}{}", rewrite(v, "rw", "", rules));
    for (yaml, expected) in [
        // The API's bounds: 1 to 1000000.
        (
            rules(LLM_D, "[{targets: [{modelRewrite: b, weight: 0}, {modelRewrite: c, weight: 1}]}]"),
            "(InferenceModelRewrite/rw): spec.rules[0].targets[0].weight: 0 is not an integer \
             between 1 and 1000000",
        ),
        (
            rules(X, "[{split: [{modelRewrite: b, weight: 1000001}]}]"),
            "spec.rules[0].split[0].weight: 1000001 is not an integer between 1 and 1000000",
        ),
        // Mixed: the plugin wants every target weighted or none; named as the input names it.
        (
            rules(X, "[{split: [{modelRewrite: b, weight: 1}, {modelRewrite: c}]}]"),
            "(InferenceModelRewrite/rw): spec.rules[0].split: refused by the plugin's validation \
             (modelRewrites[0].rules[0].targets: give a weight to every target or to none)",
        ),
        (
            rules(X, "[{targets: [{modelRewrite: b}], split: [{modelRewrite: c}]}]"),
            "spec.rules[0].split: give `targets` (or the Inference Extension v1.2's `split`), not both",
        ),
        (
            rules(LLM_D, "[{split: [{modelRewrite: c}]}]"),
            "spec.rules[0].split: unknown field",
        ),
        (
            rules(LLM_D, "[{matches: [{model: {value: a}}]}]"),
            "spec.rules[0].targets: must name at least one target",
        ),
        (
            rules(LLM_D, "[{targets: [{modelRewrite: b}, {modelRewrite: b}]}]"),
            "spec.rules[0].targets[1].modelRewrite: refused by the plugin's validation",
        ),
        (
            rules(LLM_D, "[{matches: [{model: {type: Prefix, value: a}}], targets: [{modelRewrite: b}]}]"),
            "spec.rules[0].matches[0].model.type: refused by the plugin's validation",
        ),
        (
            rules(LLM_D, "[{matches: [{model: {valeu: a}}], targets: [{modelRewrite: b}]}]"),
            "spec.rules[0].matches[0].model.valeu: unknown field `valeu`",
        ),
    ] {
        let e = refused(&yaml, &[]);
        assert!(e.contains(expected), "expected …{expected}…\ngot {e}\nfor\n{yaml}");
    }
}

/// Overlapping rules: llm-d takes, for a model name (or for every name), the first rule of the
/// oldest resource; the document keeps that one and the command warns of each it leaves out.
#[test]
fn overlapping_rewrite_rules_resolve_as_in_llm_d() {
    let convert = |yaml: &str| -> (Value, String) {
        let (out, warnings) = output_and_warnings(&["-"], yaml).unwrap();
        (serde_json::from_str(&out).unwrap(), warnings)
    };
    let t = |name: &str| format!("[{{modelRewrite: {name}}}]");
    let m = |names: &[&str]| {
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("{{model: {{value: {n}}}}}"))
            .collect();
        format!("[{}]", list.join(", "))
    };

    // One resource: the first rule that matches a name wins it; a rule left with no match is
    // dropped whole (it must not become a catch-all), as is a second catch-all.
    let yaml = format!(
        "{POOL}{}",
        rewrite(
            LLM_D,
            "rw",
            "",
            &format!(
                "[{{matches: {}, targets: {}}}, {{matches: {}, targets: {}}}, \
                 {{matches: {}, targets: {}}}, {{targets: {}}}, {{targets: {}}}]",
                m(&["a"]),
                t("a1"),
                m(&["a", "b"]),
                t("b1"),
                m(&["b"]),
                t("b2"),
                t("any1"),
                t("any2"),
            )
        )
    );
    let (doc, warnings) = convert(&yaml);
    assert_eq!(
        doc["modelRewrites"][0]["rules"],
        json!([
            {"matches": [{"model": {"value": "a"}}], "targets": [{"modelRewrite": "a1"}]},
            {"matches": [{"model": {"value": "b"}}], "targets": [{"modelRewrite": "b1"}]},
            {"matches": [], "targets": [{"modelRewrite": "any1"}]},
        ])
    );
    let lines: Vec<&str> = warnings.lines().collect();
    assert_eq!(lines.len(), 3, "{warnings}");
    assert_eq!(
        lines[0],
        "inference-router-config: warning: <stdin>: document 2 (InferenceModelRewrite/rw): \
         spec.rules[1].matches[0]: left out: <stdin>: document 2 (InferenceModelRewrite/rw) \
         (spec.rules[0].matches[0]) matches model \"a\" of pool \"pool\" first (the first \
         matching rule), as llm-d uses it"
    );
    assert!(
        lines[1].contains("spec.rules[2].matches[0]: left out"),
        "{warnings}"
    );
    assert!(
        lines[2].contains("spec.rules[4]: left out") && lines[2].contains("every model"),
        "{warnings}"
    );

    // Two resources: the older (metadata.creationTimestamp) wins, in whatever order given.
    let newer = rewrite(
        LLM_D,
        "newer",
        ", creationTimestamp: \"2026-03-01T00:00:00Z\"",
        &format!(
            "[{{matches: {}, targets: {}}}, {{targets: {}}}]",
            m(&["a", "c"]),
            t("new"),
            t("new-any")
        ),
    );
    let older = rewrite(
        LLM_D,
        "older",
        ", creationTimestamp: 2026-01-01T00:00:00Z",
        &format!(
            "[{{matches: {}, targets: {}}}, {{targets: {}}}]",
            m(&["a"]),
            t("old"),
            t("old-any")
        ),
    );
    let (doc, warnings) = convert(&format!("{POOL}{newer}{older}"));
    assert_eq!(
        doc["modelRewrites"],
        json!([
            {"name": "newer", "poolRef": "pool", "rules": [
                {"matches": [{"model": {"value": "c"}}], "targets": [{"modelRewrite": "new"}]}]},
            {"name": "older", "poolRef": "pool", "rules": [
                {"matches": [{"model": {"value": "a"}}], "targets": [{"modelRewrite": "old"}]},
                {"matches": [], "targets": [{"modelRewrite": "old-any"}]}]},
        ])
    );
    assert_eq!(warnings.lines().count(), 2, "{warnings}");
    assert!(
        warnings.contains(
            "(InferenceModelRewrite/newer): spec.rules[0].matches[0]: left out: \
                           <stdin>: document 3 (InferenceModelRewrite/older) \
                           (spec.rules[0].matches[0]) matches model \"a\" of pool \"pool\" first \
                           (the older resource)"
        ),
        "{warnings}"
    );
    assert!(
        warnings.contains("(InferenceModelRewrite/newer): spec.rules[1]: left out"),
        "{warnings}"
    );

    // The plugin's errors still name the input's rule and match after one was left out.
    let yaml = format!(
        "{POOL}{}",
        rewrite(
            LLM_D,
            "rw",
            "",
            &format!(
                "[{{matches: {}, targets: {}}}, {{matches: {}, targets: {}}}, \
                 {{matches: [{{model: {{value: x}}}}, {{model: {{type: Regex, value: y}}}}], targets: {}}}]",
                m(&["a"]),
                t("a1"),
                m(&["a"]),
                t("a2"),
                t("z"),
            )
        )
    );
    let e = refused(&yaml, &[]);
    assert!(
        e.contains(
            "(InferenceModelRewrite/rw): spec.rules[2].matches[1].model.type: refused by \
                    the plugin's validation (modelRewrites[0].rules[1].matches[1].model.type"
        ),
        "{e}"
    );

    // Undecidable: the input does not say which resource is older (or they are as old).
    let same = ", creationTimestamp: \"2026-01-01T00:00:00Z\"";
    for (a, b) in [("", ""), (same, ""), (same, same)] {
        let yaml = format!(
            "{POOL}{}{}",
            rewrite(
                LLM_D,
                "one",
                a,
                &format!("[{{matches: {}, targets: {}}}]", m(&["a"]), t("x"))
            ),
            rewrite(
                LLM_D,
                "two",
                b,
                &format!("[{{matches: {}, targets: {}}}]", m(&["a"]), t("y"))
            ),
        );
        let e = refused(&yaml, &[]);
        assert!(
            e.contains(
                "document 3 (InferenceModelRewrite/two): spec.rules[0].matches[0]: matches \
                        model \"a\" of pool \"pool\" as <stdin>: document 2 \
                        (InferenceModelRewrite/one) (spec.rules[0].matches[0]) does; llm-d uses \
                        the rule of the older resource, which the input does not tell"
            ),
            "{e}"
        );
    }
    let yaml = format!(
        "{POOL}{}{}",
        rewrite(LLM_D, "one", "", &format!("[{{targets: {}}}]", t("x"))),
        rewrite(LLM_D, "two", "", &format!("[{{targets: {}}}]", t("y"))),
    );
    assert!(
        refused(&yaml, &[]).contains("spec.rules[0]: matches every model (a rule without matches)")
    );
    let yaml = format!(
        "{POOL}{}",
        rewrite(
            LLM_D,
            "rw",
            ", creationTimestamp: yesterday",
            "[{targets: [{modelRewrite: b}]}]"
        )
    );
    assert!(refused(&yaml, &[]).contains(
        "(InferenceModelRewrite/rw): metadata.creationTimestamp: \"yesterday\" is not a Kubernetes \
         timestamp"
    ));

    // Different pools do not compete under llm-d (an endpoint picker per pool), but the plugin
    // serves a model name from one pool: refused, naming the second.
    let two_pools = format!(
        "{POOL}---\n{}{}{}",
        POOL.trim_start_matches("---\n")
            .replace("name: pool", "name: pool2"),
        rewrite(
            LLM_D,
            "one",
            "",
            &format!("[{{matches: {}, targets: {}}}]", m(&["a"]), t("x"))
        ),
        rewrite(
            LLM_D,
            "two",
            "",
            &format!("[{{matches: {}, targets: {}}}]", m(&["a"]), t("y"))
        )
        .replace("name: pool}", "name: pool2}"),
    );
    let e = refused(&two_pools, &["--default-pool", "pool"]);
    assert!(
        e.contains(
            "(InferenceModelRewrite/two): spec.rules[0].matches[0].model.value: refused by \
                    the plugin's validation"
        ),
        "{e}"
    );
}

/// llm-d's resources as `kubectl get -o yaml` lists them: the older rewrite's rule takes
/// `support-bot`, the newer keeps its catch-all; the objective without priority is 0.
#[test]
fn llm_d_resources_listed_by_kubectl() {
    let file = testdata("objectives-rewrites-llm-d.yaml");
    let (out, warnings) = output_and_warnings(&["--target", "envoy", &file], "").unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["objectives"],
        json!([
            {"name": "interactive", "poolRef": "llama3-8b"},
            {"name": "batch", "priority": -1, "poolRef": "llama3-8b"},
        ])
    );
    assert_eq!(
        doc["modelRewrites"],
        json!([
            {"name": "support-bot-rollback", "poolRef": "llama3-8b", "rules": [
                {"matches": [], "targets": [{"modelRewrite": "meta-llama/Llama-3.1-8B-Instruct"}]}]},
            {"name": "support-bot-canary", "poolRef": "llama3-8b", "rules": [
                {"matches": [{"model": {"type": "Exact", "value": "support-bot"}}],
                 "targets": [{"modelRewrite": "support-bot-v1", "weight": 90},
                             {"modelRewrite": "support-bot-v2", "weight": 10}]}]},
        ])
    );
    assert_eq!(doc["failureMode"], "FailOpen");
    assert_eq!(
        warnings,
        format!(
            "inference-router-config: warning: {file}: document 1 items[3] \
             (InferenceModelRewrite/support-bot-rollback): spec.rules[0].matches[0]: left out: \
             {file}: document 1 items[4] (InferenceModelRewrite/support-bot-canary) \
             (spec.rules[0].matches[0]) matches model \"support-bot\" of pool \"llama3-8b\" \
             first (the older resource), as llm-d uses it\n"
        )
    );
}
