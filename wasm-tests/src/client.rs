//! The test client: exact body bytes, custom (also repeated) headers, chunked bodies without a
//! content-length, and streaming responses read chunk by chunk.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;
use std::time::Duration;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-pod` header the fake pods set: which pod answered.
    pub fn pod(&self) -> Option<&str> {
        self.header("x-pod")
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("reply body is not JSON: {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client for `http://addr` (no proxies: every target is a loopback address).
    pub fn new(addr: std::net::SocketAddr) -> Result<Client> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Client {
            http,
            base: format!("http://{addr}"),
        })
    }

    /// A client that opens a new connection for every request, so requests reach every Envoy
    /// worker (a kept-alive connection stays on one).
    pub fn fresh_connections(addr: std::net::SocketAddr) -> Result<Client> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Client {
            http,
            base: format!("http://{addr}"),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder> {
        Ok(self
            .http
            .request(method, self.url(path))
            .headers(header_map(headers)?))
    }

    /// POST exactly `body` (with content-length). Adds `content-type: application/json` unless
    /// `headers` has a content-type.
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let req = self.request(Method::POST, path, &with_json_type(headers))?;
        collect(req.body(body.into()).send().await?).await
    }

    /// POST `chunks` as a chunked body: no content-length, each chunk written separately.
    pub async fn post_chunked(
        &self,
        path: &str,
        chunks: Vec<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let req = self.request(Method::POST, path, &with_json_type(headers))?;
        collect(req.body(reqwest::Body::wrap_stream(stream)).send().await?).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        collect(self.request(Method::GET, path, headers)?.send().await?).await
    }

    /// POST and hand back the response as soon as its headers arrive, to read it chunk by chunk.
    pub async fn post_streaming(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<Streaming> {
        let req = self.request(Method::POST, path, &with_json_type(headers))?;
        let response = req.body(body.into()).send().await?;
        Ok(Streaming {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            response,
            buffered: Vec::new(),
        })
    }

    /// `POST /v1/completions` for `model` with a small prompt.
    pub async fn completion(&self, model: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let body = serde_json::json!({"model": model, "prompt": "Say hi", "max_tokens": 3});
        self.post("/v1/completions", body.to_string(), headers)
            .await
    }
}

/// A response being read incrementally.
pub struct Streaming {
    pub status: u16,
    pub headers: HeaderMap,
    response: reqwest::Response,
    buffered: Vec<u8>,
}

impl Streaming {
    /// The next chunk as it arrives on the wire; None at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        Ok(self.response.chunk().await?)
    }

    /// The next whole SSE event (text up to a blank line), waiting at most `timeout`; None at the end.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<String>> {
        let read = async {
            loop {
                if let Some(end) = find(&self.buffered, b"\n\n") {
                    let event: Vec<u8> = self.buffered.drain(..end + 2).collect();
                    return Ok(Some(String::from_utf8_lossy(&event[..end]).into_owned()));
                }
                match self.response.chunk().await? {
                    Some(chunk) => self.buffered.extend_from_slice(&chunk),
                    None if self.buffered.is_empty() => return Ok(None),
                    None => {
                        let rest = String::from_utf8_lossy(&self.buffered).into_owned();
                        return Err(anyhow!("stream ended inside an event: {rest:?}"));
                    }
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| anyhow!("no complete SSE event within {timeout:?}"))?
    }

    /// Every remaining event until the end of the stream.
    pub async fn rest_events(&mut self, timeout: Duration) -> Result<Vec<String>> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event(timeout).await? {
            events.push(event);
        }
        Ok(events)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn collect(response: reqwest::Response) -> Result<Reply> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn with_json_type<'a>(headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut out = headers.to_vec();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        out.push(("content-type", "application/json"));
    }
    out
}

/// Headers in order; a name given twice is sent twice.
pub fn header_map(headers: &[(&str, &str)]) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    Ok(map)
}

/// POST `body` to `path` over HTTP/2 (prior knowledge), in two DATA frames, then a trailer
/// section that ends the stream: the body's last frame does not. Returns the status and body.
pub async fn post_h2_with_trailers(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> Result<(u16, Bytes)> {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let (a, b) = body.split_at(body.len() / 2);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::copy_from_slice(a.as_bytes()))),
        Ok(Frame::data(Bytes::copy_from_slice(b.as_bytes()))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(StreamBody::new(futures_util::stream::iter(frames)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}
