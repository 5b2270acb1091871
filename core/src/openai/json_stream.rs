//! An incremental, strict JSON scanner for bodies that arrive in chunks and are never held whole.
//!
//! Fed any split of a document, it reports the same values at the same offsets: every piece of state that
//! crosses a chunk boundary (string escapes, UTF-8 sequences, numbers, literals) lives in the struct. Memory is
//! fixed: a 128-bit container stack (so at most [`MAX_DEPTH`] levels, serde_json's own limit), positions for the
//! first [`TRACK`] levels, and a short buffer for object keys. Acceptance matches
//! `serde_json::from_slice::<Value>` except that numbers outside f64's range (`1e400`) are accepted.
//!
//! Only a fixed schema of paths is followed (see [`Node`]); a [`Sink`] hears where those values start and end.

use super::MAX_DEPTH;

/// Levels whose start offsets and schema nodes are remembered; everything the router reads is shallower.
const TRACK: usize = 8;
/// Longest key that can name a tracked node ("prompt_tokens_details" is 21 bytes).
const KEY_CAP: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    True,
    False,
    Null,
}

/// Which paths are followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Schema {
    /// A whole (non-streaming) response: only the top-level `usage`.
    Body,
    /// One SSE chunk: top-level `usage`, `response.usage` (Responses API events), `choices`, `delta`.
    Event,
}

/// A value's place in the schema. Children of `Other` are `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Other,
    Root,
    Usage,
    PromptTokens,
    CompletionTokens,
    InputTokens,
    OutputTokens,
    PromptDetails,
    InputDetails,
    PromptCached,
    InputCached,
    Response,
    Choices,
    Choice,
    Delta,
    /// Generated text: `choices[].text`, `choices[].delta.{content,reasoning_content,reasoning}`, top-level `delta`.
    TokenText,
    ToolCalls,
}

fn child(schema: Schema, parent: Node, key: Option<&[u8]>) -> Node {
    use Node::*;
    match (parent, key) {
        (Root, Some(k)) => match (schema, k) {
            (Schema::Body | Schema::Event, b"usage") => Usage,
            (Schema::Event, b"choices") => Choices,
            (Schema::Event, b"response") => Response,
            (Schema::Event, b"delta") => TokenText,
            _ => Other,
        },
        (Response, Some(b"usage")) => Usage,
        (Usage, Some(k)) => match k {
            b"prompt_tokens" => PromptTokens,
            b"completion_tokens" => CompletionTokens,
            b"input_tokens" => InputTokens,
            b"output_tokens" => OutputTokens,
            b"prompt_tokens_details" => PromptDetails,
            b"input_tokens_details" => InputDetails,
            _ => Other,
        },
        (PromptDetails, Some(b"cached_tokens")) => PromptCached,
        (InputDetails, Some(b"cached_tokens")) => InputCached,
        (Choices, None) => Choice,
        (Choice, Some(b"text")) => TokenText,
        (Choice, Some(b"delta")) => Delta,
        (Delta, Some(b"content" | b"reasoning_content" | b"reasoning")) => TokenText,
        (Delta, Some(b"tool_calls")) => ToolCalls,
        _ => Other,
    }
}

/// Where a value sits and starts. Offsets count bytes from the first byte ever fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Value {
    pub node: Node,
    pub kind: Kind,
    /// Containers around it: 0 for the root value, 1 for a top-level member.
    pub depth: usize,
    pub start: u64,
    /// Offset of its key's opening quote, for object members.
    pub key_at: Option<u64>,
}

const UNTRACKED: Value = Value {
    node: Node::Other,
    kind: Kind::Null,
    depth: 0,
    start: 0,
    key_at: None,
};

/// How a value ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct End {
    /// Offset just past the value.
    pub end: u64,
    /// Containers: has a member. Strings: has a character. Other values: true.
    pub nonempty: bool,
    /// Numbers that are a plain non-negative integer fitting in u64.
    pub int: Option<u64>,
}

/// Hears values as the scanner passes them. Containers deeper than [`TRACK`] are not reported.
pub(crate) trait Sink {
    fn open(&mut self, _v: &Value) {}
    fn close(&mut self, _v: &Value, _end: End) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpInt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Before a value (after `:` or `,` in an array, or at the start).
    Value,
    FirstInArray,
    FirstInObject,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value inside a container.
    After,
    /// The root value is complete: only whitespace may follow.
    End,
    Str,
    Esc,
    Hex,
    /// After a high-surrogate escape: a `\u` low surrogate must follow.
    LowBackslash,
    LowU,
    Num(Num),
    Lit,
    Error,
}

pub(crate) struct JsonScan {
    schema: Schema,
    lex: Lex,
    pos: u64,
    depth: usize,
    /// Bit d set: the container at depth d + 1 is an object.
    kinds: u128,
    frames: [Value; TRACK],
    /// Node and key offset of the value about to start.
    next_node: Node,
    next_key_at: Option<u64>,
    /// The scalar being read.
    cur: Value,
    in_key: bool,
    /// Object key being read: its quote's offset and, when its parent is tracked, its decoded bytes.
    key_at: u64,
    capture: bool,
    key: [u8; KEY_CAP],
    key_len: usize,
    key_long: bool,
    nonempty: bool,
    utf8_need: u8,
    utf8_lo: u8,
    utf8_hi: u8,
    hex: u32,
    hex_n: u8,
    high: Option<u32>,
    int: Option<u64>,
    lit: &'static [u8],
    lit_i: usize,
}

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

impl JsonScan {
    pub(crate) fn new(schema: Schema) -> Self {
        JsonScan {
            schema,
            lex: Lex::Value,
            pos: 0,
            depth: 0,
            kinds: 0,
            frames: [UNTRACKED; TRACK],
            next_node: Node::Root,
            next_key_at: None,
            cur: UNTRACKED,
            in_key: false,
            key_at: 0,
            capture: false,
            key: [0; KEY_CAP],
            key_len: 0,
            key_long: false,
            nonempty: false,
            utf8_need: 0,
            utf8_lo: 0x80,
            utf8_hi: 0xbf,
            hex: 0,
            hex_n: 0,
            high: None,
            int: None,
            lit: b"",
            lit_i: 0,
        }
    }

    /// The input is already known not to be JSON; feeding more changes nothing.
    pub(crate) fn failed(&self) -> bool {
        self.lex == Lex::Error
    }

    /// End of input: whether it was exactly one complete JSON value.
    pub(crate) fn finish(&mut self, sink: &mut impl Sink) -> bool {
        if let Lex::Num(Num::Zero | Num::Int | Num::Frac | Num::ExpInt) = self.lex {
            let at = self.pos;
            self.end_scalar(at, sink);
        }
        self.lex == Lex::End
    }

    fn parent(&self) -> Node {
        match self.depth.checked_sub(1) {
            Some(d) => self.frames.get(d).map_or(Node::Other, |f| f.node),
            None => Node::Other,
        }
    }

    fn in_object(&self) -> bool {
        self.depth >= 1 && (self.kinds >> (self.depth - 1)) & 1 == 1
    }

    pub(crate) fn feed(&mut self, chunk: &[u8], sink: &mut impl Sink) {
        let base = self.pos;
        let mut i = 0usize;
        while let Some(&b) = chunk.get(i) {
            let at = base + i as u64;
            match self.lex {
                Lex::Error => break,
                Lex::Str => {
                    // Fast path: a run of plain ASCII needs no state.
                    if self.utf8_need == 0 {
                        let rest = chunk.get(i..).unwrap_or_default();
                        let run = rest
                            .iter()
                            .position(|&c| c < 0x20 || c == b'"' || c == b'\\' || c >= 0x80)
                            .unwrap_or(rest.len());
                        if run > 0 {
                            self.nonempty = true;
                            self.push_key(rest.get(..run).unwrap_or_default());
                            i += run;
                            continue;
                        }
                    }
                    self.string_byte(b, at, sink);
                }
                Lex::Esc => {
                    let c = match b {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            self.hex = 0;
                            self.hex_n = 0;
                            self.lex = Lex::Hex;
                            i += 1;
                            continue;
                        }
                        _ => {
                            self.lex = Lex::Error;
                            break;
                        }
                    };
                    self.push_key(&[c]);
                    self.lex = Lex::Str;
                }
                Lex::Hex => {
                    let d = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        _ => {
                            self.lex = Lex::Error;
                            break;
                        }
                    };
                    self.hex = (self.hex << 4) | u32::from(d);
                    self.hex_n += 1;
                    if self.hex_n == 4 {
                        self.unicode_escape();
                    }
                }
                Lex::LowBackslash => {
                    self.lex = if b == b'\\' { Lex::LowU } else { Lex::Error };
                }
                Lex::LowU => {
                    if b == b'u' {
                        self.hex = 0;
                        self.hex_n = 0;
                        self.lex = Lex::Hex;
                    } else {
                        self.lex = Lex::Error;
                    }
                }
                Lex::Num(state @ (Num::Int | Num::Frac | Num::ExpInt)) if b.is_ascii_digit() => {
                    // Fast path: the rest of a run of digits.
                    let rest = chunk.get(i..).unwrap_or_default();
                    let run = rest
                        .iter()
                        .position(|c| !c.is_ascii_digit())
                        .unwrap_or(rest.len());
                    if state == Num::Int {
                        for &d in rest.get(..run).unwrap_or_default() {
                            self.int = self
                                .int
                                .and_then(|n| n.checked_mul(10))
                                .and_then(|n| n.checked_add(u64::from(d - b'0')));
                        }
                    }
                    i += run;
                    continue;
                }
                Lex::Num(state) => {
                    if !self.number_byte(state, b) {
                        if matches!(state, Num::Zero | Num::Int | Num::Frac | Num::ExpInt) {
                            // The byte after a number belongs to what follows it: look at it again.
                            self.end_scalar(at, sink);
                            continue;
                        }
                        self.lex = Lex::Error;
                        break;
                    }
                }
                Lex::Lit => {
                    if self.lit.get(self.lit_i) != Some(&b) {
                        self.lex = Lex::Error;
                        break;
                    }
                    self.lit_i += 1;
                    if self.lit_i == self.lit.len() {
                        self.end_scalar(at + 1, sink);
                    }
                }
                _ if is_ws(b) => {}
                Lex::Value => self.begin_value(b, at, sink),
                Lex::FirstInArray => {
                    if b == b']' {
                        self.close_container(at, false, sink);
                    } else {
                        self.begin_value(b, at, sink);
                    }
                }
                Lex::FirstInObject => match b {
                    b'}' => self.close_container(at, false, sink),
                    b'"' => self.begin_key(at),
                    _ => self.lex = Lex::Error,
                },
                Lex::Key => {
                    if b == b'"' {
                        self.begin_key(at);
                    } else {
                        self.lex = Lex::Error;
                    }
                }
                Lex::Colon => {
                    self.lex = if b == b':' { Lex::Value } else { Lex::Error };
                }
                Lex::After => {
                    let object = self.in_object();
                    match b {
                        b',' if object => self.lex = Lex::Key,
                        b',' => {
                            self.next_node = child(self.schema, self.parent(), None);
                            self.next_key_at = None;
                            self.lex = Lex::Value;
                        }
                        b'}' if object => self.close_container(at, true, sink),
                        b']' if !object => self.close_container(at, true, sink),
                        _ => self.lex = Lex::Error,
                    }
                }
                Lex::End => self.lex = Lex::Error,
            }
            i += 1;
        }
        self.pos = base + chunk.len() as u64;
    }

    fn begin_key(&mut self, at: u64) {
        self.in_key = true;
        self.key_at = at;
        self.capture = self.parent() != Node::Other;
        self.key_len = 0;
        self.key_long = false;
        self.utf8_need = 0;
        self.lex = Lex::Str;
    }

    fn begin_value(&mut self, b: u8, at: u64, sink: &mut impl Sink) {
        let kind = match b {
            b'{' => Kind::Object,
            b'[' => Kind::Array,
            b'"' => Kind::String,
            b'-' | b'0'..=b'9' => Kind::Number,
            b't' => Kind::True,
            b'f' => Kind::False,
            b'n' => Kind::Null,
            _ => {
                self.lex = Lex::Error;
                return;
            }
        };
        let mut node = self.next_node;
        if self.depth == 0 && kind != Kind::Object {
            node = Node::Other;
        }
        let v = Value {
            node,
            kind,
            depth: self.depth,
            start: at,
            key_at: self.next_key_at.take(),
        };
        match kind {
            Kind::Object | Kind::Array => {
                if self.depth >= MAX_DEPTH {
                    self.lex = Lex::Error;
                    return;
                }
                sink.open(&v);
                if let Some(f) = self.frames.get_mut(self.depth) {
                    *f = v;
                }
                let object = kind == Kind::Object;
                self.kinds =
                    (self.kinds & !(1u128 << self.depth)) | (u128::from(object) << self.depth);
                self.depth += 1;
                if object {
                    self.lex = Lex::FirstInObject;
                } else {
                    // A value deeper than TRACK has no frame, hence parent Other: right, as it is untracked.
                    self.next_node = child(self.schema, self.parent(), None);
                    self.lex = Lex::FirstInArray;
                }
            }
            Kind::String => {
                sink.open(&v);
                self.cur = v;
                self.in_key = false;
                self.nonempty = false;
                self.utf8_need = 0;
                self.lex = Lex::Str;
            }
            Kind::Number => {
                sink.open(&v);
                self.cur = v;
                if b == b'-' {
                    self.int = None;
                    self.lex = Lex::Num(Num::Minus);
                } else {
                    self.int = Some(u64::from(b - b'0'));
                    self.lex = Lex::Num(if b == b'0' { Num::Zero } else { Num::Int });
                }
            }
            Kind::True | Kind::False | Kind::Null => {
                sink.open(&v);
                self.cur = v;
                self.lit = match kind {
                    Kind::True => b"true",
                    Kind::False => b"false",
                    _ => b"null",
                };
                self.lit_i = 1;
                self.lex = Lex::Lit;
            }
        }
    }

    /// Whether `b` continues the number; `int` tracks a plain non-negative integer that fits in u64.
    fn number_byte(&mut self, state: Num, b: u8) -> bool {
        let next = match (state, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, b'1'..=b'9') => Num::Int,
            (Num::Int, b'0'..=b'9') => {
                self.int = self
                    .int
                    .and_then(|n| n.checked_mul(10))
                    .and_then(|n| n.checked_add(u64::from(b - b'0')));
                Num::Int
            }
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpInt, b'0'..=b'9') => Num::ExpInt,
            _ => return false,
        };
        if next != Num::Int {
            self.int = None;
        }
        self.lex = Lex::Num(next);
        true
    }

    fn string_byte(&mut self, b: u8, at: u64, sink: &mut impl Sink) {
        if self.utf8_need > 0 {
            if b < self.utf8_lo || b > self.utf8_hi {
                self.lex = Lex::Error;
                return;
            }
            self.utf8_need -= 1;
            self.utf8_lo = 0x80;
            self.utf8_hi = 0xbf;
            self.push_key(&[b]);
            return;
        }
        match b {
            b'"' => {
                if self.in_key {
                    self.in_key = false;
                    let parent = self.parent();
                    self.next_node = match self.key.get(..self.key_len) {
                        Some(key) if self.capture && !self.key_long => {
                            child(self.schema, parent, Some(key))
                        }
                        _ => Node::Other,
                    };
                    self.next_key_at = Some(self.key_at);
                    self.lex = Lex::Colon;
                } else {
                    self.end_scalar(at + 1, sink);
                }
            }
            b'\\' => {
                self.nonempty = true;
                self.lex = Lex::Esc;
            }
            0x00..=0x1f => self.lex = Lex::Error,
            0x20..=0x7f => {
                self.nonempty = true;
                self.push_key(&[b]);
            }
            _ => {
                // Lead byte: how many continuation bytes follow and the range of the first (RFC 3629).
                let (need, lo, hi) = match b {
                    0xc2..=0xdf => (1, 0x80, 0xbf),
                    0xe0 => (2, 0xa0, 0xbf),
                    0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
                    0xed => (2, 0x80, 0x9f),
                    0xf0 => (3, 0x90, 0xbf),
                    0xf1..=0xf3 => (3, 0x80, 0xbf),
                    0xf4 => (3, 0x80, 0x8f),
                    _ => {
                        self.lex = Lex::Error;
                        return;
                    }
                };
                self.utf8_need = need;
                self.utf8_lo = lo;
                self.utf8_hi = hi;
                self.nonempty = true;
                self.push_key(&[b]);
            }
        }
    }

    /// Four hex digits read: a character, half a surrogate pair, or an error (lone surrogates, as serde_json).
    fn unicode_escape(&mut self) {
        let unit = self.hex;
        let code = match (self.high.take(), unit) {
            (Some(high), 0xdc00..=0xdfff) => 0x10000 + ((high - 0xd800) << 10) + (unit - 0xdc00),
            (Some(_), _) | (None, 0xdc00..=0xdfff) => {
                self.lex = Lex::Error;
                return;
            }
            (None, 0xd800..=0xdbff) => {
                self.high = Some(unit);
                self.lex = Lex::LowBackslash;
                return;
            }
            (None, _) => unit,
        };
        if self.in_key && self.capture {
            let mut buf = [0u8; 4];
            match char::from_u32(code) {
                Some(c) => self.push_key(c.encode_utf8(&mut buf).as_bytes()),
                None => self.key_long = true,
            }
        }
        self.lex = Lex::Str;
    }

    #[inline]
    fn push_key(&mut self, bytes: &[u8]) {
        if !(self.in_key && self.capture) {
            return;
        }
        match self.key.get_mut(self.key_len..self.key_len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.key_len += bytes.len();
            }
            None => self.key_long = true,
        }
    }

    fn end_scalar(&mut self, end: u64, sink: &mut impl Sink) {
        let v = self.cur;
        let info = match v.kind {
            Kind::String => End {
                end,
                nonempty: self.nonempty,
                int: None,
            },
            Kind::Number => End {
                end,
                nonempty: true,
                int: self.int,
            },
            _ => End {
                end,
                nonempty: true,
                int: None,
            },
        };
        sink.close(&v, info);
        self.after_value();
    }

    fn close_container(&mut self, at: u64, nonempty: bool, sink: &mut impl Sink) {
        self.depth = self.depth.saturating_sub(1);
        if let Some(v) = self.frames.get(self.depth).copied() {
            sink.close(
                &v,
                End {
                    end: at + 1,
                    nonempty,
                    int: None,
                },
            );
        }
        self.after_value();
    }

    fn after_value(&mut self) {
        self.lex = if self.depth == 0 {
            Lex::End
        } else {
            Lex::After
        };
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::openai::usage::tests::Rng;

    #[derive(Default)]
    struct Log(Vec<String>);
    impl Sink for Log {
        fn open(&mut self, v: &Value) {
            if v.node != Node::Other {
                self.0
                    .push(format!("open {:?} {:?} @{}", v.node, v.kind, v.start));
            }
        }
        fn close(&mut self, v: &Value, e: End) {
            if v.node != Node::Other {
                self.0.push(format!(
                    "close {:?} d{} key@{:?} {}..{} {} {:?}",
                    v.node, v.depth, v.key_at, v.start, e.end, e.nonempty, e.int
                ));
            }
        }
    }

    fn run(schema: Schema, pieces: &[&[u8]]) -> (bool, Vec<String>) {
        let mut scan = JsonScan::new(schema);
        let mut log = Log::default();
        for p in pieces {
            scan.feed(p, &mut log);
        }
        (scan.finish(&mut log), log.0)
    }

    /// Every split into two pieces gives the same report as the whole.
    fn same_at_every_split(schema: Schema, doc: &[u8]) -> (bool, Vec<String>) {
        let whole = run(schema, &[doc]);
        for k in 0..=doc.len() {
            assert_eq!(run(schema, &[&doc[..k], &doc[k..]]), whole, "split at {k}");
        }
        let bytes: Vec<&[u8]> = doc.chunks(1).collect();
        assert_eq!(run(schema, &bytes), whole);
        whole
    }

    #[test]
    fn reports_tracked_paths_with_offsets() {
        let doc = br#"{"x":[1,{"usage":2}],"usage":{"prompt_tokens":12,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        let (ok, log) = same_at_every_split(Schema::Body, doc);
        assert!(ok);
        assert_eq!(
            log,
            vec![
                "open Root Object @0",
                "open Usage Object @29",
                "open PromptTokens Number @46",
                "close PromptTokens d2 key@Some(30) 46..48 true Some(12)",
                "open PromptDetails Object @73",
                "open PromptCached Number @90",
                "close PromptCached d3 key@Some(74) 90..91 true Some(3)",
                "close PromptDetails d2 key@Some(49) 73..92 true None",
                "close Usage d1 key@Some(21) 29..93 true None",
                "close Root d0 key@None 0..94 true None",
            ]
        );
    }

    #[test]
    fn escaped_keys_are_decoded() {
        let doc = br#"{"\u0075sage":{"prompt\u005ftokens":5},"u\u00e9":1,"\ud83d\ude00":[]}"#;
        let (ok, log) = same_at_every_split(Schema::Body, doc);
        assert!(ok);
        assert!(log
            .iter()
            .any(|l| l.starts_with("close PromptTokens") && l.ends_with("Some(5)")));
    }

    #[test]
    fn integers_only_when_plain_and_in_range() {
        for (num, int) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("123456789012345678901234567890", None),
            ("-1", None),
            ("-0", None),
            ("1.0", None),
            ("1e3", None),
            ("1E+2", None),
            ("2.5e-3", None),
        ] {
            let doc = format!(r#"{{"usage":{{"prompt_tokens":{num}}}}}"#);
            let (ok, log) = same_at_every_split(Schema::Body, doc.as_bytes());
            assert!(ok, "{num}");
            let line = log
                .iter()
                .find(|l| l.starts_with("close PromptTokens"))
                .unwrap();
            assert!(line.ends_with(&format!("{int:?}")), "{num}: {line}");
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for bad in [
            &b""[..],
            b" ",
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1,}",
            b"[1,]",
            b"{\"a\" 1}",
            b"{'a':1}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":.5}",
            b"{\"a\":-}",
            b"{\"a\":1e}",
            b"{\"a\":tru}",
            b"{\"a\":nul}",
            b"{\"a\":True}",
            b"{} {}",
            b"{}x",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":\"\\udc00\"}",
            b"{\"a\":\"\\ud800\\u0041\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\xc0\xaf\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xf4\x90\x80\x80\"}",
            b"{\"a\":\"\xe2\x82\"}",
            b"\xef\xbb\xbf{}",
            b"{\"a\":1]",
            b"[1}",
            b"}",
        ] {
            assert!(serde_json::from_slice::<serde_json::Value>(bad).is_err());
            let (ok, _) = same_at_every_split(Schema::Body, bad);
            assert!(!ok, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn accepts_scalars_and_arrays_at_the_root_without_tracking() {
        for good in [
            &b"0"[..],
            b" 12 ",
            b"-1.5e3",
            b"true",
            b"null",
            b"\"s\"",
            b"[]",
            b"[{\"usage\":1}]",
        ] {
            let (ok, log) = same_at_every_split(Schema::Body, good);
            assert!(ok, "{:?}", String::from_utf8_lossy(good));
            assert!(log.is_empty(), "{log:?}");
        }
    }

    #[test]
    fn depth_limit_matches_serde_json() {
        let ok_doc = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(serde_json::from_str::<serde_json::Value>(&ok_doc).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&too_deep).is_err());
        assert!(run(Schema::Body, &[ok_doc.as_bytes()]).0);
        assert!(!run(Schema::Body, &[too_deep.as_bytes()]).0);
        // Deep but untracked nesting inside a tracked object keeps working.
        let deep_obj = format!(
            "{{\"a\":{}1{},\"usage\":{{\"prompt_tokens\":4}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        let (ok, log) = run(Schema::Body, &[deep_obj.as_bytes()]);
        assert!(ok);
        assert!(log
            .iter()
            .any(|l| l.starts_with("close PromptTokens") && l.ends_with("Some(4)")));
    }

    fn gen(rng: &mut Rng, depth: usize, out: &mut Vec<u8>) {
        const ATOMS: &[&str] = &[
            "0",
            "-0",
            "12",
            "-3.25",
            "1e5",
            "2E-3",
            "0.5e+2",
            "true",
            "false",
            "null",
            r#""""#,
            r#""usage""#,
            r#""a\"b\\c\/\n\u00e9\ud83d\ude00""#,
            "\"\u{e9}\u{1F600}\"",
        ];
        const KEYS: &[&str] = &[
            "usage",
            "prompt_tokens",
            "choices",
            "delta",
            "content",
            "text",
            "x",
            "",
            "us\\u0061ge",
            "\u{e9}",
        ];
        let ws = |rng: &mut Rng, out: &mut Vec<u8>| {
            if rng.below(4) == 0 {
                out.extend_from_slice([" ", "\n", "\t", "\r\n "][rng.below(4)].as_bytes());
            }
        };
        ws(rng, out);
        match if depth > 3 { 0 } else { rng.below(3) } {
            0 => out.extend_from_slice(ATOMS[rng.below(ATOMS.len())].as_bytes()),
            1 => {
                out.push(b'[');
                for k in 0..rng.below(4) {
                    if k > 0 {
                        out.push(b',');
                    }
                    gen(rng, depth + 1, out);
                }
                out.push(b']');
            }
            _ => {
                out.push(b'{');
                for k in 0..rng.below(4) {
                    if k > 0 {
                        out.push(b',');
                    }
                    ws(rng, out);
                    out.push(b'"');
                    out.extend_from_slice(KEYS[rng.below(KEYS.len())].as_bytes());
                    out.push(b'"');
                    ws(rng, out);
                    out.push(b':');
                    gen(rng, depth + 1, out);
                }
                out.push(b'}');
            }
        }
        ws(rng, out);
    }

    #[test]
    fn differential_against_serde_json() {
        let mut rng = Rng(0x5eed);
        let mut valid = 0;
        for round in 0..20_000 {
            let mut doc = Vec::new();
            gen(&mut rng, 0, &mut doc);
            // Half the documents get one byte changed, inserted or removed.
            if round % 2 == 1 && !doc.is_empty() {
                let at = rng.below(doc.len());
                let junk = b"{}[]\",:\\ \x00\x1f\x7f\x80\xc3\xff0e-.tnu";
                match rng.below(3) {
                    0 => doc[at] = junk[rng.below(junk.len())],
                    1 => doc.insert(at, junk[rng.below(junk.len())]),
                    _ => {
                        doc.remove(at);
                    }
                }
            }
            let want = serde_json::from_slice::<serde_json::Value>(&doc).is_ok();
            let pieces = rng.split(&doc);
            let (got, _) = run(Schema::Event, &pieces);
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&doc));
            valid += usize::from(want);
        }
        assert!(valid > 11_000, "{valid}");
    }

    #[test]
    fn long_keys_never_match() {
        let doc = br#"{"usage_with_a_very_long_name_indeed":{"prompt_tokens":1},"usage":null}"#;
        let (ok, log) = same_at_every_split(Schema::Body, doc);
        assert!(ok);
        assert!(!log.iter().any(|l| l.contains("PromptTokens")));
    }
}
