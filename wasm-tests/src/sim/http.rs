//! The simulator's HTTP server: OpenAI endpoints, `/metrics`, `/health` and the `/__sim/` admin API.

use super::engine::{block_hashes, Event, Req};
use super::openai::{self, Api, Head};
use super::{lock, MetricsFail, Pin, Shared};
use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

type Body = BoxBody<Bytes, Infallible>;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connection tasks here means aborting the server aborts them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
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

fn reply(shared: &Shared, status: u16, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(pod) = HeaderValue::from_str(&shared.addr.to_string()) {
        headers.insert("x-pod", pod);
    }
    response
}

fn whole(
    shared: &Shared,
    status: u16,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    reply(shared, status, content_type, Full::new(body.into()).boxed())
}

fn json_reply(shared: &Shared, status: u16, body: impl Into<Bytes>) -> Response<Body> {
    whole(shared, status, "application/json", body)
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path();
    let s = &*shared;
    let response = match (&parts.method, path) {
        (&Method::GET, "/health") => whole(s, 200, "text/plain", Bytes::new()),
        (&Method::GET, "/metrics") => metrics(&shared).await,
        (&Method::GET, "/v1/models") => {
            let mut seq = shared.seq.fetch_add(1000, Ordering::Relaxed);
            json_reply(s, 200, openai::models(&shared.cfg, &mut seq))
        }
        (&Method::POST, "/v1/completions") => inference(&shared, Api::Completions, &body).await,
        (&Method::POST, "/v1/chat/completions") => inference(&shared, Api::Chat, &body).await,
        (&Method::POST, "/__sim/pin") => match serde_json::from_slice::<Value>(&body)
            .map_err(anyhow::Error::from)
            .and_then(|v| Pin::from_json(&v))
        {
            Ok(pin) => {
                let echo = pin.to_json();
                lock(&shared.engine).set_pin(Some(pin));
                json_reply(s, 200, json!({"pinned": echo}).to_string())
            }
            Err(e) => admin_error(s, &e),
        },
        (&Method::DELETE, "/__sim/pin") => {
            lock(&shared.engine).set_pin(None);
            json_reply(s, 200, json!({"pinned": null}).to_string())
        }
        (&Method::POST, "/__sim/metrics-fail") => {
            let mode = serde_json::from_slice::<Value>(&body)
                .map_err(anyhow::Error::from)
                .and_then(|v| {
                    let m = v.get("mode").and_then(Value::as_str).unwrap_or_default();
                    MetricsFail::parse(m)
                });
            match mode {
                Ok(mode) => {
                    shared.fail.send_replace(mode);
                    json_reply(s, 200, json!({"mode": mode.as_str()}).to_string())
                }
                Err(e) => admin_error(s, &e),
            }
        }
        (&Method::GET, "/__sim/stats") => {
            let stats = lock(&shared.engine).snapshot_stats(shared.clock.now());
            json_reply(s, 200, stats.to_json().to_string())
        }
        (&Method::GET, "/__sim/config") => json_reply(s, 200, shared.cfg.to_json().to_string()),
        (_, "/health" | "/metrics" | "/v1/models" | "/v1/completions" | "/v1/chat/completions") => {
            json_reply(s, 405, r#"{"detail":"Method Not Allowed"}"#)
        }
        _ => json_reply(s, 404, r#"{"detail":"Not Found"}"#),
    };
    Ok(response)
}

fn admin_error(shared: &Shared, e: &anyhow::Error) -> Response<Body> {
    json_reply(shared, 400, json!({"error": format!("{e:#}")}).to_string())
}

pub(crate) fn render_metrics(shared: &Shared) -> String {
    let e = lock(&shared.engine);
    let gauges = e.live_gauges().pinned(e.pin.as_ref());
    super::metrics::render(&shared.cfg, &gauges, &e.recorded, &e.lora)
}

async fn metrics(shared: &Shared) -> Response<Body> {
    let mut mode = shared.fail.subscribe();
    loop {
        let now = *mode.borrow_and_update();
        match now {
            MetricsFail::Ok => {
                return whole(
                    shared,
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    render_metrics(shared),
                )
            }
            MetricsFail::Status500 => {
                return whole(shared, 500, "text/plain", "Internal Server Error")
            }
            MetricsFail::Hang => {
                if mode.changed().await.is_err() {
                    return whole(shared, 500, "text/plain", "Internal Server Error");
                }
            }
        }
    }
}

async fn inference(shared: &Arc<Shared>, api: Api, raw: &[u8]) -> Response<Body> {
    shared.received.send_modify(|n| *n += 1);
    let p = match openai::parse(&shared.cfg, api, raw) {
        Ok(p) => p,
        Err(e) => {
            lock(&shared.engine).stats.rejected += 1;
            return json_reply(shared, e.status, e.body);
        }
    };
    let hashes = block_hashes(&p.prompt, p.prompt_len, shared.cfg.block_size, p.adapter);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let arrival = shared.arrival_time();
    let req = Req::new(
        p.adapter,
        p.prompt_len,
        hashes,
        p.max_tokens,
        p.stream,
        tx,
        arrival,
    );
    lock(&shared.engine).add(req, &p.model);
    shared.wake.notify_one();
    let head = Head::new(api, shared.seq.fetch_add(1, Ordering::Relaxed), &p.model);

    if !p.stream {
        while let Some(ev) = rx.recv().await {
            if let Event::Done(d) = ev {
                let mut r = json_reply(shared, 200, openai::whole(api, &head, &d));
                let h = r.headers_mut();
                // Per-request simulated timings, for benchmarks (Envoy passes them through).
                for (name, v) in [
                    ("x-sim-arrival-s", d.arrival_s),
                    ("x-sim-queue-s", d.queue_s),
                    ("x-sim-ttft-s", d.ttft_s),
                    ("x-sim-e2e-s", d.e2e_s),
                    ("x-sim-cached-tokens", f64::from(d.cached_tokens)),
                    (
                        "x-sim-adapter-loaded",
                        f64::from(u8::from(d.loaded_adapter)),
                    ),
                ] {
                    if let Ok(v) = HeaderValue::from_str(&format!("{v}")) {
                        h.insert(name, v);
                    }
                }
                return r;
            }
        }
        let e = openai::error(500, "InternalServerError", None, "the engine stopped");
        return json_reply(shared, e.status, e.body);
    }

    // Headers go out at once (as vLLM's StreamingResponse does); events as tokens are sampled.
    let include_usage = p.include_usage;
    let events = stream::unfold(
        (rx, head, true, false),
        move |(mut rx, head, mut first, done)| async move {
            if done {
                return None;
            }
            let (text, done) = match rx.recv().await? {
                Event::Token { last } => {
                    let t = openai::token_events(api, &head, first, last);
                    first = false;
                    (t, false)
                }
                Event::Done(d) => {
                    let mut t = String::new();
                    if include_usage {
                        t.push_str(&openai::usage_event(api, &head, &d));
                    }
                    t.push_str(openai::DONE_EVENT);
                    (t, true)
                }
            };
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(text))),
                (rx, head, first, done),
            ))
        },
    );
    reply(
        shared,
        200,
        "text/event-stream; charset=utf-8",
        StreamBody::new(events).boxed(),
    )
}
