//! `inference-router-config`: the Gateway API Inference Extension's resources as the plugin's
//! configuration document (docs/contract.md section 3).
//!
//! It reads Kubernetes YAML (several documents per file, `kind: List` with `items`) holding
//! InferencePools (`inference.networking.x-k8s.io/v1alpha1` and `v1alpha2`,
//! `inference.networking.k8s.io/v1`), InferenceModels (`v1alpha1`, `v1alpha2`), and
//! InferenceObjectives and InferenceModelRewrites (`inference.networking.x-k8s.io/v1alpha2`,
//! `llm-d.ai/v1alpha2`; overlapping rewrite rules are kept as llm-d applies them), and prints
//! the document as JSON, or a complete Istio `WasmPlugin` pair or Envoy Gateway
//! `EnvoyExtensionPolicy` carrying it, in the shapes of the shipped `examples/`. Pods are not
//! listed: each pool reads its members at run time from the Envoy cluster that holds its pods
//! (`discovery`), named as the chosen install names it ([`Target`]). Every document printed has
//! passed the plugin's own validation ([`router_core::config::Config::parse`]); any error names
//! the input document (file, document number, kind/name) and the field.

mod document;
mod install;
mod resources;

pub use document::{convert, Conversion, Document};
pub use resources::Input;

use std::fmt;
use std::io::{Read, Write};

pub const USAGE: &str = "\
usage: inference-router-config [flags] FILE…      (FILE `-` reads stdin)
       inference-router-config --schema

Reads Kubernetes YAML (several documents per file, `kind: List` with `items`) holding the Gateway
API Inference Extension's InferencePools (inference.networking.x-k8s.io/v1alpha1, v1alpha2;
inference.networking.k8s.io/v1) and InferenceModels (v1alpha1, v1alpha2), and prints the
inference-router plugin's configuration document as JSON; also InferenceObjectives and
InferenceModelRewrites (inference.networking.x-k8s.io/v1alpha2, llm-d.ai/v1alpha2). Every
document printed passes the plugin's own validation; on bad input it exits 1 with one message
naming the file, the document (its number in the file, kind/name) and the field. What it leaves
out (overlapping rewrite rules llm-d would not apply) is a warning on stderr.

Mapping:
  InferencePool   metadata.name → pools[].name; the target port (spec.targetPortNumber, or
                  spec.targetPorts[0].number) names the Envoy cluster below; v1
                  spec.endpointPickerRef.failureMode → failureMode; the selector is the pods'
                  labels, which the Service or route the install uses must select
  InferenceModel  spec.modelName → models[].modelName, spec.poolRef.name → poolRef,
                  spec.criticality → criticality (v1alpha1 `Default` = `Standard`),
                  spec.targetModels[{name, weight}] → targetModels (v1alpha1: a missing weight is 1)
  InferenceObjective  metadata.name → objectives[].name, spec.priority → priority (absent: 0),
                  spec.poolRef.name → poolRef
  InferenceModelRewrite  metadata.name → modelRewrites[].name, spec.poolRef.name → poolRef,
                  spec.rules (matches[].model {type, value}, targets[] {modelRewrite, weight},
                  v1.2's `split` as targets; weights 1..1000000 on all targets or none) → rules;
                  where rules of a pool overlap, the first matching rule of a resource and the
                  older resource (metadata.creationTimestamp) win, as in llm-d; the others are
                  left out with a warning, and resources of unknown age are refused
  one pool        → defaultPool

Pods are found at run time: each pool gets `discovery` (the Envoy cluster holding its pods, and a
cluster reaching Envoy's admin), named as each install names them (--target):
  istio           cluster = discovery.cluster = outbound|PORT||SERVICE.NAMESPACE.svc.cluster.local
                  (SERVICE: the pool's name, or --service; a Service selecting the pool's pods with
                  port PORT = the target port), adminCluster prometheus_stats,
                  collector.mode embedded, maxRequestBodyBytes 1048576 (Envoy's listener buffer)
  envoy-gateway   cluster = discovery.cluster = httproute/NAMESPACE/ROUTE/rule/0 (ROUTE: the pool's
                  name, or --route; rule 0 of that HTTPRoute goes to the pool's pods),
                  adminCluster prometheus_stats, collector.mode embedded, maxRequestBodyBytes 1048576
  envoy           discovery.cluster = the pool's name (a cluster of your Envoy configuration
                  holding the pods), adminCluster envoy-admin, collector.mode service
Every install refreshes the members every 2 s (discovery.refreshMs 2000).

Flags:
  --target istio|envoy-gateway|envoy   the install (default istio)
  --service [POOL=]NAME    istio: the Service in front of a pool's pods (default: the pool's name)
  --route [POOL=]NAME      envoy-gateway: the HTTPRoute whose rule 0 goes to a pool's pods
                           (default: the pool's name)
  -n, --namespace NS       namespace of objects that name none (default `default`)
  --default-pool NAME      defaultPool (default: the pool, when there is one)
  --skip-other-kinds       skip objects of other APIs (Deployments, Services, …) instead of failing
  --wasmplugin             print Istio's two WasmPlugins instead (reader with the document, gate),
                           as examples/istio/wasmplugin.yaml; implies --target istio
  --envoyextensionpolicy   print Envoy Gateway's EnvoyExtensionPolicy instead (reader and gate
                           entries), as examples/envoy-gateway/extension-policy.yaml; implies
                           --target envoy-gateway
  --image URL              the image of both entries (default REGISTRY/inference-router:VERSION;
                           Istio gets oci:// unless the URL has a scheme)
  --sha256 HEX             the image's manifest digest (64 hex digits), checked by the proxy
  --gateway NAME           the Gateway the WasmPlugins attach to (default inference-gateway)
  --schema                 print the configuration document's JSON Schema
  -h, --help, --version
";

/// Where the plugin is installed: decides the names of the clusters the document uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Istio,
    EnvoyGateway,
    Envoy,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "istio" => Some(Target::Istio),
            "envoy-gateway" => Some(Target::EnvoyGateway),
            "envoy" => Some(Target::Envoy),
            _ => None,
        }
    }
}

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The document, as JSON.
    Document,
    /// Istio's WasmPlugins (reader with the document, gate), as YAML.
    WasmPlugin,
    /// Envoy Gateway's EnvoyExtensionPolicy (reader and gate entries), as YAML.
    EnvoyExtensionPolicy,
    /// The document's JSON Schema.
    Schema,
}

/// The command line, parsed.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub output: Output,
    /// `--service`: (pool, Service name); pool None = the only pool.
    pub services: Vec<(Option<String>, String)>,
    /// `--route`: (pool, HTTPRoute name); pool None = the only pool.
    pub routes: Vec<(Option<String>, String)>,
    pub namespace: String,
    pub default_pool: Option<String>,
    pub skip_other_kinds: bool,
    pub image: String,
    pub sha256: Option<String>,
    pub gateway: String,
    pub files: Vec<String>,
}

/// The default image reference, as `make image` prints its push command.
pub fn default_image() -> String {
    format!("REGISTRY/inference-router:{}", env!("CARGO_PKG_VERSION"))
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: Target::Istio,
            output: Output::Document,
            services: Vec::new(),
            routes: Vec::new(),
            namespace: "default".to_string(),
            default_pool: None,
            skip_other_kinds: false,
            image: default_image(),
            sha256: None,
            gateway: "inference-gateway".to_string(),
            files: Vec::new(),
        }
    }
}

/// Where in the input an object is: the file, the document's number in it (from 1), the item of
/// a `List`, and the object's kind and name when it has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub document: usize,
    pub item: Option<usize>,
    pub kind: String,
    pub name: String,
}

impl Origin {
    pub fn document(file: &str, document: usize) -> Origin {
        Origin {
            file: if file == "-" {
                "<stdin>".to_string()
            } else {
                file.to_string()
            },
            document,
            item: None,
            kind: String::new(),
            name: String::new(),
        }
    }

    fn item(&self, item: usize) -> Origin {
        Origin {
            item: Some(item),
            ..self.clone()
        }
    }

    /// With the kind and name the object gives (if any).
    fn named(&self, v: &serde_json::Value) -> Origin {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Origin {
            kind: s("/kind"),
            name: s("/metadata/name"),
            ..self.clone()
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(i) = self.item {
            write!(f, " items[{i}]")?;
        }
        match (self.kind.is_empty(), self.name.is_empty()) {
            (false, false) => write!(f, " ({}/{})", self.kind, self.name),
            (false, true) => write!(f, " ({})", self.kind),
            _ => Ok(()),
        }
    }
}

/// Why nothing was printed: where (the input document, if one is to blame), which field, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub origin: Option<Box<Origin>>,
    pub field: Option<String>,
    pub message: String,
}

impl Error {
    pub fn at(origin: &Origin, field: Option<&str>, message: impl Into<String>) -> Error {
        Error {
            origin: Some(Box::new(origin.clone())),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    pub fn plain(message: impl Into<String>) -> Error {
        Error {
            origin: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Parse the command line (without the program name). `Ok(None)`: help or version was asked
/// for and printed to `out`.
pub fn parse_args(args: &[String], out: &mut dyn Write) -> Result<Option<Options>, Error> {
    let mut o = Options::default();
    let mut target: Option<Target> = None;
    let mut outputs: Vec<Output> = Vec::new();
    let mut it = args.iter();
    let mut only_files = false;
    while let Some(arg) = it.next() {
        if only_files || arg == "-" || !arg.starts_with('-') {
            o.files.push(arg.clone());
            continue;
        }
        // `--flag=value` or `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, Error> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => Err(Error::plain(format!("{name} needs a value"))),
            }
        };
        match flag {
            "--" => only_files = true,
            "-h" | "--help" => {
                write_out(out, USAGE)?;
                return Ok(None);
            }
            "--version" => {
                write_out(
                    out,
                    &format!("inference-router-config {}\n", env!("CARGO_PKG_VERSION")),
                )?;
                return Ok(None);
            }
            "--target" => {
                let v = value(flag)?;
                target = Some(Target::parse(&v).ok_or_else(|| {
                    Error::plain(format!(
                        "--target {v}: not one of istio, envoy-gateway, envoy"
                    ))
                })?);
            }
            "--service" => o.services.push(pool_and_name(flag, &value(flag)?)?),
            "--route" => o.routes.push(pool_and_name(flag, &value(flag)?)?),
            "-n" | "--namespace" => o.namespace = non_empty(flag, value(flag)?)?,
            "--default-pool" => o.default_pool = Some(non_empty(flag, value(flag)?)?),
            "--skip-other-kinds" => o.skip_other_kinds = true,
            "--wasmplugin" => outputs.push(Output::WasmPlugin),
            "--envoyextensionpolicy" => outputs.push(Output::EnvoyExtensionPolicy),
            "--schema" => outputs.push(Output::Schema),
            "--image" => o.image = non_empty(flag, value(flag)?)?,
            "--sha256" => {
                let v = value(flag)?;
                let hex = v.strip_prefix("sha256:").unwrap_or(&v).to_string();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::plain(format!(
                        "--sha256 {v}: not 64 hex digits (the manifest digest `make image` prints)"
                    )));
                }
                o.sha256 = Some(hex.to_ascii_lowercase());
            }
            "--gateway" => o.gateway = non_empty(flag, value(flag)?)?,
            _ => {
                return Err(Error::plain(format!(
                    "unknown flag {arg} (--help lists them)"
                )))
            }
        }
    }
    outputs.dedup();
    o.output = match outputs.as_slice() {
        [] => Output::Document,
        [one] => *one,
        _ => {
            return Err(Error::plain(
                "give at most one of --wasmplugin, --envoyextensionpolicy, --schema",
            ))
        }
    };
    let implied = match o.output {
        Output::WasmPlugin => Some(Target::Istio),
        Output::EnvoyExtensionPolicy => Some(Target::EnvoyGateway),
        _ => None,
    };
    o.target = match (target, implied) {
        (Some(t), Some(i)) if t != i => {
            return Err(Error::plain(format!(
                "--{} is for --target {}",
                if i == Target::Istio {
                    "wasmplugin"
                } else {
                    "envoyextensionpolicy"
                },
                if i == Target::Istio {
                    "istio"
                } else {
                    "envoy-gateway"
                }
            )))
        }
        (Some(t), _) => t,
        (None, Some(i)) => i,
        (None, None) => Target::Istio,
    };
    if !o.services.is_empty() && o.target != Target::Istio {
        return Err(Error::plain("--service is for --target istio"));
    }
    if !o.routes.is_empty() && o.target != Target::EnvoyGateway {
        return Err(Error::plain("--route is for --target envoy-gateway"));
    }
    if o.output == Output::Schema {
        if !o.files.is_empty() {
            return Err(Error::plain("--schema takes no FILE"));
        }
    } else if o.files.is_empty() {
        return Err(Error::plain(
            "no input: give FILE… (- for stdin); --help says more",
        ));
    }
    Ok(Some(o))
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes())
        .map_err(|e| Error::plain(format!("writing the output: {e}")))
}

fn non_empty(flag: &str, v: String) -> Result<String, Error> {
    if v.is_empty() {
        Err(Error::plain(format!("{flag} needs a non-empty value")))
    } else {
        Ok(v)
    }
}

fn pool_and_name(flag: &str, v: &str) -> Result<(Option<String>, String), Error> {
    match v.split_once('=') {
        Some((pool, name)) if !pool.is_empty() && !name.is_empty() => {
            Ok((Some(pool.to_string()), name.to_string()))
        }
        None if !v.is_empty() => Ok((None, v.to_string())),
        _ => Err(Error::plain(format!("{flag} {v}: give NAME or POOL=NAME"))),
    }
}

/// Read the inputs the options name (`-`: `stdin`, read once).
pub fn read_inputs(o: &Options, stdin: &mut dyn Read) -> Result<Vec<Input>, Error> {
    let mut inputs = Vec::with_capacity(o.files.len());
    let mut stdin_text: Option<String> = None;
    for f in &o.files {
        let text = if f == "-" {
            match &stdin_text {
                Some(t) => t.clone(),
                None => {
                    let mut t = String::new();
                    stdin
                        .read_to_string(&mut t)
                        .map_err(|e| Error::plain(format!("<stdin>: cannot read: {e}")))?;
                    stdin_text = Some(t.clone());
                    t
                }
            }
        } else {
            std::fs::read_to_string(f)
                .map_err(|e| Error::plain(format!("{f}: cannot read: {e}")))?
        };
        inputs.push(Input {
            name: f.clone(),
            text,
        });
    }
    Ok(inputs)
}

/// The text to print for already-read inputs: the document as JSON, a manifest as YAML, or the
/// schema; each ends with a newline. With it, the conversion's warnings (what it left out).
pub fn render(inputs: &[Input], o: &Options) -> Result<(String, Vec<String>), Error> {
    if o.output == Output::Schema {
        return Ok((
            pretty_json(&router_core::config::json_schema())?,
            Vec::new(),
        ));
    }
    let conversion = convert(inputs, o)?;
    let text = match o.output {
        Output::WasmPlugin => install::wasm_plugins(&conversion, o),
        Output::EnvoyExtensionPolicy => install::extension_policy(&conversion, o),
        _ => pretty_json(&conversion.document),
    }?;
    Ok((text, conversion.warnings))
}

/// The whole command: parse `args`, read the inputs, print to `out`; warnings go to `warn`, one
/// line each (`warning: FILE: document N (Kind/name): field: …`).
pub fn run(
    args: &[String],
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), Error> {
    let Some(o) = parse_args(args, out)? else {
        return Ok(());
    };
    let inputs = read_inputs(&o, stdin)?;
    let (text, warnings) = render(&inputs, &o)?;
    for w in &warnings {
        write_out(warn, &format!("inference-router-config: warning: {w}\n"))?;
    }
    write_out(out, &text)
}

/// JSON with two-space indentation and a final newline (how `docs/config.schema.json` is kept).
pub fn pretty_json<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    let mut s =
        serde_json::to_string_pretty(v).map_err(|e| Error::plain(format!("writing JSON: {e}")))?;
    s.push('\n');
    Ok(s)
}
