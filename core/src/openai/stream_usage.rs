//! Exact token counts for streams whose client did not ask for usage: ask the server on the client's behalf
//! ([`request_usage_rewrite`]), then take the answer back out of the stream ([`UsageStripper`]) so the client
//! receives what the server would have sent it had we not asked.
//!
//! vLLM (and OpenAI) answer `stream_options.include_usage: true` with one extra event before `[DONE]`:
//! `{"id":..,"choices":[],"usage":{..}}`. The stripper drops that event. Servers may also mark every other chunk
//! with `"usage": null` (OpenAI does; vLLM 0.32 does not, see `chat-stream-with-usage.sse`), and with vLLM's
//! `continuous_usage_stats` each chunk carries a running `usage` object: the stripper removes a top-level
//! `usage` member from any other event too, since the client asked for neither.

use std::ops::Range;

use super::sse::{Block, EventFacts, SseParser, SseProgress};
use super::usage::Usage;

/// The most bytes of one incomplete event the stripper holds back; a longer event is passed on unchanged.
pub const DEFAULT_HOLD_LIMIT: usize = 1 << 20;

/// For a streaming request (top-level `"stream": true`) whose client did not ask for usage, the body asking
/// for it; otherwise `None` (not streaming, usage already asked for, or not valid JSON).
///
/// - no `stream_options` (or `null`): `"stream_options":{"include_usage":true}` is added after the last
///   top-level member (or replaces the `null`);
/// - `stream_options.include_usage` is `false` or `null`: that value becomes `true`;
/// - `stream_options` is an object without `include_usage`: `None`, because vLLM's default for it is `true`
///   (`StreamOptions.include_usage: Optional[bool] = True`): that client already gets the usage event, which
///   must not be stripped;
/// - anything else (`include_usage` not a boolean, `stream_options` not an object): `None`, the server will
///   refuse or ignore it as it would have.
///
/// Every other byte of the body is kept; one linear scan, no tree. Meant for `/v1/completions` and
/// `/v1/chat/completions`; the Responses API always reports usage in `response.completed`.
pub fn request_usage_rewrite(body: &[u8]) -> Option<Vec<u8>> {
    let (range, insert) = request_usage_splice(body)?;
    let head = body.get(..range.start)?;
    let tail = body.get(range.end..)?;
    let mut out = Vec::with_capacity(head.len() + insert.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(insert);
    out.extend_from_slice(tail);
    Some(out)
}

/// The same change as [`request_usage_rewrite`], as "replace `body[range]` with these bytes", so the host can
/// combine it with other edits (such as the `model` substitution: apply the later range first).
pub fn request_usage_splice(body: &[u8]) -> Option<(Range<usize>, &'static [u8])> {
    super::scan::scan_usage(body).ok()?.splice()
}

/// Filters an SSE response whose request went through [`request_usage_rewrite`]: every byte passes on as soon
/// as the event it belongs to is complete, except the usage-only event (dropped, with the line end of a CRLF
/// split from it) and a top-level `usage` member in any other single-line event (cut, with one adjacent comma).
/// Only an incomplete trailing event is held, up to the hold limit; an event longer than that is passed on
/// unchanged and counted.
pub struct UsageStripper {
    parser: SseParser,
    held: Vec<u8>,
    /// Stream offset of the current block's first byte.
    block_start: u64,
    /// The current block outgrew the limit: its bytes go straight out.
    passthrough: bool,
    /// The last event ended with `\r`: a `\n` right after it is part of it, so it goes where that event went
    /// (`Some(true)`: dropped).
    after_cr: Option<bool>,
    limit: usize,
    stripped: u64,
    edited: u64,
    oversized: u64,
}

impl Default for UsageStripper {
    fn default() -> Self {
        Self::new()
    }
}

enum Action {
    Keep,
    Drop,
    Cut(u64, u64),
}

impl UsageStripper {
    pub fn new() -> Self {
        Self::with_hold_limit(DEFAULT_HOLD_LIMIT)
    }

    pub fn with_hold_limit(limit: usize) -> Self {
        UsageStripper {
            parser: SseParser::new(),
            held: Vec::new(),
            block_start: 0,
            passthrough: false,
            after_cr: None,
            limit,
            stripped: 0,
            edited: 0,
            oversized: 0,
        }
    }

    /// The next bytes from the server: appends to `out` what the client gets now, and returns the usage an
    /// event completed in this chunk reported, if any.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Option<Usage> {
        self.feed_progress(chunk, out).usage
    }

    /// As [`feed`](Self::feed), with everything the chunk completed (for time to first token).
    pub fn feed_progress(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> SseProgress {
        let mut progress = SseProgress::default();
        let mut rest = chunk;
        while !rest.is_empty() {
            if let Some(dropped) = self.after_cr.take() {
                if let Some((lf @ b'\n', tail)) = rest.split_first() {
                    // The parser takes it as the end of that line, too.
                    self.parser
                        .next_block(std::slice::from_ref(lf), &mut progress);
                    if !dropped {
                        out.push(*lf);
                    }
                    rest = tail;
                    self.block_start = self.parser.pos();
                    continue;
                }
            }
            let (n, block) = self.parser.next_block(rest, &mut progress);
            let piece = rest.get(..n).unwrap_or_default();
            rest = rest.get(n..).unwrap_or_default();
            match block {
                None => self.hold(piece, out),
                Some(block) => {
                    self.complete(piece, block, out);
                    self.block_start = self.parser.pos();
                }
            }
        }
        progress
    }

    /// End of the stream: an incomplete trailing event goes out as it came.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        self.held = Vec::new();
        self.passthrough = false;
    }

    /// The parser underneath: usage, events, `[DONE]` for the whole stream.
    pub fn parser(&self) -> &SseParser {
        &self.parser
    }

    /// Usage-only events dropped.
    pub fn stripped_events(&self) -> u64 {
        self.stripped
    }

    /// Events a `usage` member was cut from.
    pub fn edited_events(&self) -> u64 {
        self.edited
    }

    /// Events longer than the hold limit, passed on unchanged.
    pub fn oversized_events(&self) -> u64 {
        self.oversized
    }

    /// Bytes held back now (the incomplete trailing event).
    pub fn held_bytes(&self) -> usize {
        self.held.len()
    }

    fn hold(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        if self.passthrough {
            out.extend_from_slice(piece);
        } else if self.held.len().saturating_add(piece.len()) > self.limit {
            out.extend_from_slice(&self.held);
            out.extend_from_slice(piece);
            self.held = Vec::new();
            self.passthrough = true;
            self.oversized += 1;
        } else {
            self.held.extend_from_slice(piece);
        }
    }

    fn complete(&mut self, piece: &[u8], block: Block, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.passthrough) {
            out.extend_from_slice(piece);
            if piece.last() == Some(&b'\r') {
                self.after_cr = Some(false);
            }
            return;
        }
        let action = match block.event {
            Some(EventFacts {
                usage_only: true, ..
            }) => Action::Drop,
            Some(EventFacts {
                cut: Some((from, to)),
                ..
            }) => Action::Cut(from, to),
            _ => Action::Keep,
        };
        let mut held = std::mem::take(&mut self.held);
        let raw: &[u8] = if held.is_empty() {
            piece
        } else {
            held.extend_from_slice(piece);
            &held
        };
        if raw.last() == Some(&b'\r') {
            self.after_cr = Some(matches!(action, Action::Drop));
        }
        match action {
            Action::Keep => out.extend_from_slice(raw),
            Action::Drop => self.stripped += 1,
            Action::Cut(from, to) => {
                let at = |x: u64| usize::try_from(x.checked_sub(self.block_start)?).ok();
                match (
                    at(from).and_then(|a| raw.get(..a)),
                    at(to).and_then(|b| raw.get(b..)),
                ) {
                    (Some(head), Some(tail)) => {
                        out.extend_from_slice(head);
                        out.extend_from_slice(tail);
                        self.edited += 1;
                    }
                    _ => out.extend_from_slice(raw),
                }
            }
        }
        held.clear();
        self.held = held;
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::openai::usage::tests::Rng;
    use serde_json::{json, Value as Json};

    const CHAT_SSE: &str =
        include_str!("../../../testdata/vllm-0.32-cpu/chat-stream-with-usage.sse");
    const COMPLETION_SSE: &str =
        include_str!("../../../testdata/vllm-0.32-cpu/completion-stream-no-usage.sse");

    // ---- request side ----

    /// The rewrite parses, equals the input with usage asked for, and changed only the bytes it had to.
    fn check_rewrite(body: &str) -> Option<String> {
        let out = request_usage_rewrite(body.as_bytes())?;
        let out = String::from_utf8(out).unwrap();
        let mut want: Json = serde_json::from_str(body).unwrap();
        let opts = &mut want["stream_options"];
        if opts.is_object() {
            opts["include_usage"] = json!(true);
        } else {
            *opts = json!({"include_usage": true});
        }
        assert_eq!(serde_json::from_str::<Json>(&out).unwrap(), want, "{out}");
        let head = body
            .bytes()
            .zip(out.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let tail = body
            .bytes()
            .rev()
            .zip(out.bytes().rev())
            .take_while(|(a, b)| a == b)
            .count();
        // Body bytes not in the common prefix or suffix: at most the one value replaced.
        let changed = body.len().saturating_sub(head + tail);
        assert!(
            changed <= "false".len(),
            "more than one value changed: {body} -> {out}"
        );
        Some(out)
    }

    #[test]
    fn adds_stream_options_when_absent() {
        assert_eq!(
            check_rewrite(
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#
            )
            .unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#
        );
        // After the last member, whatever the whitespace; key order kept.
        assert_eq!(
            check_rewrite("{ \"stream\" : true ,\n \"model\" : \"m\" \n}\n").unwrap(),
            "{ \"stream\" : true ,\n \"model\" : \"m\",\"stream_options\":{\"include_usage\":true} \n}\n"
        );
        assert_eq!(
            check_rewrite(r#"{"stream":true}"#).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            check_rewrite(r#"{"model":"m","stream":true,"stream_options":null}"#).unwrap(),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn sets_include_usage_inside_stream_options() {
        assert_eq!(
            check_rewrite(
                r#"{"stream":true,"stream_options":{"include_usage":false},"model":"m"}"#
            )
            .unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true},"model":"m"}"#
        );
        assert_eq!(
            check_rewrite(r#"{"stream_options":{ "include_usage" : null , "continuous_usage_stats":true},"stream":true}"#)
                .unwrap(),
            r#"{"stream_options":{ "include_usage" : true , "continuous_usage_stats":true},"stream":true}"#
        );
        // Repeated keys: the last one is what the server reads, so it is the one changed.
        assert_eq!(
            check_rewrite(r#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false,"include_usage":false}}"#)
                .unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false,"include_usage":true}}"#
        );
        assert!(check_rewrite(
            r#"{"stream":true,"stream_options":{"include_usage":false},"stream_options":null}"#
        )
        .is_some());
        assert!(check_rewrite(
            r#"{"stream":true,"stream_options":{"include_usage":false},"stream_options":{}}"#
        )
        .is_none());
        // Escaped key names are the same keys.
        assert_eq!(
            check_rewrite(
                r#"{"str\u0065am":true,"stream_\u006fptions":{"include\u005fusage":false}}"#
            )
            .unwrap(),
            r#"{"str\u0065am":true,"stream_\u006fptions":{"include\u005fusage":true}}"#
        );
    }

    #[test]
    fn leaves_other_bodies_alone() {
        for body in [
            r#"{"model":"m","stream":false}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","stream":"true"}"#,
            r#"{"model":"m","stream":1}"#,
            r#"{"model":"m","stream":null}"#,
            r#"{"model":"m","stream":true,"stream":false}"#,
            r#"{"model":"m","messages":[{"stream":true}]}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            // vLLM defaults include_usage to true: this client already gets usage.
            r#"{"model":"m","stream":true,"stream_options":{}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":"false"}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":0}}"#,
            r#"{"model":"m","stream":true,"stream_options":"include_usage"}"#,
            r#"{"model":"m","stream":true,"stream_options":[]}"#,
            r#"{"model":"m","stream":true,"stream_options":{"x":{"include_usage":false}}}"#,
            r#"[{"stream":true}]"#,
            r#"{"model":"m","stream":true"#,
            r#"{"model":"m","stream":true}}"#,
            r#"{"model":"m","stream":tru}"#,
            "\u{feff}{\"stream\":true}",
            "",
        ] {
            assert_eq!(request_usage_rewrite(body.as_bytes()), None, "{body}");
        }
        assert!(check_rewrite(r#"{"model":"m","stream":false,"stream":true}"#).is_some());
    }

    #[test]
    fn every_truncation_is_left_alone() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"a \"b\" \u00e9"}],"stream":true,"stream_options":{"include_usage":false}}"#;
        assert!(check_rewrite(body).is_some());
        for k in 0..body.len() {
            assert_eq!(
                request_usage_rewrite(&body.as_bytes()[..k]),
                None,
                "cut at {k}"
            );
        }
    }

    #[test]
    fn random_bodies_against_serde_json() {
        let mut rng = Rng(2024);
        let values = [
            "0",
            "-1.5e3",
            "true",
            "false",
            "null",
            r#""s""#,
            r#""\u00e9\n""#,
            "[]",
            "{}",
            r#"[1,{"stream":true}]"#,
            r#"{"include_usage":false}"#,
        ];
        let keys = [
            "model",
            "stream",
            "stream_options",
            "messages",
            "include_usage",
            "str\\u0065am",
            "x",
        ];
        let opts = [
            None,
            Some("null"),
            Some("{}"),
            Some(r#"{"include_usage":false}"#),
            Some(r#"{"include_usage":true}"#),
            Some(r#"{"include_usage":null,"continuous_usage_stats":false}"#),
            Some(r#"{ "continuous_usage_stats" : true , "include_usage" : false }"#),
            Some("[]"),
        ];
        let mut rewritten = 0;
        for _ in 0..3000 {
            let mut members = Vec::new();
            for _ in 0..rng.below(5) {
                members.push(format!(
                    "\"{}\":{}",
                    keys[rng.below(keys.len())],
                    values[rng.below(values.len())]
                ));
            }
            let stream = ["true", "false", "\"true\""][rng.below(3)];
            members.insert(rng.below(members.len() + 1), format!("\"stream\":{stream}"));
            if let Some(o) = opts[rng.below(opts.len())] {
                members.insert(
                    rng.below(members.len() + 1),
                    format!("\"stream_options\":{o}"),
                );
            }
            let ws = [" ", "", "\n\t"][rng.below(3)];
            let body = format!("{{{ws}{}{ws}}}", members.join(&format!("{ws},{ws}")));
            let parsed: Json = serde_json::from_str(&body).unwrap();
            let streaming = parsed["stream"] == json!(true);
            let wants = match &parsed["stream_options"] {
                Json::Null => true,
                Json::Object(m) => {
                    matches!(m.get("include_usage"), Some(Json::Bool(false) | Json::Null))
                }
                _ => false,
            };
            let got = check_rewrite(&body);
            assert_eq!(got.is_some(), streaming && wants, "{body}");
            rewritten += usize::from(got.is_some());
        }
        assert!(rewritten > 300, "{rewritten}");
    }

    #[test]
    fn splice_is_the_rewrite() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#;
        let (range, insert) = request_usage_splice(body).unwrap();
        assert_eq!(&body[range.clone()], b"false");
        assert_eq!(insert, b"true");
        let body = br#"{"model":"m","stream":true}"#;
        let (range, insert) = request_usage_splice(body).unwrap();
        assert_eq!(range, body.len() - 1..body.len() - 1);
        assert_eq!(insert, br#","stream_options":{"include_usage":true}"#);
        assert_eq!(request_usage_splice(br#"{"model":"m"}"#), None);
    }

    #[test]
    fn large_request_body() {
        let content = "x".repeat(4 << 20);
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{content}"}}],"stream":true}}"#
        );
        let out = request_usage_rewrite(body.as_bytes()).unwrap();
        assert_eq!(
            out.len(),
            body.len() + r#","stream_options":{"include_usage":true}"#.len()
        );
        assert!(out.ends_with(br#""stream":true,"stream_options":{"include_usage":true}}"#));
    }

    // ---- response side ----

    /// The fixture as the server would have sent it without include_usage: the same blocks, minus the one
    /// whose chunk has `"choices":[]` (found by hand here, not by the code under test).
    fn chat_without_usage() -> String {
        let blocks: Vec<&str> = CHAT_SSE.split_inclusive("\n\n").collect();
        assert_eq!(blocks.len(), 11);
        assert!(blocks[9].starts_with(r#"data: {"id":"chatcmpl-8ca5baefa652af96","object":"chat.completion.chunk","created":1795444413,"model":"tweet-summary","choices":[],"usage":{"prompt_tokens":13"#));
        assert_eq!(blocks[10], "data: [DONE]\n\n");
        // vLLM 0.32 does not mark the other chunks with "usage": null.
        assert_eq!(CHAT_SSE.matches("\"usage\"").count(), 1);
        let mut s = String::new();
        for (i, b) in blocks.iter().enumerate() {
            if i != 9 {
                s.push_str(b);
            }
        }
        s
    }

    fn strip(pieces: &[&[u8]], limit: usize) -> (Vec<u8>, Option<Usage>, UsageStripper) {
        let mut st = UsageStripper::with_hold_limit(limit);
        let mut out = Vec::new();
        let mut usage = None;
        for p in pieces {
            if let Some(u) = st.feed(p, &mut out) {
                assert!(usage.is_none(), "usage reported twice");
                usage = Some(u);
            }
            assert!(st.held_bytes() <= limit);
        }
        st.finish(&mut out);
        (out, usage, st)
    }

    /// Server stream -> client stream, checked at every split point, byte by byte, and random multi-splits.
    fn strip_every_way(server: &[u8], want: &[u8], usage: Option<Usage>) {
        let check = |pieces: &[&[u8]], what: &str| {
            let (out, u, _) = strip(pieces, DEFAULT_HOLD_LIMIT);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "{what}"
            );
            assert_eq!(u, usage, "{what}");
        };
        check(&[server], "whole");
        for k in 0..=server.len() {
            check(&[&server[..k], &server[k..]], &format!("split at {k}"));
        }
        check(&server.chunks(1).collect::<Vec<_>>(), "bytes");
        let mut rng = Rng(31 + server.len() as u64);
        for round in 0..100 {
            check(&rng.split(server), &format!("round {round}"));
        }
    }

    fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }

    fn cr(s: &str) -> String {
        s.replace('\n', "\r")
    }

    /// Length of the fixture's usage event, blank line included.
    const USAGE_BLOCK: usize = 246;

    const FIXTURE_USAGE: Usage = Usage {
        prompt_tokens: 13,
        completion_tokens: 8,
        cached_tokens: None,
    };

    #[test]
    fn strips_the_fixture_usage_event() {
        let want = chat_without_usage();
        assert_eq!(want.len() + USAGE_BLOCK, CHAT_SSE.len());
        strip_every_way(CHAT_SSE.as_bytes(), want.as_bytes(), Some(FIXTURE_USAGE));
    }

    #[test]
    fn strips_with_crlf_and_cr_line_ends() {
        let want = chat_without_usage();
        strip_every_way(
            crlf(CHAT_SSE).as_bytes(),
            crlf(&want).as_bytes(),
            Some(FIXTURE_USAGE),
        );
        strip_every_way(
            cr(CHAT_SSE).as_bytes(),
            cr(&want).as_bytes(),
            Some(FIXTURE_USAGE),
        );
        // Mixed: the usage event ends with CR CR, then LF-ended [DONE].
        let server = CHAT_SSE.replace(
            "\"system_fingerprint\":\"vllm-0.32.0-451fb28a\"}\n\n",
            "\"system_fingerprint\":\"vllm-0.32.0-451fb28a\"}\r\r",
        );
        assert_ne!(server, CHAT_SSE);
        strip_every_way(server.as_bytes(), want.as_bytes(), Some(FIXTURE_USAGE));
    }

    #[test]
    fn passes_everything_before_the_last_boundary_at_once() {
        let server = CHAT_SSE.as_bytes();
        let want = chat_without_usage();
        let dropped = CHAT_SSE
            .split_inclusive("\n\n")
            .take(9)
            .map(str::len)
            .sum::<usize>();
        for k in 0..=server.len() {
            let mut st = UsageStripper::new();
            let mut out = Vec::new();
            st.feed(&server[..k], &mut out);
            let prefix = &server[..k];
            let boundary = prefix
                .windows(2)
                .rposition(|w| w == b"\n\n")
                .map_or(0, |p| p + 2);
            assert_eq!(st.held_bytes(), k - boundary, "at {k}");
            // What went out is what the client would have had by then.
            let expect_out = if boundary > dropped {
                boundary - USAGE_BLOCK
            } else {
                boundary
            };
            assert_eq!(out, want.as_bytes()[..expect_out].to_vec(), "at {k}");
        }
    }

    #[test]
    fn streams_without_usage_pass_unchanged() {
        strip_every_way(COMPLETION_SSE.as_bytes(), COMPLETION_SSE.as_bytes(), None);
        strip_every_way(
            crlf(COMPLETION_SSE).as_bytes(),
            crlf(COMPLETION_SSE).as_bytes(),
            None,
        );
        let want = chat_without_usage();
        strip_every_way(want.as_bytes(), want.as_bytes(), None);
    }

    /// The fixture with `"usage":null` added to every chunk but the usage one, at `place`.
    fn with_null_usage(s: &str, place: &str) -> String {
        s.split_inclusive("\n\n")
            .map(|b| {
                if !b.starts_with("data: {") || b.contains("\"usage\"") {
                    return b.to_string();
                }
                match place {
                    "first" => b.replacen("data: {", "data: {\"usage\":null,", 1),
                    "last" => b.replacen("}\n\n", ",\"usage\":null}\n\n", 1),
                    _ => b.replacen(",\"choices\"", ",\"usage\":null,\"choices\"", 1),
                }
            })
            .collect()
    }

    #[test]
    fn strips_usage_null_from_every_chunk() {
        let want = chat_without_usage();
        for place in ["first", "last", "middle"] {
            let server = with_null_usage(CHAT_SSE, place);
            assert_eq!(
                server.matches("null").count() - CHAT_SSE.matches("null").count(),
                9
            );
            strip_every_way(server.as_bytes(), want.as_bytes(), Some(FIXTURE_USAGE));
            strip_every_way(
                crlf(&server).as_bytes(),
                crlf(&want).as_bytes(),
                Some(FIXTURE_USAGE),
            );
        }
        let (out, _, st) = strip(
            &[with_null_usage(CHAT_SSE, "last").as_bytes()],
            DEFAULT_HOLD_LIMIT,
        );
        assert_eq!(out, want.as_bytes());
        assert_eq!((st.stripped_events(), st.edited_events()), (1, 9));
        // Python's default separators.
        let (out, _, _) = strip(
            &[
                b"data: {\"id\": \"x\", \"usage\": null, \"choices\": [{\"text\": \"a\"}]}\n\n\
                data: {\"usage\": null, \"id\": \"x\"}\n\n",
            ],
            1000,
        );
        assert_eq!(
            out,
            b"data: {\"id\": \"x\", \"choices\": [{\"text\": \"a\"}]}\n\ndata: {\"id\": \"x\"}\n\n"
        );
        // The only member.
        let (out, _, _) = strip(
            &[b"data: {\"usage\":null}\n\ndata: { \"usage\" : null }\n\n"],
            1000,
        );
        assert_eq!(out, b"data: {}\n\ndata: {  }\n\n");
    }

    #[test]
    fn strips_continuous_usage_stats() {
        // vLLM with continuous_usage_stats: a running usage object on every chunk, then the final one.
        let mut n = 0;
        let server: String = CHAT_SSE
            .split_inclusive("\n\n")
            .map(|b| {
                if !b.starts_with("data: {") || b.contains("\"usage\"") {
                    return b.to_string();
                }
                let u = format!(
                    ",\"usage\":{{\"prompt_tokens\":13,\"total_tokens\":{},\"completion_tokens\":{n}}}}}\n\n",
                    13 + n
                );
                n += 1;
                b.replacen("}\n\n", &u, 1)
            })
            .collect();
        let want = chat_without_usage();
        let mut st = UsageStripper::new();
        let mut out = Vec::new();
        let mut usages = Vec::new();
        for piece in server.as_bytes().chunks(7) {
            usages.extend(st.feed(piece, &mut out));
        }
        st.finish(&mut out);
        assert_eq!(out, want.as_bytes());
        assert_eq!(usages.len(), 10);
        assert_eq!(usages.last(), Some(&FIXTURE_USAGE));
        assert_eq!(st.parser().usage(), Some(FIXTURE_USAGE));
    }

    #[test]
    fn comments_and_other_blocks_pass() {
        let server = CHAT_SSE
            .replacen("data: ", ": hello\n\n", 1)
            .replace("data: [DONE]", ": ping\n\ndata: [DONE]");
        let want = chat_without_usage()
            .replacen("data: ", ": hello\n\n", 1)
            .replace("data: [DONE]", ": ping\n\ndata: [DONE]");
        strip_every_way(server.as_bytes(), want.as_bytes(), Some(FIXTURE_USAGE));
        // event:/id: lines and a comment inside the usage event's block go with it.
        let server = CHAT_SSE.replace("data: {\"id\":\"chatcmpl-8ca5baefa652af96\",\"object\":\"chat.completion.chunk\",\"created\":1795444413,\"model\":\"tweet-summary\",\"choices\":[]", "event: usage\nid: 10\n: note\ndata: {\"id\":\"chatcmpl-8ca5baefa652af96\",\"object\":\"chat.completion.chunk\",\"created\":1795444413,\"model\":\"tweet-summary\",\"choices\":[]");
        strip_every_way(
            server.as_bytes(),
            chat_without_usage().as_bytes(),
            Some(FIXTURE_USAGE),
        );
    }

    #[test]
    fn multi_line_data() {
        // A usage-only event over several data lines is still dropped; a multi-line chunk is never edited.
        let server = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\ndata: \"usage\":null}\n\ndata: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let want = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\ndata: \"usage\":null}\n\ndata: [DONE]\n\n";
        strip_every_way(
            server,
            want,
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
                cached_tokens: None,
            }),
        );
    }

    #[test]
    fn what_is_not_a_usage_event() {
        for event in [
            // choices not empty, or not there, or usage not an object: kept (a null usage member is cut).
            r#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":{},"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[],"x":{"usage":{"prompt_tokens":1}}}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":1}}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2},"choices":[1]}"#,
            r#"{"error":{"message":"boom","type":"InternalServerError","code":500}}"#,
            "[DONE]",
        ] {
            let server = format!("data: {event}\n\n");
            let (out, _, st) = strip(&[server.as_bytes()], 1000);
            assert_eq!(st.stripped_events(), 0, "{event}");
            if st.edited_events() == 0 {
                assert_eq!(out, server.as_bytes(), "{event}");
            }
        }
        let (out, _, _) = strip(&[b"data: {\"choices\":[],\"usage\":null}\n\n"], 1000);
        assert_eq!(out, b"data: {\"choices\":[]}\n\n");
        // Two top-level usage members: left alone rather than guessed at.
        let s = b"data: {\"usage\":null,\"choices\":[1],\"usage\":null}\n\n";
        assert_eq!(strip(&[s], 1000).0, s.to_vec());
    }

    #[test]
    fn oversized_events_pass_unchanged() {
        // With a 100-byte hold limit every chunk event is too long to hold, so nothing is edited or dropped.
        let (out, usage, st) = strip(&CHAT_SSE.as_bytes().chunks(10).collect::<Vec<_>>(), 100);
        assert_eq!(out, CHAT_SSE.as_bytes());
        assert_eq!(st.oversized_events(), 10);
        assert_eq!(st.stripped_events(), 0);
        // Its usage still counts.
        assert_eq!(usage, Some(FIXTURE_USAGE));
        // 240: the 224-byte chunks are held, the 266-, 247- and 246-byte (usage) events pass whole.
        let (out, _, st) = strip(&CHAT_SSE.as_bytes().chunks(3).collect::<Vec<_>>(), 240);
        assert_eq!(out, CHAT_SSE.as_bytes());
        assert_eq!((st.stripped_events(), st.oversized_events()), (0, 3));
        // 250: only the first event is too long; the usage event is dropped.
        let (out, _, st) = strip(&CHAT_SSE.as_bytes().chunks(3).collect::<Vec<_>>(), 250);
        assert_eq!(out, chat_without_usage().as_bytes());
        assert_eq!((st.stripped_events(), st.oversized_events()), (1, 1));
    }

    #[test]
    fn finish_flushes_an_incomplete_event() {
        let mut st = UsageStripper::new();
        let mut out = Vec::new();
        assert_eq!(
            st.feed(
                b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n",
                &mut out
            ),
            None
        );
        assert!(out.is_empty());
        st.finish(&mut out);
        assert_eq!(
            out,
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n"
        );
    }

    #[test]
    fn garbage_never_panics_and_only_removes() {
        let mut rng = Rng(5);
        let alphabet = b"data: {}[]\",:\\\r\n\xef\xbb\xbfchoices usage null 12";
        for _ in 0..3000 {
            let len = rng.below(150);
            let mut s: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            if rng.below(2) == 0 {
                s.extend_from_slice(b"data: {\"choices\":[],\"usage\":{}}\n\n");
            }
            let pieces = rng.split(&s);
            let (out, _, st) = strip(&pieces, 64);
            let (whole, _, _) = strip(&[&s], 64);
            assert!(out.len() <= s.len());
            if st.stripped_events() == 0 && st.edited_events() == 0 {
                assert_eq!(out, s);
            }
            // Splits change nothing unless the hold limit was hit differently.
            if st.oversized_events() == 0 {
                assert_eq!(out, whole);
            }
        }
    }
}
