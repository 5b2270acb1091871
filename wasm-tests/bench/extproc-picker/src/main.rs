//! The bench's ext_proc endpoint picker: what the Gateway API Inference Extension's endpoint picker
//! (and llm-d's router, Envoy AI Gateway) does per request over gRPC, written to be fast, so that
//! `make bench`'s comparison of the in-proxy plugin with the extra hop is generous to the hop.
//!
//! Per request, with Envoy's `ext_proc` filter sending the body `BUFFERED`:
//! - request headers: continue, no change;
//! - request body: parse the whole JSON (serde_json, borrowing), pick an endpoint round-robin,
//!   choose the target model (sticky by `user`, else alternating, like the plugin's 50/50 rule),
//!   splice it into the body (byte-exact otherwise: cheaper than re-serializing, as the Go picker
//!   does), and answer with the destination header, the model header, `content-length`, the body
//!   mutation and `clear_route_cache`.
//!
//! Usage: bench-extproc-picker --listen ADDR:PORT --endpoint ADDR:PORT [--endpoint ...]
//!        [--model NAME --target NAME --target NAME] [--threads N]
use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request, processing_response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingRequest,
    ProcessingResponse,
};
use serde::Deserialize;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const DEST_HEADER: &str = "x-gateway-destination-endpoint";
const MODEL_HEADER: &str = "x-gateway-model-name";

struct Picker {
    endpoints: Vec<String>,
    model: String,
    targets: Vec<String>,
    next_endpoint: AtomicUsize,
    next_target: AtomicUsize,
}

/// The fields the picker reads; serde still parses (validates) the whole document.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

fn reply(response: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

fn refuse(code: i32, details: &str) -> ProcessingResponse {
    reply(processing_response::Response::ImmediateResponse(
        ImmediateResponse {
            status: Some(HttpStatus { code }),
            body: details.as_bytes().to_vec(),
            details: details.into(),
            ..Default::default()
        },
    ))
}

/// Where the top-level `"model"` value's string starts and ends in `body` (the first `"model":`
/// key; enough for the bench's bodies, whose first key it is).
fn model_span(body: &[u8]) -> Option<(usize, usize)> {
    const KEY: &[u8] = b"\"model\"";
    let key_at = body.windows(KEY.len()).position(|w| w == KEY)?;
    let mut i = key_at + KEY.len();
    while matches!(body.get(i), Some(b' ' | b'\t' | b'\n' | b'\r' | b':')) {
        i += 1;
    }
    if body.get(i) != Some(&b'"') {
        return None;
    }
    let mut values =
        serde_json::Deserializer::from_slice(&body[i..]).into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    Some((i, i + values.byte_offset()))
}

impl Picker {
    fn on_body(&self, body: &[u8]) -> ProcessingResponse {
        let parsed: Body<'_> = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => return refuse(400, "invalid JSON body"),
        };
        let endpoint = &self.endpoints
            [self.next_endpoint.fetch_add(1, Ordering::Relaxed) % self.endpoints.len()];
        let mut headers = vec![header(DEST_HEADER, endpoint)];
        let mut mutation = None;
        if parsed.model == self.model && !self.targets.is_empty() {
            let i = match &parsed.user {
                Some(user) => {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    user.hash(&mut h);
                    h.finish() as usize
                }
                None => self.next_target.fetch_add(1, Ordering::Relaxed),
            };
            let target = &self.targets[i % self.targets.len()];
            let Some((start, end)) = model_span(body) else {
                return refuse(400, "no model");
            };
            let mut out = Vec::with_capacity(body.len() + target.len());
            out.extend_from_slice(&body[..start]);
            out.push(b'"');
            out.extend_from_slice(target.as_bytes());
            out.push(b'"');
            out.extend_from_slice(&body[end..]);
            headers.push(header(MODEL_HEADER, target));
            headers.push(header("content-length", &out.len().to_string()));
            mutation = Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::Body(out)),
            });
        } else {
            headers.push(header(MODEL_HEADER, &parsed.model));
        }
        reply(processing_response::Response::RequestBody(BodyResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers: headers,
                    remove_headers: vec![],
                }),
                body_mutation: mutation,
                clear_route_cache: true,
                ..Default::default()
            }),
        }))
    }

    fn on_message(&self, msg: ProcessingRequest) -> ProcessingResponse {
        use processing_request::Request as In;
        use processing_response::Response as Out;
        let out = match msg.request {
            Some(In::RequestHeaders(_)) => Out::RequestHeaders(HeadersResponse::default()),
            Some(In::RequestBody(b)) => return self.on_body(&b.body),
            Some(In::ResponseHeaders(_)) => Out::ResponseHeaders(HeadersResponse::default()),
            Some(In::ResponseBody(_)) => Out::ResponseBody(BodyResponse::default()),
            Some(In::RequestTrailers(_)) => Out::RequestTrailers(Default::default()),
            Some(In::ResponseTrailers(_)) => Out::ResponseTrailers(Default::default()),
            None => return refuse(500, "empty ext_proc message"),
        };
        reply(out)
    }
}

#[derive(Clone)]
struct Service(Arc<Picker>);

type Out = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Service {
    type ProcessStream = Out;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Out>, Status> {
        let picker = self.0.clone();
        // One response per message, in order: a map over the inbound stream (no task, no channel).
        let out = request
            .into_inner()
            .map(move |msg| msg.map(|m| picker.on_message(m)));
        Ok(Response::new(Box::pin(out)))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = None;
    let mut endpoints = Vec::new();
    let mut model = "bench-model".to_string();
    let mut targets = Vec::new();
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<std::net::SocketAddr>()?),
            "--endpoint" => endpoints.push(value),
            "--model" => model = value,
            "--target" => targets.push(value),
            "--threads" => threads = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    let listen = listen.ok_or("--listen ADDR:PORT is required")?;
    if endpoints.is_empty() {
        return Err("at least one --endpoint ADDR:PORT is required".into());
    }
    let picker = Picker {
        endpoints,
        model,
        targets,
        next_endpoint: AtomicUsize::new(0),
        next_target: AtomicUsize::new(0),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        eprintln!("bench-extproc-picker: listening on {listen}");
        // Windows large enough for a 200 KB body in one go (h2's default is 64 KiB per stream).
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(64 << 20))
            .tcp_nodelay(true)
            .add_service(ExternalProcessorServer::new(Service(Arc::new(picker))))
            .serve(listen)
            .await
    })?;
    Ok(())
}
