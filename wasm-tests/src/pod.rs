//! A fake OpenAI-compatible model server shaped like vLLM 0.32 (see the fixtures): one per
//! `ip:port`. It records every request exactly as it arrived (method, path with query, headers,
//! body bytes) and can hold its responses until the test releases them, which is how streaming
//! incrementality and least-request are tested without sleeps.

use crate::sim::{MetricsFail, Pin, PinnedMetrics, SimConfig};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures_util::future::select_all;
use futures_util::stream;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

type PodBody = BoxBody<Bytes, Infallible>;

/// What the pod serves.
#[derive(Debug, Clone)]
pub struct PodOptions {
    pub base_model: String,
    /// LoRA adapters listed by `/v1/models`.
    pub adapters: Vec<String>,
    /// Reply vLLM's 404 to a model that is neither the base model nor an adapter. Off by default so
    /// tests can send any name and assert on what arrived.
    pub strict_models: bool,
}

impl Default for PodOptions {
    fn default() -> Self {
        PodOptions {
            base_model: "tiny-llama".to_string(),
            adapters: Vec::new(),
            strict_models: false,
        }
    }
}

/// How the pod treats the responses of requests that arrive from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Reply at once.
    Off,
    /// Send nothing (not even headers) until released.
    Whole,
    /// Streaming replies send their first chunk, then wait; other replies wait whole.
    AfterFirstChunk,
}

/// One request as the pod received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The pod that received it.
    pub pod: SocketAddr,
    pub method: Method,
    /// Path and query, as sent upstream.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    /// The only (or first) value of a header, if it is valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The top-level `model` string of the body.
    pub fn model(&self) -> Option<String> {
        self.json()?.get("model")?.as_str().map(str::to_string)
    }
}

/// What `GET /metrics` serves.
enum MetricsSource {
    /// The fixture's idle page.
    Fixture,
    /// Exactly these bytes.
    Page(Bytes),
    /// The simulator's page with pinned state (see [`Pod::pin`]).
    Pinned(Box<PinnedMetrics>),
}

struct Shared {
    addr: SocketAddr,
    options: PodOptions,
    metrics_page: Bytes,
    metrics: Mutex<MetricsSource>,
    metrics_fail: watch::Sender<MetricsFail>,
    log: Mutex<Vec<Recorded>>,
    /// Number of requests received so far (scrapes of /metrics apart).
    received: watch::Sender<usize>,
    /// Number of /metrics scrapes answered.
    scrapes: std::sync::atomic::AtomicUsize,
    /// Number of responses currently waiting for a release.
    held: watch::Sender<usize>,
    hold: Mutex<Hold>,
    /// Release generation: a held response waits until it moves past the value seen on arrival.
    gate: watch::Sender<u64>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running pod. Dropping it stops the server and every connection it had open.
pub struct Pod {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Pod {
    /// Start a pod on `addr` (port 0: the kernel picks a free one). Only loopback addresses.
    pub async fn start(addr: SocketAddr, options: PodOptions) -> Result<Pod> {
        if !addr.ip().is_loopback() {
            return Err(anyhow!("test pods only listen on loopback, not {addr}"));
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding pod at {addr}"))?;
        let addr = listener.local_addr()?;
        let metrics_page = std::fs::read(crate::fixtures_dir().join("metrics-idle.txt"))
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(MINIMAL_METRICS.as_bytes()));
        let shared = Arc::new(Shared {
            addr,
            options,
            metrics_page,
            metrics: Mutex::new(MetricsSource::Fixture),
            metrics_fail: watch::channel(MetricsFail::Ok).0,
            log: Mutex::new(Vec::new()),
            received: watch::channel(0).0,
            scrapes: std::sync::atomic::AtomicUsize::new(0),
            held: watch::channel(0).0,
            hold: Mutex::new(Hold::Off),
            gate: watch::channel(0).0,
            next_id: AtomicU64::new(1),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(Pod { shared, server })
    }

    /// Start a pod on the next free loopback IP (see [`crate::addr`]).
    pub async fn start_next(options: PodOptions) -> Result<Pod> {
        let ip = IpAddr::V4(crate::addr::next_pod_ip());
        Pod::start(SocketAddr::new(ip, 0), options).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `ip:port`, as the destination header and the plugin configuration spell it.
    pub fn endpoint(&self) -> String {
        self.shared.addr.to_string()
    }

    /// `/metrics` scrapes answered so far (not in `requests`).
    pub fn scrape_count(&self) -> usize {
        self.shared
            .scrapes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every request received so far, oldest first, except `/metrics` scrapes.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.log).clone()
    }

    pub fn request_count(&self) -> usize {
        *self.shared.received.borrow()
    }

    /// Responses currently waiting for [`Pod::release`].
    pub fn held_count(&self) -> usize {
        *self.shared.held.borrow()
    }

    /// Forget the recorded requests (the received counter keeps counting).
    pub fn clear(&self) {
        lock(&self.shared.log).clear();
    }

    /// Hold the responses of requests that arrive from now on.
    pub fn set_hold(&self, hold: Hold) {
        *lock(&self.shared.hold) = hold;
    }

    /// Let every response held so far go on (later arrivals still follow the hold mode).
    pub fn release(&self) {
        self.shared.gate.send_modify(|g| *g += 1);
    }

    /// Stop holding and let everything held go on.
    pub fn release_all(&self) {
        self.set_hold(Hold::Off);
        self.release();
    }

    /// Kill the pod as a crash would: every open connection closes mid-response, held replies
    /// included (dropping a pod instead lets held replies finish).
    pub async fn kill(mut self) {
        self.server.abort();
        // Once the server task is gone its connection tasks are cancelled; only then may the
        // drop release the holds, which can no longer send anything.
        let _ = (&mut self.server).await;
    }

    /// Serve `page` byte for byte at `/metrics` (`None`: back to the fixture's idle page).
    pub fn set_metrics_page(&self, page: Option<Bytes>) {
        *lock(&self.shared.metrics) = page.map_or(MetricsSource::Fixture, MetricsSource::Page);
    }

    /// Serve the simulator's vLLM page at `/metrics` with the pinned queue, running count, KV
    /// usage and LoRA sets (unpinned fields idle). Each pin with adapters makes a new current
    /// `vllm:lora_requests_info` series; earlier ones stay, as in vLLM.
    pub fn pin(&self, pin: &Pin) {
        let mut source = lock(&self.shared.metrics);
        if !matches!(*source, MetricsSource::Pinned(_)) {
            let config = SimConfig {
                base_model: self.shared.options.base_model.clone(),
                adapters: self.shared.options.adapters.clone(),
                ..SimConfig::default()
            };
            *source = MetricsSource::Pinned(Box::new(PinnedMetrics::new(config)));
        }
        if let MetricsSource::Pinned(pinned) = &mut *source {
            pinned.pin(pin);
        }
    }

    /// Back to the fixture's idle page.
    pub fn unpin(&self) {
        self.set_metrics_page(None);
    }

    /// Make `/metrics` answer normally, 500, or not at all until the mode changes.
    pub fn set_metrics_fail(&self, mode: MetricsFail) {
        self.shared.metrics_fail.send_replace(mode);
    }

    /// Wait until this pod has received `n` requests in total.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_sum(std::slice::from_ref(self), |s| &s.received, n, timeout).await
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Held handlers belong to the aborted connection tasks; releasing first lets any that
        // outlive the abort (mid-poll on another worker) finish instead of waiting forever.
        self.release_all();
        self.set_metrics_fail(MetricsFail::Ok);
        self.server.abort();
    }
}

/// Start `n` pods on consecutive fresh loopback IPs.
pub async fn start_pods(n: usize, options: &PodOptions) -> Result<Vec<Pod>> {
    let mut pods = Vec::with_capacity(n);
    for _ in 0..n {
        pods.push(Pod::start_next(options.clone()).await?);
    }
    Ok(pods)
}

/// `ip:port` of each pod.
pub fn endpoints(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(Pod::endpoint).collect()
}

/// Wait until the pods together have received `n` requests.
pub async fn wait_total_requests(pods: &[Pod], n: usize, timeout: Duration) -> Result<()> {
    wait_sum(pods, |s| &s.received, n, timeout).await
}

/// Wait until the pods together hold `n` responses.
pub async fn wait_total_held(pods: &[Pod], n: usize, timeout: Duration) -> Result<()> {
    wait_sum(pods, |s| &s.held, n, timeout).await
}

/// Release and stop holding on every pod.
pub fn release_all(pods: &[Pod]) {
    pods.iter().for_each(Pod::release_all);
}

/// Wait, driven by change notifications, until the sum of one counter over `pods` reaches `n`.
async fn wait_sum(
    pods: &[Pod],
    counter: fn(&Shared) -> &watch::Sender<usize>,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let mut rxs: Vec<_> = pods
        .iter()
        .map(|p| counter(&p.shared).subscribe())
        .collect();
    let wait = async {
        loop {
            let sum: usize = rxs.iter_mut().map(|rx| *rx.borrow_and_update()).sum();
            if sum >= n {
                return;
            }
            let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            let _ = select_all(changes).await;
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| {
        let now: Vec<usize> = pods.iter().map(|p| *counter(&p.shared).borrow()).collect();
        anyhow!("timed out after {timeout:?} waiting for a total of {n}; per pod now {now:?}")
    })
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connection tasks here means aborting the server aborts them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A reply before holding is applied: a whole body, or SSE frames.
enum Reply {
    Whole(StatusCode, &'static str, Bytes),
    Stream(Vec<Bytes>),
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<PodBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let recorded = Recorded {
        pod: shared.addr,
        method: parts.method.clone(),
        uri,
        headers: parts.headers.clone(),
        body,
    };
    let reply = respond(&shared, &recorded);
    let is_metrics = recorded.method == Method::GET && recorded.path() == "/metrics";
    // The metrics collector's scrapes are counted apart and never held: tests look at what the
    // gateway routed, and a held scrape would only make the pod look stale.
    if is_metrics {
        shared
            .scrapes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply = metrics_failure(&shared).await.unwrap_or(reply);
        return Ok(build(&shared, reply, None));
    }
    // Read the hold mode and the release generation on arrival, before the test can see the
    // request: a release issued after it has been counted always lets it go.
    let hold = *lock(&shared.hold);
    let generation = *shared.gate.borrow();
    lock(&shared.log).push(recorded);
    shared.received.send_modify(|n| *n += 1);

    let response = match (hold, reply) {
        (Hold::Off, reply) => build(&shared, reply, None),
        (Hold::AfterFirstChunk, Reply::Stream(frames)) => {
            build(&shared, Reply::Stream(frames), Some(generation))
        }
        (_, reply) => {
            wait_release(&shared, generation).await;
            build(&shared, reply, None)
        }
    };
    Ok(response)
}

/// The reply a failing `/metrics` gives (after waiting out a hang), or `None` to answer normally.
async fn metrics_failure(shared: &Shared) -> Option<Reply> {
    let mut mode = shared.metrics_fail.subscribe();
    loop {
        let now = *mode.borrow_and_update();
        match now {
            MetricsFail::Ok => return None,
            MetricsFail::Status500 => {
                return Some(Reply::Whole(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    Bytes::from_static(b"Internal Server Error"),
                ))
            }
            MetricsFail::Hang => {
                if mode.changed().await.is_err() {
                    return None;
                }
            }
        }
    }
}

async fn wait_release(shared: &Shared, generation: u64) {
    shared.held.send_modify(|n| *n += 1);
    let mut rx = shared.gate.subscribe();
    let _ = rx.wait_for(|g| *g > generation).await;
    shared.held.send_modify(|n| *n = n.saturating_sub(1));
}

/// `hold_after_first`: the release generation to wait past after the first frame.
fn build(shared: &Arc<Shared>, reply: Reply, hold_after_first: Option<u64>) -> Response<PodBody> {
    let (status, content_type, body) = match reply {
        Reply::Whole(status, content_type, bytes) => {
            (status, content_type, Full::new(bytes).boxed())
        }
        Reply::Stream(frames) => {
            let shared = shared.clone();
            let frames = stream::unfold(
                (frames.into_iter(), 0usize, hold_after_first),
                move |(mut rest, sent, mut hold)| {
                    let shared = shared.clone();
                    async move {
                        if sent == 1 {
                            if let Some(generation) = hold.take() {
                                wait_release(&shared, generation).await;
                            }
                        }
                        let frame = rest.next()?;
                        Some((Ok(Frame::data(frame)), (rest, sent + 1, hold)))
                    }
                },
            );
            (
                StatusCode::OK,
                "text/event-stream; charset=utf-8",
                StreamBody::new(frames).boxed(),
            )
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(pod) = HeaderValue::from_str(&shared.addr.to_string()) {
        headers.insert("x-pod", pod);
    }
    response
}

fn respond(shared: &Shared, req: &Recorded) -> Reply {
    let path = req.path();
    match (&req.method, path) {
        (&Method::GET, "/health") => Reply::Whole(StatusCode::OK, "text/plain", Bytes::new()),
        (&Method::GET, "/metrics") => Reply::Whole(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            match &*lock(&shared.metrics) {
                MetricsSource::Fixture => shared.metrics_page.clone(),
                MetricsSource::Page(page) => page.clone(),
                MetricsSource::Pinned(pinned) => Bytes::from(pinned.render()),
            },
        ),
        (&Method::GET, "/v1/models") => json_reply(StatusCode::OK, &models_page(&shared.options)),
        (
            &Method::POST,
            "/v1/completions" | "/v1/chat/completions" | "/v1/embeddings" | "/v1/responses",
        ) => inference(shared, path, &req.body),
        (&Method::POST, "/tokenize") => {
            let Some(body) = parse_object(&req.body) else {
                return bad_request("request body is not a JSON object");
            };
            let n = approx_tokens(&prompt_text(&body));
            let tokens: Vec<u64> = (1..=n).collect();
            json_reply(
                StatusCode::OK,
                &json!({"count": n, "max_model_len": 1024, "tokens": tokens, "token_strs": null}),
            )
        }
        _ => json_reply(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"})),
    }
}

fn inference(shared: &Shared, path: &str, raw: &[u8]) -> Reply {
    let Some(body) = parse_object(raw) else {
        return bad_request("request body is not a JSON object");
    };
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return bad_request("`model` is required and must be a string");
    };
    let opts = &shared.options;
    if opts.strict_models && model != opts.base_model && !opts.adapters.iter().any(|a| a == model) {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": {
                "message": format!("The model `{model}` does not exist. Valid aliases: {}.", opts.base_model),
                "type": "NotFoundError", "param": "model", "code": 404}}),
        );
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prompt_tokens = approx_tokens(&prompt_text(&body));
    let completion_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(16)
        .clamp(1, 256);
    let text = " tok".repeat(completion_tokens as usize);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": null,
    });
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let fingerprint = "vllm-0.32.0-sim";

    match path {
        "/v1/completions" if streaming => {
            let id = format!("cmpl-{id:016x}");
            let mut frames: Vec<Value> = (0..completion_tokens)
                .map(|i| {
                    let last = i + 1 == completion_tokens;
                    json!({"id": id, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"index": 0, "text": " tok", "logprobs": null,
                            "finish_reason": if last { json!("length") } else { Value::Null },
                            "stop_reason": null}]})
                })
                .collect();
            if include_usage {
                frames.push(
                    json!({"id": id, "object": "text_completion", "created": created,
                    "model": model, "choices": [], "usage": usage}),
                );
            }
            Reply::Stream(sse(frames))
        }
        "/v1/completions" => json_reply(
            StatusCode::OK,
            &json!({"id": format!("cmpl-{id:016x}"), "object": "text_completion", "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "length",
                    "stop_reason": null}],
                "service_tier": null, "system_fingerprint": fingerprint, "usage": usage}),
        ),
        "/v1/chat/completions" if streaming => {
            let id = format!("chatcmpl-{id:016x}");
            let chunk = |delta: Value, finish: Value| {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            };
            let mut frames = vec![chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )];
            for i in 0..completion_tokens {
                let finish = if i + 1 == completion_tokens {
                    json!("length")
                } else {
                    Value::Null
                };
                frames.push(chunk(json!({"content": " tok"}), finish));
            }
            if include_usage {
                frames.push(json!({"id": id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": usage, "system_fingerprint": fingerprint}));
            }
            Reply::Stream(sse(frames))
        }
        "/v1/chat/completions" => json_reply(
            StatusCode::OK,
            &json!({"id": format!("chatcmpl-{id:016x}"), "object": "chat.completion", "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                    "refusal": null, "tool_calls": []}, "logprobs": null, "finish_reason": "length",
                    "stop_reason": null}],
                "service_tier": null, "system_fingerprint": fingerprint, "usage": usage}),
        ),
        "/v1/embeddings" => json_reply(
            StatusCode::OK,
            &json!({"id": format!("embd-{id:016x}"), "object": "list", "created": created,
                "model": model,
                "data": [{"index": 0, "object": "embedding", "embedding": [0.125, -0.25, 0.5, 0.0625]}],
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
                    "completion_tokens": 0, "prompt_tokens_details": null}}),
        ),
        _ => json_reply(
            StatusCode::OK,
            &json!({"id": format!("resp_{id:016x}"), "object": "response", "created_at": created,
                "model": model, "status": "completed",
                "output": [{"type": "message", "id": format!("msg_{id:016x}"), "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}}),
        ),
    }
}

fn models_page(opts: &PodOptions) -> Value {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = &opts.base_model;
    let mut data = vec![
        json!({"id": base, "object": "model", "created": created, "owned_by": "vllm",
        "root": format!("/models/{base}"), "parent": null, "max_model_len": 1024, "permission": []}),
    ];
    data.extend(opts.adapters.iter().map(|a| {
        json!({"id": a, "object": "model", "created": created, "owned_by": "vllm",
            "root": format!("/models/{a}"), "parent": base, "max_model_len": null, "permission": []})
    }));
    json!({"object": "list", "data": data})
}

/// Frames in vLLM's SSE shape: one `data:` event per chunk, then `data: [DONE]`.
fn sse(chunks: Vec<Value>) -> Vec<Bytes> {
    chunks
        .iter()
        .map(|c| Bytes::from(format!("data: {c}\n\n")))
        .chain(std::iter::once(Bytes::from_static(b"data: [DONE]\n\n")))
        .collect()
}

fn parse_object(raw: &[u8]) -> Option<serde_json::Map<String, Value>> {
    let value = serde_json::from_slice(raw)
        .ok()
        .or_else(|| serde_json::from_slice(&clamp_huge_numbers(raw)).ok())?;
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Python's json (vLLM's) reads `1e400` as infinity where serde_json refuses it: replace number
/// literals outside strings that overflow f64 with 0, so such bodies get an answer too.
fn clamp_huge_numbers(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let (mut i, mut in_string, mut escaped) = (0, false, false);
    while i < raw.len() {
        let b = raw[i];
        if in_string {
            in_string = escaped || b != b'"';
            escaped = !escaped && b == b'\\';
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-' || b.is_ascii_digit() {
            let end = raw[i..]
                .iter()
                .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .map_or(raw.len(), |n| i + n);
            let token = &raw[i..end];
            let huge = std::str::from_utf8(token)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(f64::is_infinite);
            out.extend_from_slice(if huge { b"0" } else { token });
            i = end;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The prompt text of any of the request shapes: `prompt`, `messages[].content`, `input`.
fn prompt_text(body: &serde_json::Map<String, Value>) -> String {
    fn collect(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
            Value::Object(o) => ["content", "text", "input"]
                .iter()
                .filter_map(|k| o.get(*k))
                .for_each(|i| collect(i, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    for key in ["prompt", "messages", "input"] {
        if let Some(v) = body.get(key) {
            collect(v, &mut out);
        }
    }
    out
}

/// Roughly one token per word, at least one (vLLM counts a BOS token too).
fn approx_tokens(text: &str) -> u64 {
    (text.split_whitespace().count() as u64).max(1)
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    Reply::Whole(status, "application/json", Bytes::from(body.to_string()))
}

fn bad_request(message: &str) -> Reply {
    json_reply(
        StatusCode::BAD_REQUEST,
        &json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": 400}}),
    )
}

const MINIMAL_METRICS: &str = "\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"tiny-llama\"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine=\"0\",model_name=\"tiny-llama\"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"tiny-llama\"} 0.0
";
