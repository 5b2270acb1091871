//! Token usage from a non-streaming response, read chunk by chunk as the host passes it on.
//!
//! Shapes understood, all at the top level of the response object:
//! - completions / chat / embeddings: `usage.prompt_tokens`, `usage.completion_tokens` (absent for embeddings: 0),
//!   `usage.prompt_tokens_details.cached_tokens`;
//! - Responses API: `usage.input_tokens`, `usage.output_tokens`, `usage.input_tokens_details.cached_tokens`.
//!
//! The whole body must be valid JSON (a truncated or garbled body yields nothing), and a `usage` key anywhere but
//! the top level is ignored. Duplicate keys: the last one wins, as with Python's json (hence vLLM).

use super::json_stream::{End, JsonScan, Kind, Node, Schema, Sink, Value};

/// Tokens one request used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Usage {
    /// `prompt_tokens` (or the Responses API's `input_tokens`).
    pub prompt_tokens: u64,
    /// `completion_tokens` (or `output_tokens`); 0 when absent or null, as for embeddings.
    pub completion_tokens: u64,
    /// `prompt_tokens_details.cached_tokens` (or `input_tokens_details.cached_tokens`) when it is an integer.
    pub cached_tokens: Option<u64>,
}

/// One count as last seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Count {
    #[default]
    Absent,
    Null,
    Int(u64),
    /// Not a non-negative integer that fits in u64: the server is not saying anything we can count.
    Invalid,
}

impl Count {
    fn of(v: &Value, end: End) -> Count {
        match (v.kind, end.int) {
            (Kind::Number, Some(n)) => Count::Int(n),
            (Kind::Null, _) => Count::Null,
            _ => Count::Invalid,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    prompt: Count,
    completion: Count,
    input: Count,
    output: Count,
    prompt_cached: Option<u64>,
    input_cached: Option<u64>,
}

impl Counts {
    /// The `prompt_*` family when `prompt_tokens` is there at all, else the Responses API's `input_*`.
    fn usage(&self) -> Option<Usage> {
        let (main, other, cached) = if self.prompt != Count::Absent {
            (self.prompt, self.completion, self.prompt_cached)
        } else {
            (self.input, self.output, self.input_cached)
        };
        let Count::Int(prompt_tokens) = main else {
            return None;
        };
        let completion_tokens = match other {
            Count::Int(n) => n,
            Count::Absent | Count::Null => 0,
            Count::Invalid => return None,
        };
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens: cached,
        })
    }
}

/// Collects the `usage` objects a [`JsonScan`] passes; the last complete one wins (`"usage": null` clears it).
#[derive(Debug, Default)]
pub(crate) struct UsageSink {
    building: Counts,
    /// Whether a usage member was seen at all, and what the last one said.
    pub(crate) seen: bool,
    pub(crate) last: Option<Usage>,
}

impl Sink for UsageSink {
    fn open(&mut self, v: &Value) {
        match v.node {
            Node::Usage => self.building = Counts::default(),
            Node::PromptDetails => self.building.prompt_cached = None,
            Node::InputDetails => self.building.input_cached = None,
            _ => {}
        }
    }

    fn close(&mut self, v: &Value, end: End) {
        let b = &mut self.building;
        match v.node {
            Node::Usage => {
                self.seen = true;
                self.last = if v.kind == Kind::Object {
                    b.usage()
                } else {
                    None
                };
            }
            Node::PromptTokens => b.prompt = Count::of(v, end),
            Node::CompletionTokens => b.completion = Count::of(v, end),
            Node::InputTokens => b.input = Count::of(v, end),
            Node::OutputTokens => b.output = Count::of(v, end),
            Node::PromptCached => b.prompt_cached = end.int.filter(|_| v.kind == Kind::Number),
            Node::InputCached => b.input_cached = end.int.filter(|_| v.kind == Kind::Number),
            _ => {}
        }
    }
}

/// Reads `usage` from a response body fed in chunks of any size. Memory is fixed (a few hundred bytes),
/// time linear; the body is never stored.
pub struct UsageScanner {
    scan: JsonScan,
    sink: UsageSink,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageScanner {
    pub fn new() -> Self {
        UsageScanner {
            scan: JsonScan::new(Schema::Body),
            sink: UsageSink::default(),
        }
    }

    /// The next bytes of the body, in order.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.scan.feed(chunk, &mut self.sink);
    }

    /// The body is already known not to be JSON: [`finish`](Self::finish) will say `None`, so the host may
    /// stop feeding.
    pub fn failed(&self) -> bool {
        self.scan.failed()
    }

    /// End of body: its usage, if the whole body was one valid JSON object with a usable top-level `usage`.
    pub fn finish(mut self) -> Option<Usage> {
        if self.scan.finish(&mut self.sink) {
            self.sink.last
        } else {
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const COMPLETION: &[u8] = include_bytes!("../../../testdata/vllm-0.32-cpu/completion.json");
    const CHAT: &[u8] = include_bytes!("../../../testdata/vllm-0.32-cpu/chat-completion.json");
    const ERROR: &[u8] = include_bytes!("../../../testdata/vllm-0.32-cpu/error-unknown-model.json");
    const MODELS: &[u8] = include_bytes!("../../../testdata/vllm-0.32-cpu/models.json");
    const CHAT_SSE: &[u8] =
        include_bytes!("../../../testdata/vllm-0.32-cpu/chat-stream-with-usage.sse");

    fn scan(pieces: &[&[u8]]) -> Option<Usage> {
        let mut s = UsageScanner::new();
        for p in pieces {
            s.feed(p);
        }
        s.finish()
    }

    fn usage(prompt: u64, completion: u64, cached: Option<u64>) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
        })
    }

    /// Same answer for the whole body, every two-piece split, byte by byte, and `rounds` random multi-splits.
    fn scan_every_way(body: &[u8], rounds: usize) -> Option<Usage> {
        let whole = scan(&[body]);
        for k in 0..=body.len() {
            assert_eq!(scan(&[&body[..k], &body[k..]]), whole, "split at {k}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&bytes), whole);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ body.len() as u64);
        for _ in 0..rounds {
            let pieces = rng.split(body);
            assert_eq!(
                scan(&pieces),
                whole,
                "{:?}",
                pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
            );
        }
        whole
    }

    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        /// Cut `bytes` at random points, small pieces (including empty ones) more often than large.
        pub(crate) fn split<'a>(&mut self, bytes: &'a [u8]) -> Vec<&'a [u8]> {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = match self.below(4) {
                    0 => 0,
                    1 => 1 + self.below(3),
                    _ => self.below(rest.len() + 1),
                }
                .min(rest.len());
                let (a, b) = rest.split_at(n);
                out.push(a);
                rest = b;
            }
            out
        }
    }

    #[test]
    fn vllm_fixtures() {
        assert_eq!(scan_every_way(COMPLETION, 200), usage(30, 20, None));
        assert_eq!(scan_every_way(CHAT, 200), usage(24, 16, None));
        assert_eq!(scan_every_way(ERROR, 50), None);
        assert_eq!(scan_every_way(MODELS, 50), None);
        // An SSE stream is not a JSON body.
        assert_eq!(scan(&[CHAT_SSE]), None);
    }

    #[test]
    fn every_truncation_of_the_fixtures_is_none() {
        for body in [COMPLETION, CHAT] {
            let body = body.trim_ascii_end();
            for k in 0..body.len() {
                assert_eq!(scan(&[&body[..k]]), None, "cut at {k}");
            }
        }
    }

    #[test]
    fn embeddings_have_no_completion_tokens() {
        let body = br#"{"id":"embd-1","object":"list","created":1,"model":"e5","data":[{"index":0,"object":"embedding","embedding":[0.0123,-1.5e-3,2]}],"usage":{"prompt_tokens":8,"total_tokens":8,"completion_tokens":0,"prompt_tokens_details":null}}"#;
        assert_eq!(scan_every_way(body, 100), usage(8, 0, None));
        let body = br#"{"object":"list","data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(scan_every_way(body, 100), usage(9, 0, None));
        let body = br#"{"usage":{"prompt_tokens":9,"completion_tokens":null}}"#;
        assert_eq!(scan_every_way(body, 50), usage(9, 0, None));
    }

    #[test]
    fn cached_tokens() {
        let body = br#"{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":64}}}"#;
        assert_eq!(scan_every_way(body, 100), usage(100, 5, Some(64)));
        for details in [
            r#"null"#,
            r#"{}"#,
            r#"{"cached_tokens":null}"#,
            r#"{"cached_tokens":"64"}"#,
            r#"{"cached_tokens":1.5}"#,
            r#"{"cached_tokens":-1}"#,
            r#"{"cached_tokens":{"x":1}}"#,
            r#"{"cached_tokens":99999999999999999999999}"#,
            r#"[64]"#,
        ] {
            let body = format!(
                r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens_details":{details}}}}}"#
            );
            assert_eq!(scan(&[body.as_bytes()]), usage(1, 2, None), "{details}");
        }
        // The last details object wins, even when an earlier one had a count.
        let body = br#"{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens_details":{}}}"#;
        assert_eq!(scan(&[body]), usage(1, 0, None));
        // input_tokens_details belongs to the Responses shape, not to prompt_tokens.
        let body = br#"{"usage":{"prompt_tokens":1,"input_tokens_details":{"cached_tokens":3}}}"#;
        assert_eq!(scan(&[body]), usage(1, 0, None));
    }

    #[test]
    fn responses_api_shape() {
        let body = br#"{"id":"resp_1","object":"response","created_at":1,"status":"completed","model":"m","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"hi","annotations":[]}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":12},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
        assert_eq!(scan_every_way(body, 200), usage(36, 87, Some(12)));
        let body =
            br#"{"usage":{"input_tokens":36,"output_tokens":87,"input_tokens_details":null}}"#;
        assert_eq!(scan(&[body]), usage(36, 87, None));
        let body = br#"{"usage":{"input_tokens":36}}"#;
        assert_eq!(scan(&[body]), usage(36, 0, None));
        // prompt_tokens present: the chat family is read even if input_tokens is there too.
        let body = br#"{"usage":{"input_tokens":1,"output_tokens":2,"prompt_tokens":3}}"#;
        assert_eq!(scan(&[body]), usage(3, 0, None));
    }

    #[test]
    fn usage_null_missing_or_unusable_is_none() {
        for body in [
            r#"{"usage":null}"#,
            r#"{"id":"x","choices":[]}"#,
            r#"{"usage":{}}"#,
            r#"{"usage":{"total_tokens":5}}"#,
            r#"{"usage":[]}"#,
            r#"{"usage":"10"}"#,
            r#"{"usage":10}"#,
            r#"{"usage":{"prompt_tokens":null,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":"10","completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":10.0,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1e1,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":-10,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":10,"completion_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":10,"completion_tokens":true}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551616,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":123456789012345678901234567890}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1e400}}"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
            r#""usage""#,
            r#"null"#,
        ] {
            assert_eq!(scan_every_way(body.as_bytes(), 20), None, "{body}");
        }
    }

    #[test]
    fn huge_numbers_elsewhere_do_not_matter() {
        let body = br#"{"created":123456789012345678901234567890,"x":1e400,"y":-1.5E-400,"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":0,"total_tokens":1e999}}"#;
        assert_eq!(scan_every_way(body, 100), usage(u64::MAX, 0, None));
    }

    #[test]
    fn nested_usage_keys_are_ignored() {
        let body = br#"{"choices":[{"usage":{"prompt_tokens":999}}],"meta":{"usage":{"prompt_tokens":998}},"response":{"usage":{"input_tokens":997}},"usage":{"prompt_tokens":1,"completion_tokens":2,"extra":{"usage":{"prompt_tokens":996}}}}"#;
        assert_eq!(scan_every_way(body, 100), usage(1, 2, None));
        let body = br#"{"choices":[{"usage":{"prompt_tokens":999,"completion_tokens":1}}]}"#;
        assert_eq!(scan_every_way(body, 50), None);
        let body = br#"{"data":[[[{"usage":{"prompt_tokens":1}}]]],"usage":null}"#;
        assert_eq!(scan_every_way(body, 50), None);
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let body = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        assert_eq!(scan(&[body]), usage(3, 4, None));
        let body = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"usage":null}"#;
        assert_eq!(scan(&[body]), None);
        let body = br#"{"usage":null,"usage":{"prompt_tokens":5}}"#;
        assert_eq!(scan(&[body]), usage(5, 0, None));
        let body = br#"{"usage":{"prompt_tokens":1,"prompt_tokens":7,"completion_tokens":2,"completion_tokens":8}}"#;
        assert_eq!(scan(&[body]), usage(7, 8, None));
        // A later member of another kind does not disturb an earlier usage.
        let body = br#"{"usage":{"prompt_tokens":1},"model":"usage"}"#;
        assert_eq!(scan(&[body]), usage(1, 0, None));
    }

    #[test]
    fn escaped_keys_and_whitespace() {
        let body = b" \r\n{ \"\\u0075sage\" :\t{ \"prompt\\u005Ftokens\" : 11 ,\n \"completion_tokens\":\r\n 22 } } \n";
        assert_eq!(scan_every_way(body, 100), usage(11, 22, None));
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let good = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let mut rng = Rng(42);
        for round in 0..3000 {
            let mut body = good.to_vec();
            match round % 4 {
                0 => {
                    let at = rng.below(body.len());
                    body[at] = rng.next() as u8;
                }
                1 => body.truncate(rng.below(body.len())),
                2 => {
                    let at = rng.below(body.len());
                    let junk = b"{}[]\",:\\ \x00\xff0-e";
                    body.insert(at, junk[rng.below(junk.len())]);
                }
                _ => {
                    let at = rng.below(body.len());
                    body.remove(at);
                }
            }
            let got = scan(&rng.split(&body));
            let want = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let u = v.get("usage")?;
                    Some(Usage {
                        prompt_tokens: u.get("prompt_tokens")?.as_u64()?,
                        completion_tokens: match u.get("completion_tokens") {
                            None | Some(serde_json::Value::Null) => 0,
                            Some(c) => c.as_u64()?,
                        },
                        cached_tokens: None,
                    })
                });
            // serde_json's as_u64 also accepts nothing but plain integers, so the answers agree.
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&body));
        }
        for junk in [
            &b""[..],
            b"\x00",
            b"\xff\xfe",
            b"{{{{",
            b"]]]]",
            b"\"",
            b"{\"usage\":{\"prompt_tokens\":1",
        ] {
            assert_eq!(scan_every_way(junk, 5), None);
        }
        let deep = "[".repeat(100_000);
        assert_eq!(scan(&[deep.as_bytes()]), None);
    }

    #[test]
    fn failed_is_sticky_and_early() {
        let mut s = UsageScanner::new();
        s.feed(b"{\"usage\":");
        assert!(!s.failed());
        s.feed(b"}");
        assert!(s.failed());
        s.feed(br#"{"prompt_tokens":1}}"#);
        assert!(s.failed());
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn large_body_is_linear_and_small() {
        // ~4 MB of embedding floats before the usage: one pass, in 64 KiB pieces.
        let mut body = b"{\"data\":[{\"embedding\":[".to_vec();
        for i in 0..400_000u32 {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(format!("-0.{i:07}").as_bytes());
        }
        body.extend_from_slice(b"]}],\"usage\":{\"prompt_tokens\":512,\"total_tokens\":512}}");
        let pieces: Vec<&[u8]> = body.chunks(65536).collect();
        assert_eq!(scan(&pieces), usage(512, 0, None));
        assert!(std::mem::size_of::<UsageScanner>() < 1024);
    }
}
