//! Server-sent events from a streaming response, parsed as the chunks pass: no event is ever buffered.
//!
//! Lines end with `\n`, `\r\n` or `\r` (a CRLF split across chunks is one line end); a leading UTF-8 BOM is
//! skipped; `:` lines are comments; only the `data` field matters (`event`, `id`, `retry` are ignored). An event's
//! data lines are joined with `\n` and the event ends at a blank line, per the WHATWG SSE parsing rules; a final
//! event without its blank line is dropped, as browsers do.
//!
//! Each event's data goes straight into a [`JsonScan`], so memory is fixed whatever an event's size, and the
//! answer is the same for any split of the stream. Per event it reports `[DONE]`, usage (top-level `usage`, or
//! `response.usage` in the Responses API's `response.completed`), and whether it carried generated tokens.

use super::json_stream::{End, JsonScan, Kind, Node, Schema, Sink, Value};
use super::usage::{Usage, UsageSink};

/// What a chunk completed. Events are counted when their blank line arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SseProgress {
    /// Data events completed in this chunk (`[DONE]` included).
    pub events: u32,
    /// This chunk completed the stream's first data event other than `[DONE]`.
    pub first_event: bool,
    /// This chunk completed the stream's first event carrying generated tokens: the moment for
    /// time-to-first-token. Tokens are a non-empty `choices[].text`, `choices[].delta.content`,
    /// `choices[].delta.reasoning_content` / `reasoning`, a non-empty `choices[].delta.tool_calls`, or a
    /// non-empty top-level `delta` string (Responses API `*.delta` events).
    pub first_token: bool,
    /// The last usage reported by an event in this chunk.
    pub usage: Option<Usage>,
    /// `data: [DONE]` arrived in this chunk.
    pub done: bool,
}

/// The single top-level `usage` member of an event, for cutting it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    key_at: u64,
    end: u64,
    /// End of the member before it, if any.
    prev_end: Option<u64>,
    /// Key of the member after it, if any.
    next_key_at: Option<u64>,
    object: bool,
}

#[derive(Debug, Default)]
struct EventSink {
    usage: UsageSink,
    /// Top-level `choices`: `Some(true)` when it is `[]`.
    choices_empty: Option<bool>,
    token: bool,
    top_usage: Option<Member>,
    top_usages: u32,
    last_top_end: Option<u64>,
    want_next_key: bool,
}

impl Sink for EventSink {
    fn open(&mut self, v: &Value) {
        self.usage.open(v);
        if v.depth == 1 && self.want_next_key {
            self.want_next_key = false;
            if let Some(m) = self.top_usage.as_mut() {
                m.next_key_at = v.key_at;
            }
        }
    }

    fn close(&mut self, v: &Value, end: End) {
        self.usage.close(v, end);
        match v.node {
            Node::Choices => self.choices_empty = Some(v.kind == Kind::Array && !end.nonempty),
            Node::TokenText => self.token |= v.kind == Kind::String && end.nonempty,
            Node::ToolCalls => self.token |= v.kind == Kind::Array && end.nonempty,
            _ => {}
        }
        if v.depth == 1 {
            if let (Node::Usage, Some(key_at)) = (v.node, v.key_at) {
                self.top_usages = self.top_usages.saturating_add(1);
                self.top_usage = Some(Member {
                    key_at,
                    end: end.end,
                    prev_end: self.last_top_end,
                    next_key_at: None,
                    object: v.kind == Kind::Object,
                });
                self.want_next_key = true;
            }
            self.last_top_end = Some(end.end);
        }
    }
}

/// What one event said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventFacts {
    /// The data was one valid JSON value.
    pub(crate) json: bool,
    pub(crate) done: bool,
    pub(crate) usage: Option<Usage>,
    pub(crate) token: bool,
    /// A JSON object whose top-level `choices` is `[]` and whose top-level `usage` is an object: the event
    /// `stream_options.include_usage` adds.
    pub(crate) usage_only: bool,
    /// Stream offsets of the bytes that remove the event's one top-level `usage` member (with one adjacent
    /// comma), when the data is a single line of valid JSON and not `usage_only`.
    pub(crate) cut: Option<(u64, u64)>,
}

/// A blank line: the end of a block of lines, which is an event if it had data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) event: Option<EventFacts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Start,
    /// In a field name: how much of "data" it matches so far, or `NOT_DATA`.
    Name(u8),
    /// After `data:`: one space may follow.
    DataStart,
    Data,
    /// A comment, or the value of a field other than `data`.
    Skip,
}

const NOT_DATA: u8 = u8::MAX;
const NOT_DONE: u8 = u8::MAX;
const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// Parses an SSE response stream fed in chunks.
pub struct SseParser {
    /// Bytes consumed so far.
    pos: u64,
    /// Bytes of a leading BOM matched; 3 once past the start of the stream.
    bom: u8,
    line: Line,
    /// The last line ended with `\r`: a `\n` right after it is part of that line end.
    after_cr: bool,
    data_lines: u32,
    /// Stream offset of the first data line's value.
    data_start: u64,
    /// Bytes of the data matching "[DONE]" so far, or `NOT_DONE`.
    done_len: u8,
    json: JsonScan,
    sink: EventSink,
    events: u64,
    payload_events: u64,
    token_events: u64,
    invalid_events: u64,
    done: bool,
    usage: Option<Usage>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        SseParser {
            pos: 0,
            bom: 0,
            line: Line::Start,
            after_cr: false,
            data_lines: 0,
            data_start: 0,
            done_len: 0,
            json: JsonScan::new(Schema::Event),
            sink: EventSink::default(),
            events: 0,
            payload_events: 0,
            token_events: 0,
            invalid_events: 0,
            done: false,
            usage: None,
        }
    }

    /// The next bytes of the stream, in order: what they completed.
    pub fn feed(&mut self, chunk: &[u8]) -> SseProgress {
        let mut progress = SseProgress::default();
        let mut rest = chunk;
        while !rest.is_empty() {
            let (n, _) = self.next_block(rest, &mut progress);
            rest = rest.get(n..).unwrap_or_default();
        }
        progress
    }

    /// The last usage any event reported (later ones supersede earlier ones, as continuous usage stats are
    /// cumulative); `"usage": null` does not erase it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Data events so far, `[DONE]` included.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Events that carried generated tokens.
    pub fn token_events(&self) -> u64 {
        self.token_events
    }

    /// Data events that were neither JSON nor `[DONE]`.
    pub fn invalid_events(&self) -> u64 {
        self.invalid_events
    }

    /// `data: [DONE]` was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Bytes consumed so far.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Consume `chunk` up to and including the next blank line, or all of it: the bytes consumed and, if a
    /// blank line ended, the block. After a block ending in `\r`, a `\n` opening the next call is consumed
    /// (returning no block) as the rest of that line end.
    pub(crate) fn next_block(
        &mut self,
        chunk: &[u8],
        progress: &mut SseProgress,
    ) -> (usize, Option<Block>) {
        let base = self.pos;
        let mut i = 0usize;
        let mut block = None;
        while let Some(&b) = chunk.get(i) {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.bom < 3 {
                if BOM.get(usize::from(self.bom)) == Some(&b) {
                    self.bom += 1;
                    i += 1;
                    continue;
                }
                if self.bom > 0 {
                    // A partial BOM is just the start of a field name that is not "data".
                    self.line = Line::Name(NOT_DATA);
                }
                self.bom = 3;
            }
            let at = base + i as u64;
            let eol = b == b'\n' || b == b'\r';
            if eol {
                self.after_cr = b == b'\r';
                i += 1;
                match self.line {
                    Line::Start => {
                        block = Some(self.dispatch(progress));
                        break;
                    }
                    Line::Name(4) => {
                        // "data" with no colon: a data line with an empty value.
                        self.data_line();
                        self.data_start_at(at);
                    }
                    Line::DataStart => self.data_start_at(at),
                    _ => {}
                }
                self.line = Line::Start;
                continue;
            }
            match self.line {
                Line::Start => {
                    self.line = match b {
                        b':' => Line::Skip,
                        b'd' => Line::Name(1),
                        _ => Line::Name(NOT_DATA),
                    };
                }
                Line::Name(n) => {
                    self.line = if b == b':' {
                        if n == 4 {
                            self.data_line();
                            Line::DataStart
                        } else {
                            Line::Skip
                        }
                    } else if n < 4 && b"data".get(usize::from(n)) == Some(&b) {
                        Line::Name(n + 1)
                    } else {
                        Line::Name(NOT_DATA)
                    };
                }
                Line::DataStart => {
                    self.line = Line::Data;
                    if b == b' ' {
                        self.data_start_at(at + 1);
                    } else {
                        self.data_start_at(at);
                        continue;
                    }
                }
                Line::Data | Line::Skip => {
                    let rest = chunk.get(i..).unwrap_or_default();
                    let run = rest
                        .iter()
                        .position(|&c| c == b'\n' || c == b'\r')
                        .unwrap_or(rest.len());
                    if self.line == Line::Data {
                        self.data(rest.get(..run).unwrap_or_default());
                    }
                    i += run;
                    continue;
                }
            }
            i += 1;
        }
        self.pos = base + i as u64;
        (i, block)
    }

    /// A data line begins (its value starts after the colon and optional space).
    fn data_line(&mut self) {
        self.data_lines = self.data_lines.saturating_add(1);
        if self.data_lines > 1 {
            self.data(b"\n");
        }
    }

    fn data_start_at(&mut self, at: u64) {
        if self.data_lines == 1 {
            self.data_start = at;
        }
    }

    fn data(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        for &b in bytes {
            if self.done_len == NOT_DONE {
                break;
            }
            self.done_len = match b"[DONE]".get(usize::from(self.done_len)) {
                Some(&want) if want == b => self.done_len + 1,
                _ => NOT_DONE,
            };
        }
        self.json.feed(bytes, &mut self.sink);
    }

    fn dispatch(&mut self, progress: &mut SseProgress) -> Block {
        if self.data_lines == 0 {
            return Block { event: None };
        }
        let json = self.json.finish(&mut self.sink);
        let done = self.done_len == 6;
        let sink = std::mem::take(&mut self.sink);
        let data_lines = self.data_lines;
        let data_start = self.data_start;
        self.json = JsonScan::new(Schema::Event);
        self.data_lines = 0;
        self.done_len = 0;

        let usage_only =
            json && sink.choices_empty == Some(true) && sink.top_usage.is_some_and(|m| m.object);
        let cut = match sink.top_usage {
            Some(m) if json && !usage_only && data_lines == 1 && sink.top_usages == 1 => {
                let (from, to) = match (m.prev_end, m.next_key_at) {
                    (Some(prev), _) => (prev, m.end),
                    (None, Some(next)) => (m.key_at, next),
                    (None, None) => (m.key_at, m.end),
                };
                Some((data_start + from, data_start + to))
            }
            _ => None,
        };
        let facts = EventFacts {
            json,
            done,
            usage: if json { sink.usage.last } else { None },
            token: json && sink.token,
            usage_only,
            cut,
        };

        progress.events = progress.events.saturating_add(1);
        self.events += 1;
        if done {
            self.done = true;
            progress.done = true;
        } else {
            if self.payload_events == 0 {
                progress.first_event = true;
            }
            self.payload_events += 1;
            if !json {
                self.invalid_events += 1;
            }
        }
        if facts.token {
            if self.token_events == 0 {
                progress.first_token = true;
            }
            self.token_events += 1;
        }
        if let Some(u) = facts.usage {
            self.usage = Some(u);
            progress.usage = Some(u);
        }
        Block { event: Some(facts) }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::openai::usage::tests::Rng;

    const CHAT_SSE: &[u8] =
        include_bytes!("../../../testdata/vllm-0.32-cpu/chat-stream-with-usage.sse");
    const COMPLETION_SSE: &[u8] =
        include_bytes!("../../../testdata/vllm-0.32-cpu/completion-stream-no-usage.sse");
    const COMPLETION: &[u8] = include_bytes!("../../../testdata/vllm-0.32-cpu/completion.json");

    /// Everything observable after feeding `pieces`: per-chunk progress merged, then the totals.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        events: u64,
        first_event_at: Option<u64>,
        first_token_at: Option<u64>,
        usages: Vec<Usage>,
        done: bool,
        tokens: u64,
        invalid: u64,
        usage: Option<Usage>,
    }

    /// `first_*_at`: the number of event-ending blank lines the stream had up to the chunk that reported it,
    /// which is independent of how the stream is split only when reported at the event's own blank line.
    fn run(pieces: &[&[u8]]) -> Seen {
        let mut p = SseParser::new();
        let mut first_event_at = None;
        let mut first_token_at = None;
        let mut usages = Vec::new();
        for piece in pieces {
            let before = p.events();
            let prog = p.feed(piece);
            assert_eq!(u64::from(prog.events), p.events() - before);
            if prog.first_event {
                assert!(first_event_at.is_none());
                first_event_at = Some(p.events());
            }
            if prog.first_token {
                assert!(first_token_at.is_none());
                first_token_at = Some(p.events());
            }
            usages.extend(prog.usage);
        }
        Seen {
            events: p.events(),
            first_event_at,
            first_token_at,
            usages,
            done: p.done(),
            tokens: p.token_events(),
            invalid: p.invalid_events(),
            usage: p.usage(),
        }
    }

    /// Feeding one byte at a time pins every report to its exact event; other splits must agree.
    fn run_every_way(stream: &[u8], rounds: usize) -> Seen {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let exact = run(&bytes);
        let whole = run(&[stream]);
        assert_eq!(whole.events, exact.events);
        assert_eq!(whole.usage, exact.usage);
        assert_eq!(
            (whole.done, whole.tokens, whole.invalid),
            (exact.done, exact.tokens, exact.invalid)
        );
        for k in 0..=stream.len() {
            let two = run(&[&stream[..k], &stream[k..]]);
            assert_eq!(
                (two.events, two.usage, two.done, two.tokens, two.invalid),
                (
                    exact.events,
                    exact.usage,
                    exact.done,
                    exact.tokens,
                    exact.invalid
                ),
                "split at {k}"
            );
            assert_eq!(two.first_token_at.is_some(), exact.first_token_at.is_some());
        }
        let mut rng = Rng(7 + stream.len() as u64);
        for _ in 0..rounds {
            let pieces = rng.split(stream);
            let r = run(&pieces);
            assert_eq!(
                (r.events, r.usage, r.done, r.tokens),
                (exact.events, exact.usage, exact.done, exact.tokens)
            );
        }
        exact
    }

    fn usage(prompt: u64, completion: u64, cached: Option<u64>) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
        }
    }

    fn crlf(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in s {
            if b == b'\n' {
                out.extend_from_slice(b"\r\n");
            } else {
                out.push(b);
            }
        }
        out
    }

    fn cr(s: &[u8]) -> Vec<u8> {
        s.iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect()
    }

    #[test]
    fn vllm_chat_stream_with_usage() {
        let want = Seen {
            events: 11,
            first_event_at: Some(1),
            // The first chunk is the role preamble with content "": tokens start with the second.
            first_token_at: Some(2),
            usages: vec![usage(13, 8, None)],
            done: true,
            tokens: 8,
            invalid: 0,
            usage: Some(usage(13, 8, None)),
        };
        assert_eq!(run_every_way(CHAT_SSE, 300), want);
        assert_eq!(run_every_way(&crlf(CHAT_SSE), 100), want);
        assert_eq!(run_every_way(&cr(CHAT_SSE), 100), want);
    }

    #[test]
    fn vllm_completion_stream_without_usage() {
        let want = Seen {
            events: 9,
            first_event_at: Some(1),
            first_token_at: Some(1),
            usages: vec![],
            done: true,
            tokens: 8,
            invalid: 0,
            usage: None,
        };
        assert_eq!(run_every_way(COMPLETION_SSE, 300), want);
        assert_eq!(run_every_way(&crlf(COMPLETION_SSE), 100), want);
        assert_eq!(run_every_way(&cr(COMPLETION_SSE), 100), want);
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let s = b"data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let mut p = SseParser::new();
        let mut events = 0;
        for piece in [&s[..34], &s[34..35], &s[35..36], &s[36..37], &s[37..]] {
            events += p.feed(piece).events;
        }
        assert_eq!(events, 2);
        assert!(p.done());
        // Mixed line ends in one stream.
        let s = b"data: 1\r\rdata: 2\n\ndata: 3\r\n\r\ndata: 4\n\r\n";
        assert_eq!(run_every_way(s, 50).events, 4);
    }

    #[test]
    fn comments_fields_and_blank_lines() {
        let s = b": keep-alive\n\n:\n\nevent: message\nid: 7\nretry: 1000\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n\n\n: trailing comment\n";
        let seen = run_every_way(s, 50);
        assert_eq!(seen.events, 1);
        assert_eq!(seen.tokens, 1);
        // A comment line inside an event does not end it; a field named like data but not "data" is ignored.
        let s = b"data: {\"usage\":\ndatum: junk\n: note\ndata  {\ndata:{\"prompt_tokens\":3}}\nDATA: x\n\n";
        let seen = run_every_way(s, 50);
        assert_eq!((seen.events, seen.invalid), (1, 0));
        assert_eq!(seen.usage, Some(usage(3, 0, None)));
    }

    #[test]
    fn data_lines_join_and_spaces() {
        // One optional space after the colon; "data" without a colon is an empty data line.
        for (s, events, invalid, done) in [
            (&b"data:[DONE]\n\n"[..], 1, 0, true),
            (b"data:  [DONE]\n\n", 1, 1, false),
            (b"data: [DONE] \n\n", 1, 1, false),
            (b"data: [DONE]\ndata\n\n", 1, 1, false),
            (b"data\n\n", 1, 1, false),
            (b"data:\n\n", 1, 1, false),
            (b"data: {}\n\n", 1, 0, false),
            (b"data: \n data: {}\n\n", 1, 1, false),
            (b"data: [\ndata: 1,\ndata: 2]\n\n", 1, 0, false),
            (b"event: x\n\n", 0, 0, false),
            (b"id: 1\nretry: 5\n\n\n", 0, 0, false),
        ] {
            let seen = run_every_way(s, 10);
            assert_eq!(
                (seen.events, seen.invalid, seen.done),
                (events, invalid, done),
                "{:?}",
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn bom_is_skipped_once() {
        let s = b"\xef\xbb\xbfdata: [DONE]\n\n";
        assert!(run_every_way(s, 20).done);
        // Not at the start, or partial: part of a field name, so the line is not data.
        let s = b"data: {}\n\n\xef\xbb\xbfdata: [DONE]\n\n";
        assert!(!run_every_way(s, 20).done);
        let s = b"\xef\xbbdata: [DONE]\n\ndata: {}\n\n";
        let seen = run_every_way(s, 20);
        assert_eq!((seen.events, seen.done), (1, false));
    }

    #[test]
    fn unterminated_last_event_is_dropped() {
        let s = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n";
        let seen = run_every_way(s, 20);
        assert_eq!((seen.events, seen.usage), (0, None));
        let mut p = SseParser::new();
        p.feed(s);
        assert_eq!(p.feed(b"\n").usage, Some(usage(1, 2, None)));
    }

    #[test]
    fn usage_shapes_and_nesting() {
        // Continuous usage stats: every chunk has a cumulative usage; the last one wins.
        let s = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n";
        let seen = run_every_way(s, 50);
        assert_eq!(
            seen.usages,
            vec![usage(5, 1, None), usage(5, 2, None), usage(5, 2, Some(4))]
        );
        assert_eq!(seen.usage, Some(usage(5, 2, Some(4))));
        // OpenAI style: "usage": null on every other chunk never erases the real one.
        let s = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n\
                  data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n";
        assert_eq!(run_every_way(s, 50).usage, Some(usage(9, 3, None)));
        // Nested usage keys are not the chunk's usage.
        let s = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"usage\":{\"prompt_tokens\":1}}],\"x\":{\"usage\":{\"prompt_tokens\":2}}}\n\n";
        assert_eq!(run_every_way(s, 50).usage, None);
    }

    #[test]
    fn responses_api_stream() {
        let s = b"event: response.created\n\
data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"output\":[],\"usage\":null}}\n\n\
event: response.output_text.delta\n\
data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n\
event: response.completed\n\
data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi\"}]}],\"usage\":{\"input_tokens\":20,\"input_tokens_details\":{\"cached_tokens\":16},\"output_tokens\":2,\"total_tokens\":22}}}\n\n";
        let seen = run_every_way(s, 100);
        assert_eq!(seen.events, 3);
        assert_eq!(seen.first_token_at, Some(2));
        assert_eq!(seen.tokens, 1);
        assert_eq!(seen.usage, Some(usage(20, 2, Some(16))));
    }

    #[test]
    fn what_counts_as_a_token() {
        for (data, token) in [
            (
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                false,
            ),
            (r#"{"choices":[{"delta":{"content":null}}]}"#, false),
            (r#"{"choices":[{"delta":{}}],"usage":null}"#, false),
            (r#"{"choices":[]}"#, false),
            (
                r#"{"choices":[],"prompt_filter_results":[{"prompt_index":0}]}"#,
                false,
            ),
            (r#"{"choices":[{"text":""}]}"#, false),
            (r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#, false),
            (r#"{"error":{"message":"boom","code":500}}"#, false),
            (r#"{"choices":[{"delta":{"content":" "}}]}"#, true),
            (r#"{"choices":[{"delta":{"content":"\u0000"}}]}"#, true),
            (r#"{"choices":[{"text":"x"}]}"#, true),
            (
                r#"{"choices":[{"index":1,"delta":{}},{"index":0,"delta":{"content":"y"}}]}"#,
                true,
            ),
            (
                r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
                true,
            ),
            (r#"{"choices":[{"delta":{"reasoning":"hmm"}}]}"#, true),
            (
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
                true,
            ),
            (r#"{"type":"response.output_text.delta","delta":"x"}"#, true),
            (r#"{"type":"response.output_text.delta","delta":""}"#, false),
            // Nested too deep or in the wrong place.
            (r#"{"x":{"choices":[{"text":"x"}]}}"#, false),
            (r#"{"choices":[{"message":{"content":"x"}}]}"#, false),
            (r#"{"choices":{"0":{"text":"x"}}}"#, false),
            // Invalid JSON never counts.
            (r#"{"choices":[{"text":"x"}]"#, false),
        ] {
            let s = format!("data: {data}\n\n");
            assert_eq!(
                run_every_way(s.as_bytes(), 5).tokens,
                u64::from(token),
                "{data}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(99);
        let alphabet = b"data: {}[]\",:\\\r\n\xef\xbb\xbf[DONE]usage choices";
        for _ in 0..2000 {
            let len = rng.below(120);
            let s: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let a = run(&rng.split(&s));
            let b = run(&[&s]);
            assert_eq!(
                (a.events, a.usage, a.done, a.tokens, a.invalid),
                (b.events, b.usage, b.done, b.tokens, b.invalid)
            );
        }
        // Not SSE at all.
        let seen = run_every_way(COMPLETION, 20);
        assert_eq!(seen.events, 0);
        let mut p = SseParser::new();
        let progress = p.feed(&[0u8; 10000]);
        assert_eq!(progress, SseProgress::default());
    }

    #[test]
    fn huge_events_use_no_memory() {
        // A 4 MiB data line is scanned as it passes; nothing grows.
        let mut p = SseParser::new();
        p.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"");
        let filler = vec![b'a'; 1 << 16];
        for _ in 0..64 {
            assert_eq!(p.feed(&filler), SseProgress::default());
        }
        let prog = p.feed(b"\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
        assert!(prog.first_token);
        assert_eq!(prog.usage, Some(usage(1, 2, None)));
        assert!(std::mem::size_of::<SseParser>() < 1024);
        // Endless garbage data without a line end: still nothing held.
        let mut p = SseParser::new();
        p.feed(b"data: ");
        for _ in 0..64 {
            p.feed(&filler);
        }
        assert_eq!(p.feed(b"\n\n").events, 1);
        assert_eq!(p.invalid_events(), 1);
    }

    #[test]
    fn blocks_and_cuts() {
        let s = br#"data: {"id":"x","choices":[{"delta":{"content":"a"}}],"usage":null}"#;
        let mut stream = s.to_vec();
        stream.extend_from_slice(b"\n\n");
        let mut p = SseParser::new();
        let mut progress = SseProgress::default();
        let (n, block) = p.next_block(&stream, &mut progress);
        assert_eq!(n, stream.len());
        let facts = block.unwrap().event.unwrap();
        let (a, b) = facts.cut.unwrap();
        assert_eq!(&stream[a as usize..b as usize], br#","usage":null"#);
        assert!(!facts.usage_only);
    }
}
