//! One linear pass over a request body: strict JSON validation plus the top-level fields the router reads.
//!
//! No DOM, no recursion, no allocation unless `model`/`user` contain escapes. Acceptance matches
//! `serde_json::from_slice::<serde_json::Value>` (RFC 8259 plus its choices below), with one exception:
//! numbers outside f64's range (`1e400`) are valid JSON and accepted here, where serde_json refuses them.
//! - Lone UTF-16 surrogates in `\u` escapes are rejected, as serde_json does for strings (Python would accept).
//! - Nesting deeper than [`MAX_DEPTH`] containers is rejected, serde_json's own limit.
//! - A duplicate top-level key: the last one wins (Python's json, hence vLLM); earlier ones are ignored.

use std::borrow::Cow;
use std::ops::Range;

/// Most containers open at once; the 128th nested one is refused, exactly as serde_json's recursion limit does.
pub const MAX_DEPTH: usize = 127;

/// The top-level fields the router needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields<'a> {
    /// Decoded top-level `"model"` string (borrowed unless it had escapes).
    pub model: Cow<'a, str>,
    /// Byte range of that value in the body, including its quotes.
    pub model_span: Range<usize>,
    /// Top-level `"stream"` is literally `true`.
    pub stream: bool,
    /// Top-level `"user"` when it is a string.
    pub user: Option<Cow<'a, str>>,
    /// Byte range of the top-level `"prompt"`, `"messages"` or `"input"` value (the last one seen),
    /// as raw JSON text: what the prefix-cache scorer hashes.
    pub prompt_span: Option<Range<usize>>,
    /// Where to ask a streaming server for usage, if the client did not.
    pub usage: UsageSpans,
}

/// What a streaming request says about usage reporting, and where.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageSpans {
    /// Top-level `"stream"` is literally `true`.
    pub stream: bool,
    /// The top-level `"stream_options"` value (the last one seen).
    pub stream_options: Option<ValueAt>,
    /// Its `"include_usage"` member, when `stream_options` is an object.
    pub include_usage: Option<ValueAt>,
    /// Where the last top-level member's value ends: where a new member would go.
    pub last_member_end: usize,
}

/// What kind of JSON value, and where it is (including quotes or brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueAt {
    pub kind: JsonKind,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Object,
    Array,
    String,
    Number,
    True,
    False,
    Null,
}

impl UsageSpans {
    /// For a streaming request whose client did not ask for usage, the edit asking for it (replace
    /// `body[range]` with the bytes), so the server reports the tokens; None otherwise (see
    /// `openai::request_usage_rewrite` for the cases).
    pub fn splice(&self) -> Option<(Range<usize>, &'static [u8])> {
        if !self.stream {
            return None;
        }
        match &self.stream_options {
            None => Some((
                self.last_member_end..self.last_member_end,
                br#","stream_options":{"include_usage":true}"#,
            )),
            Some(o) if o.kind == JsonKind::Null => {
                Some((o.span.clone(), br#"{"include_usage":true}"#))
            }
            Some(o) if o.kind == JsonKind::Object => match &self.include_usage {
                Some(i) if matches!(i.kind, JsonKind::False | JsonKind::Null) => {
                    Some((i.span.clone(), b"true"))
                }
                // Absent: vLLM's default is true, the client gets its usage already.
                _ => None,
            },
            Some(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    NotJson { offset: usize, reason: &'static str },
    NotAnObject,
    MissingModel,
    ModelNotString,
}

impl BodyError {
    /// Human text for the 400 reply.
    pub fn message(&self) -> String {
        match self {
            BodyError::NotJson { offset, reason } => {
                format!("request body is not valid JSON at byte {offset}: {reason}")
            }
            BodyError::NotAnObject => "request body must be a JSON object".to_string(),
            BodyError::MissingModel => "request body must have a \"model\" field".to_string(),
            BodyError::ModelNotString => "\"model\" must be a string".to_string(),
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for BodyError {}

const EOF: &str = "unexpected end of input";
const UNTERMINATED: &str = "unterminated string";

#[inline]
fn not_json(offset: usize, reason: &'static str) -> BodyError {
    BodyError::NotJson { offset, reason }
}

/// A top-level key the router reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    Model,
    Stream,
    User,
    Prompt,
    StreamOptions,
    /// `include_usage` inside the top-level `stream_options` object.
    IncludeUsage,
}

/// A string value's location: contents (no quotes) and whether it has escapes to decode.
struct StrAt {
    start: usize,
    end: usize,
    escaped: bool,
}

enum ModelSeen {
    Missing,
    NotString,
    Str(StrAt),
}

/// Validate the whole body as strict JSON in one pass and extract the top-level `model`, `stream` and `user`.
pub fn scan_request(body: &[u8]) -> Result<RequestFields<'_>, BodyError> {
    let scan = scan(body)?;
    let model_at = match scan.model {
        ModelSeen::Missing => return Err(BodyError::MissingModel),
        ModelSeen::NotString => return Err(BodyError::ModelNotString),
        ModelSeen::Str(at) => at,
    };
    let model = decode(body, &model_at)?;
    let user = match scan.user {
        Some(at) => Some(decode(body, &at)?),
        None => None,
    };
    Ok(RequestFields {
        model,
        model_span: model_at.start - 1..model_at.end + 1,
        stream: scan.usage.stream,
        user,
        prompt_span: scan.prompt,
        usage: scan.usage,
    })
}

/// The usage spans of any JSON object body (no `model` needed).
pub(crate) fn scan_usage(body: &[u8]) -> Result<UsageSpans, BodyError> {
    Ok(scan(body)?.usage)
}

/// Everything one pass over a body learns.
struct Scan {
    model: ModelSeen,
    user: Option<StrAt>,
    prompt: Option<Range<usize>>,
    usage: UsageSpans,
}

fn scan(body: &[u8]) -> Result<Scan, BodyError> {
    if body.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(not_json(0, "byte order mark is not allowed"));
    }
    // Bit d set: the container at depth d + 1 is an object. MAX_DEPTH < 128 so it fits.
    let mut kinds: u128 = 0;
    let mut depth = 0usize;
    let mut top_is_object = false;
    let mut pending = Field::Other;
    let mut model = ModelSeen::Missing;
    let mut stream = false;
    let mut user: Option<StrAt> = None;
    let mut prompt: Option<Range<usize>> = None;
    // Start of a prompt value that is a container still open.
    let mut prompt_start: Option<usize> = None;
    let mut options: Option<ValueAt> = None;
    let mut include: Option<ValueAt> = None;
    // Start of the stream_options object while it is open (its keys are at depth 2).
    let mut options_start: Option<usize> = None;
    let mut last_member_end = 0usize;

    let mut i = skip_ws(body, 0);
    let mut need_value = true;
    loop {
        if need_value {
            let b = *body.get(i).ok_or(not_json(body.len(), EOF))?;
            // Which top-level field this value belongs to; only depth-1 keys ever set `pending`.
            let field = std::mem::replace(&mut pending, Field::Other);
            if depth == 0 {
                top_is_object = b == b'{';
            }
            match b {
                b'{' | b'[' => {
                    if depth >= MAX_DEPTH {
                        return Err(not_json(i, "nesting too deep"));
                    }
                    let is_object = b == b'{';
                    match field {
                        Field::Model => model = ModelSeen::NotString,
                        Field::Stream => stream = false,
                        Field::User => user = None,
                        Field::Prompt => prompt_start = Some(i),
                        Field::StreamOptions => {
                            // A repeated stream_options replaces the earlier one whole.
                            include = None;
                            if is_object {
                                options_start = Some(i);
                            } else {
                                options = Some(ValueAt {
                                    kind: JsonKind::Array,
                                    span: i..i,
                                });
                            }
                        }
                        Field::IncludeUsage => {
                            include = Some(ValueAt {
                                kind: if is_object {
                                    JsonKind::Object
                                } else {
                                    JsonKind::Array
                                },
                                span: i..i,
                            });
                        }
                        Field::Other => {}
                    }
                    kinds = (kinds & !(1u128 << depth)) | (u128::from(is_object) << depth);
                    depth += 1;
                    i = skip_ws(body, i + 1);
                    let close = if is_object { b'}' } else { b']' };
                    if body.get(i) == Some(&close) {
                        depth -= 1;
                        i += 1;
                        need_value = false;
                        if depth == 1 {
                            if let Some(start) = prompt_start.take() {
                                prompt = Some(start..i);
                            }
                            if let Some(start) = options_start.take() {
                                options = Some(ValueAt {
                                    kind: JsonKind::Object,
                                    span: start..i,
                                });
                            }
                            last_member_end = i;
                        }
                    } else if is_object {
                        i = scan_key(body, i, depth, options_start.is_some(), &mut pending)?;
                    }
                    continue;
                }
                b'"' => {
                    let (end, escaped) = scan_string(body, i)?;
                    let at = StrAt {
                        start: i + 1,
                        end: end - 1,
                        escaped,
                    };
                    match field {
                        Field::Model => model = ModelSeen::Str(at),
                        Field::Stream => stream = false,
                        Field::User => user = Some(at),
                        Field::Prompt => prompt = Some(i..end),
                        Field::StreamOptions => {
                            include = None;
                            options = Some(ValueAt {
                                kind: JsonKind::String,
                                span: i..end,
                            });
                        }
                        Field::IncludeUsage => {
                            include = Some(ValueAt {
                                kind: JsonKind::String,
                                span: i..end,
                            })
                        }
                        Field::Other => {}
                    }
                    i = end;
                }
                _ => {
                    let is_true = b == b't';
                    let start = i;
                    i = match b {
                        b't' => literal(body, i, b"true")?,
                        b'f' => literal(body, i, b"false")?,
                        b'n' => literal(body, i, b"null")?,
                        b'-' | b'0'..=b'9' => scan_number(body, i)?,
                        _ => return Err(not_json(i, "expected a value")),
                    };
                    let kind = match b {
                        b't' => JsonKind::True,
                        b'f' => JsonKind::False,
                        b'n' => JsonKind::Null,
                        _ => JsonKind::Number,
                    };
                    match field {
                        Field::Model => model = ModelSeen::NotString,
                        Field::Stream => stream = is_true,
                        Field::User => user = None,
                        Field::Prompt => prompt = Some(start..i),
                        Field::StreamOptions => {
                            include = None;
                            options = Some(ValueAt {
                                kind,
                                span: start..i,
                            });
                        }
                        Field::IncludeUsage => {
                            include = Some(ValueAt {
                                kind,
                                span: start..i,
                            })
                        }
                        Field::Other => {}
                    }
                }
            }
            need_value = false;
            if depth == 1 {
                last_member_end = i;
            }
        } else {
            i = skip_ws(body, i);
            if depth == 0 {
                if i < body.len() {
                    return Err(not_json(i, "trailing characters"));
                }
                break;
            }
            let in_object = (kinds >> (depth - 1)) & 1 == 1;
            match body.get(i) {
                Some(b',') => {
                    i = skip_ws(body, i + 1);
                    if in_object {
                        i = scan_key(body, i, depth, options_start.is_some(), &mut pending)?;
                    }
                    need_value = true;
                }
                Some(b'}') if in_object => {
                    depth -= 1;
                    i += 1;
                    if depth == 1 {
                        if let Some(start) = prompt_start.take() {
                            prompt = Some(start..i);
                        }
                        if let Some(start) = options_start.take() {
                            options = Some(ValueAt {
                                kind: JsonKind::Object,
                                span: start..i,
                            });
                        }
                        last_member_end = i;
                    }
                }
                Some(b']') if !in_object => {
                    depth -= 1;
                    i += 1;
                    if depth == 1 {
                        if let Some(start) = prompt_start.take() {
                            prompt = Some(start..i);
                        }
                        last_member_end = i;
                    }
                }
                None => return Err(not_json(body.len(), EOF)),
                Some(_) if in_object => return Err(not_json(i, "expected ',' or '}'")),
                Some(_) => return Err(not_json(i, "expected ',' or ']'")),
            }
        }
    }

    if !top_is_object {
        return Err(BodyError::NotAnObject);
    }
    Ok(Scan {
        model,
        user,
        prompt,
        usage: UsageSpans {
            stream,
            stream_options: options,
            include_usage: include,
            last_member_end,
        },
    })
}

#[inline]
fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = body.get(i) {
        i += 1;
    }
    i
}

#[inline]
fn literal(body: &[u8], i: usize, word: &'static [u8]) -> Result<usize, BodyError> {
    let end = i + word.len();
    if body.get(i..end) == Some(word) {
        Ok(end)
    } else if body.len() < end && body.get(i..).is_some_and(|rest| word.starts_with(rest)) {
        Err(not_json(body.len(), EOF))
    } else {
        Err(not_json(i, "invalid literal"))
    }
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; returns the index after it. What follows is the
/// caller's business (`01` fails there as a missing comma).
#[inline]
fn scan_number(body: &[u8], start: usize) -> Result<usize, BodyError> {
    let mut i = start;
    if body.get(i) == Some(&b'-') {
        i += 1;
    }
    match body.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(body, i + 1),
        None => return Err(not_json(body.len(), EOF)),
        Some(_) => return Err(not_json(i, "invalid number")),
    }
    if body.get(i) == Some(&b'.') {
        i = one_or_more_digits(body, i + 1)?;
    }
    if let Some(b'e' | b'E') = body.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = body.get(i) {
            i += 1;
        }
        i = one_or_more_digits(body, i)?;
    }
    Ok(i)
}

#[inline]
fn digits(body: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = body.get(i) {
        i += 1;
    }
    i
}

#[inline]
fn one_or_more_digits(body: &[u8], i: usize) -> Result<usize, BodyError> {
    match body.get(i) {
        Some(b'0'..=b'9') => Ok(digits(body, i + 1)),
        None => Err(not_json(body.len(), EOF)),
        Some(_) => Err(not_json(i, "invalid number")),
    }
}

/// An object key at `i` (whitespace already skipped), then `:`; returns the index of the value after it.
/// Top-level keys (`depth == 1`) are compared after decoding escapes.
#[inline]
fn scan_key(
    body: &[u8],
    i: usize,
    depth: usize,
    in_options: bool,
    pending: &mut Field,
) -> Result<usize, BodyError> {
    match body.get(i) {
        Some(b'"') => {}
        None => return Err(not_json(body.len(), EOF)),
        Some(_) => return Err(not_json(i, "expected a string key")),
    }
    let (end, escaped) = scan_string(body, i)?;
    if depth == 1 || (depth == 2 && in_options) {
        let raw = body.get(i + 1..end - 1).unwrap_or_default();
        let field = if escaped {
            field_of_escaped(raw)
        } else {
            field_of(raw)
        };
        *pending = match (depth, field) {
            (1, Field::IncludeUsage) => Field::Other,
            (1, f) => f,
            (_, Field::IncludeUsage) => Field::IncludeUsage,
            _ => Field::Other,
        };
    }
    let i = skip_ws(body, end);
    match body.get(i) {
        Some(b':') => Ok(skip_ws(body, i + 1)),
        None => Err(not_json(body.len(), EOF)),
        Some(_) => Err(not_json(i, "expected ':'")),
    }
}

#[inline]
fn field_of(key: &[u8]) -> Field {
    match key {
        b"model" => Field::Model,
        b"stream" => Field::Stream,
        b"user" => Field::User,
        b"prompt" | b"messages" | b"input" => Field::Prompt,
        b"stream_options" => Field::StreamOptions,
        b"include_usage" => Field::IncludeUsage,
        _ => Field::Other,
    }
}

/// Decode a short escaped key into a stack buffer; anything longer than "stream_options" is no
/// field of ours.
fn field_of_escaped(raw: &[u8]) -> Field {
    let mut buf = [0u8; 16];
    let mut len = 0usize;
    let fits = unescape(raw, |piece| {
        let Some(dst) = buf.get_mut(len..len + piece.len()) else {
            return false;
        };
        dst.copy_from_slice(piece);
        len += piece.len();
        true
    });
    if fits {
        field_of(buf.get(..len).unwrap_or_default())
    } else {
        Field::Other
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Nonzero iff some byte of `v` is zero.
#[inline(always)]
fn has_zero(v: u64) -> u64 {
    v.wrapping_sub(LO) & !v & HI
}

/// The string starting with the quote at `start`: validates escapes, control characters and UTF-8.
/// Returns the index after the closing quote and whether it had escapes.
#[inline]
fn scan_string(body: &[u8], start: usize) -> Result<(usize, bool), BodyError> {
    let mut i = start + 1;
    let mut run_start = i;
    // High bits seen in the current run (over-approximated: only decides whether to validate UTF-8).
    let mut high = 0u64;
    let mut escaped = false;
    loop {
        // With wasm SIMD (built with `+simd128`), skip 16 plain bytes at a time first.
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            i = simd::skip_plain(body, i, &mut high);
        }
        // Find the next `"`, `\` or control byte, 8 bytes at a time; the lowest flagged byte is exact.
        loop {
            if let Some(chunk) = body.get(i..i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let v = u64::from_le_bytes(word);
                high |= v;
                let stop = has_zero(v ^ (LO * u64::from(b'"')))
                    | has_zero(v ^ (LO * u64::from(b'\\')))
                    | (v.wrapping_sub(LO * 0x20) & !v & HI);
                if stop != 0 {
                    i += (stop.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            } else {
                let b = *body.get(i).ok_or(not_json(body.len(), UNTERMINATED))?;
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                high |= u64::from(b) << 56;
                i += 1;
            }
        }
        match body.get(i) {
            Some(&b) if b == b'"' || b == b'\\' => {
                if high & HI != 0 {
                    check_utf8(body, run_start, i)?;
                }
                if b == b'"' {
                    return Ok((i + 1, escaped));
                }
                escaped = true;
                i = escape(body, i)
                    .map_err(|(offset, reason)| not_json(offset, reason))?
                    .1;
                run_start = i;
                high = 0;
            }
            _ => return Err(not_json(i, "control character in string")),
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::HI;
    use core::arch::wasm32::{i8x16_bitmask, i8x16_eq, u64x2, u8x16_lt, u8x16_splat, v128_or};

    /// From `i`, skip 16 bytes at a time while none is `"`, `\` or a control byte. Returns the
    /// index of the first such byte, or where fewer than 16 bytes remain (the caller's 8-byte
    /// loop finishes). Sets `high`'s top bits when a skipped byte had its high bit set (UTF-8 to
    /// validate), like the 8-byte loop's over-approximation.
    #[inline(always)]
    pub(super) fn skip_plain(body: &[u8], mut i: usize, high: &mut u64) -> usize {
        let quote = u8x16_splat(b'"');
        let backslash = u8x16_splat(b'\\');
        let space = u8x16_splat(0x20);
        let mut seen = u8x16_splat(0);
        while let Some(chunk) = body.get(i..i + 16) {
            let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
            lo.copy_from_slice(chunk.get(..8).unwrap_or_default());
            hi.copy_from_slice(chunk.get(8..).unwrap_or_default());
            let v = u64x2(u64::from_le_bytes(lo), u64::from_le_bytes(hi));
            seen = v128_or(seen, v);
            let stop = v128_or(
                v128_or(i8x16_eq(v, quote), i8x16_eq(v, backslash)),
                u8x16_lt(v, space),
            );
            let mask = i8x16_bitmask(stop);
            if mask != 0 {
                i += mask.trailing_zeros() as usize;
                break;
            }
            i += 16;
        }
        if i8x16_bitmask(seen) != 0 {
            *high |= HI;
        }
        i
    }
}

/// Runs never split a UTF-8 sequence: they end at an ASCII `"` or `\`.
#[inline]
fn check_utf8(body: &[u8], from: usize, to: usize) -> Result<(), BodyError> {
    match std::str::from_utf8(body.get(from..to).unwrap_or_default()) {
        Ok(_) => Ok(()),
        Err(e) => Err(not_json(from + e.valid_up_to(), "invalid UTF-8 in string")),
    }
}

/// The escape whose backslash is at `i`: its char and the index after it, or (offset, reason).
fn escape(bytes: &[u8], i: usize) -> Result<(char, usize), (usize, &'static str)> {
    let c = match bytes.get(i + 1) {
        None => return Err((bytes.len(), UNTERMINATED)),
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => return unicode_escape(bytes, i),
        Some(_) => return Err((i + 1, "invalid escape")),
    };
    Ok((c, i + 2))
}

const LONE: &str = "lone surrogate in \\u escape";

fn unicode_escape(bytes: &[u8], i: usize) -> Result<(char, usize), (usize, &'static str)> {
    let unit = hex4(bytes, i + 2)?;
    let (code, end) = match unit {
        0xdc00..=0xdfff => return Err((i, LONE)),
        0xd800..=0xdbff => {
            match (bytes.get(i + 6), bytes.get(i + 7)) {
                (Some(b'\\'), Some(b'u')) => {}
                (None, _) | (Some(b'\\'), None) => return Err((bytes.len(), UNTERMINATED)),
                _ => return Err((i, LONE)),
            }
            let low = hex4(bytes, i + 8)?;
            if !(0xdc00..=0xdfff).contains(&low) {
                return Err((i, LONE));
            }
            (0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00), i + 12)
        }
        _ => (unit, i + 6),
    };
    char::from_u32(code)
        .map(|c| (c, end))
        .ok_or((i, "invalid \\u escape"))
}

fn hex4(bytes: &[u8], at: usize) -> Result<u32, (usize, &'static str)> {
    let mut n = 0u32;
    for k in at..at + 4 {
        let d = match bytes.get(k) {
            None => return Err((bytes.len(), UNTERMINATED)),
            Some(&b) => match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err((k, "invalid \\u escape")),
            },
        };
        n = (n << 4) | u32::from(d);
    }
    Ok(n)
}

/// Feed the decoded bytes of validated string contents to `sink`, in pieces; stops early when `sink` says so.
/// Returns false if stopped or if `raw` was not valid after all.
fn unescape(raw: &[u8], mut sink: impl FnMut(&[u8]) -> bool) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let rest = raw.get(i..).unwrap_or_default();
        let run = rest.iter().position(|&b| b == b'\\').unwrap_or(rest.len());
        if run > 0 {
            if !sink(rest.get(..run).unwrap_or_default()) {
                return false;
            }
            i += run;
            continue;
        }
        let Ok((c, next)) = escape(raw, i) else {
            return false;
        };
        let mut utf8 = [0u8; 4];
        if !sink(c.encode_utf8(&mut utf8).as_bytes()) {
            return false;
        }
        i = next;
    }
    true
}

/// The string value at `at`, borrowed when it has no escapes.
fn decode<'a>(body: &'a [u8], at: &StrAt) -> Result<Cow<'a, str>, BodyError> {
    let broken = || not_json(at.start, "invalid string");
    let raw = body.get(at.start..at.end).ok_or_else(broken)?;
    if !at.escaped {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| broken());
    }
    let mut out = Vec::with_capacity(raw.len());
    if !unescape(raw, |piece| {
        out.extend_from_slice(piece);
        true
    }) {
        return Err(broken());
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| broken())
}

#[cfg(test)]
mod prompt_span_tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn span(body: &str) -> Option<&str> {
        let f = scan_request(body.as_bytes()).unwrap();
        f.prompt_span.map(|r| &body[r])
    }

    #[test]
    fn prompt_messages_and_input_spans_are_the_raw_values() {
        assert_eq!(
            span(r#"{"model":"m","prompt":"hi \" x"}"#),
            Some(r#""hi \" x""#)
        );
        assert_eq!(
            span(r#"{"prompt":["a","b"],"model":"m"}"#),
            Some(r#"["a","b"]"#)
        );
        let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi","model":"x"}],"n":1}"#;
        assert_eq!(
            span(chat),
            Some(r#"[{"role":"user","content":"hi","model":"x"}]"#)
        );
        assert_eq!(span(r#"{"model":"m","input":[]}"#), Some("[]"));
        assert_eq!(span(r#"{"model":"m","input":{}}"#), Some("{}"));
        assert_eq!(span(r#"{"model":"m","prompt":null}"#), Some("null"));
        assert_eq!(span(r#"{"model":"m","x":{"prompt":"nested"}}"#), None);
        assert_eq!(span(r#"{"model":"m"}"#), None);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::Value;

    fn ok(body: &str) -> RequestFields<'_> {
        match scan_request(body.as_bytes()) {
            Ok(f) => f,
            Err(e) => panic!("{body:?}: {e}"),
        }
    }

    fn err(body: &[u8]) -> BodyError {
        match scan_request(body) {
            Ok(f) => panic!("{:?} accepted: {f:?}", String::from_utf8_lossy(body)),
            Err(e) => e,
        }
    }

    fn is_not_json(body: &[u8]) -> bool {
        matches!(scan_request(body), Err(BodyError::NotJson { .. }))
    }

    fn span_text<'a>(body: &'a str, f: &RequestFields<'_>) -> &'a str {
        &body[f.model_span.clone()]
    }

    const CHAT: &str = r#"{"model":"lora-request","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise this tweet: \"I love Envoy\" \ud83d\ude00\n"}],"temperature":0.7,"top_p":1,"max_tokens":128,"stream":true,"stream_options":{"include_usage":true},"user":"user-42"}"#;
    const COMPLETION: &str = r#"{"prompt":["SELECT * FROM","SELECT name"],"max_tokens":7,"temperature":0,"logprobs":null,"echo":false,"stop":["\n"],"logit_bias":{"50256":-100},"model":"sql-lora"}"#;

    #[test]
    fn chat_request() {
        let f = ok(CHAT);
        assert_eq!(f.model, "lora-request");
        assert!(matches!(f.model, Cow::Borrowed(_)));
        assert_eq!(span_text(CHAT, &f), "\"lora-request\"");
        assert!(f.stream);
        assert_eq!(f.user.as_deref(), Some("user-42"));
    }

    #[test]
    fn completion_request_with_prompt_array() {
        let f = ok(COMPLETION);
        assert_eq!(f.model, "sql-lora");
        assert_eq!(span_text(COMPLETION, &f), "\"sql-lora\"");
        assert!(!f.stream);
        assert_eq!(f.user, None);
    }

    #[test]
    fn nested_model_keys_are_ignored() {
        let body = r#"{"messages":[{"role":"user","model":"inner","content":{"model":"deeper"}}],"model":"outer","tools":[{"function":{"model":"x","stream":true,"user":"u"}}]}"#;
        let f = ok(body);
        assert_eq!(f.model, "outer");
        assert_eq!(span_text(body, &f), "\"outer\"");
        assert!(!f.stream);
        assert_eq!(f.user, None);
        assert_eq!(
            err(br#"{"messages":[{"model":"inner"}]}"#),
            BodyError::MissingModel
        );
        assert_eq!(
            err(br#"{"a":{"model":"x"},"b":["model","x"]}"#),
            BodyError::MissingModel
        );
        // A string value "model" is not a key.
        assert_eq!(
            err(br#"{"x":"model","y":["model"]}"#),
            BodyError::MissingModel
        );
    }

    #[test]
    fn model_after_large_fields() {
        let content = "lorem ipsum é 日本 \\n \\\" ".repeat(20_000);
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{content}"}}],"numbers":[{}],"model":"tweet-summary"}}"#,
            (0..5000)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let f = ok(&body);
        assert_eq!(f.model, "tweet-summary");
        assert_eq!(span_text(&body, &f), "\"tweet-summary\"");
        assert_eq!(f.model_span.end, body.len() - 1);
    }

    #[test]
    fn unicode_and_escapes_in_model() {
        let f = ok(r#"{"model":"модель-日本-😀"}"#);
        assert_eq!(f.model, "модель-日本-😀");
        assert!(matches!(f.model, Cow::Borrowed(_)));

        let body = r#"{"model":"llama\u00e9\t\"q\"\\\/\ud83d\ude00\u0041"}"#;
        let f = ok(body);
        assert_eq!(f.model, "llamaé\t\"q\"\\/😀A");
        assert!(matches!(f.model, Cow::Owned(_)));
        assert_eq!(span_text(body, &f), &body[9..body.len() - 1]);

        let f = ok(r#"{"model":"\uD83D\uDE00\u00E9"}"#);
        assert_eq!(f.model, "😀é");
        assert_eq!(ok(r#"{"model":""}"#).model, "");
    }

    #[test]
    fn escaped_key_names() {
        let body = r#"{"mod\u0065l":"a","\u0073tream":true,"\u0075\u0073\u0065\u0072":"\u0062ob"}"#;
        let f = ok(body);
        assert_eq!(f.model, "a");
        assert_eq!(span_text(body, &f), "\"a\"");
        assert!(f.stream);
        assert_eq!(f.user.as_deref(), Some("bob"));
        assert!(matches!(f.user, Some(Cow::Owned(_))));
        // Near misses stay other keys.
        for key in [
            r#"model\u0000"#,
            r#"Model"#,
            r#"model "#,
            r#"\u006dodels"#,
            r#"mode"#,
            r#"m\/odel"#,
        ] {
            let body = format!(r#"{{"{key}":"x"}}"#);
            assert_eq!(err(body.as_bytes()), BodyError::MissingModel, "{body}");
        }
        assert_eq!(ok(r#"{"\u006D\u006F\u0064\u0065\u006C":"z"}"#).model, "z");
    }

    #[test]
    fn huge_numbers_are_valid_json() {
        let body = r#"{"a":1e400,"b":-1E+400,"c":123456789012345678901234567890,"d":-0.0e-0,"e":1e-400,"model":"m","f":[0,-0,0.5,10E5]}"#;
        let f = ok(body);
        assert_eq!(f.model, "m");
        let out = crate::openai::rewrite_model(body.as_bytes(), f.model_span, "n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            body.replace("\"m\"", "\"n\"")
        );
    }

    #[test]
    fn duplicate_model_last_wins() {
        let body = r#"{"model":"first","x":1,"model":"second"}"#;
        let f = ok(body);
        assert_eq!(f.model, "second");
        assert_eq!(
            f.model_span,
            body.rfind("\"second\"").unwrap()..body.len() - 1
        );
        assert_eq!(
            err(br#"{"model":"a","model":null}"#),
            BodyError::ModelNotString
        );
        assert_eq!(ok(r#"{"model":1,"model":"b"}"#).model, "b");
        assert_eq!(ok(r#"{"model":{"model":"x"},"model":"c"}"#).model, "c");
        assert!(!ok(r#"{"model":"m","stream":true,"stream":false}"#).stream);
        assert!(ok(r#"{"model":"m","stream":false,"stream":true}"#).stream);
        assert_eq!(ok(r#"{"model":"m","user":"a","user":1}"#).user, None);
        assert_eq!(
            ok(r#"{"model":"m","user":[],"user":"b"}"#).user.as_deref(),
            Some("b")
        );
    }

    #[test]
    fn stream_only_when_literally_true() {
        for (v, want) in [
            ("true", true),
            ("false", false),
            ("\"true\"", false),
            ("1", false),
            ("null", false),
            ("[true]", false),
            ("{}", false),
        ] {
            let body = format!(r#"{{"model":"m","stream":{v}}}"#);
            assert_eq!(ok(&body).stream, want, "{body}");
        }
    }

    #[test]
    fn whitespace_everywhere() {
        let body = " \t\r\n{ \n\"model\"\t:\r\n\"m\" \n, \"stream\" : true ,\"a\" : [ 1 , { } , [ ] , \"x\" ] , \"b\":{ \"c\" : null } } \n\t\r ";
        let f = ok(body);
        assert_eq!(f.model, "m");
        assert_eq!(span_text(body, &f), "\"m\"");
        assert!(f.stream);
        // Only the four JSON whitespace bytes.
        for ws in ["\u{b}", "\u{c}", "\u{a0}", "\u{feff}"] {
            let body = format!("{{{ws}\"model\":\"m\"}}");
            assert!(is_not_json(body.as_bytes()), "{ws:?}");
        }
    }

    #[test]
    fn every_body_error() {
        assert!(matches!(err(b""), BodyError::NotJson { offset: 0, .. }));
        assert!(matches!(err(b"   "), BodyError::NotJson { offset: 3, .. }));
        for body in [
            "[]",
            "[{\"model\":\"m\"}]",
            "\"model\"",
            "1",
            "null",
            "true",
            " false ",
        ] {
            assert_eq!(err(body.as_bytes()), BodyError::NotAnObject, "{body}");
        }
        assert_eq!(err(b"{}"), BodyError::MissingModel);
        assert_eq!(err(b"{\"models\":\"m\"}"), BodyError::MissingModel);
        for v in [
            "1",
            "null",
            "true",
            "false",
            "{}",
            "[\"m\"]",
            "{\"name\":\"m\"}",
            "-2.5e3",
        ] {
            let body = format!(r#"{{"model":{v}}}"#);
            assert_eq!(err(body.as_bytes()), BodyError::ModelNotString, "{body}");
        }
        // Invalid JSON wins over a missing model.
        assert!(is_not_json(b"{\"a\":1,}"));
        assert!(is_not_json(b"[1,]"));
    }

    #[test]
    fn messages_and_offsets() {
        let e = err(br#"{"model":"abc"#);
        assert_eq!(
            e,
            BodyError::NotJson {
                offset: 13,
                reason: "unterminated string"
            }
        );
        assert_eq!(
            e.message(),
            "request body is not valid JSON at byte 13: unterminated string"
        );
        assert_eq!(e.to_string(), e.message());
        assert_eq!(
            err(br#"{"model":"m"} x"#),
            BodyError::NotJson {
                offset: 14,
                reason: "trailing characters"
            }
        );
        assert_eq!(
            err(br#"{"model" "m"}"#),
            BodyError::NotJson {
                offset: 9,
                reason: "expected ':'"
            }
        );
        assert_eq!(
            err(br#"{"a":1 "b":2}"#),
            BodyError::NotJson {
                offset: 7,
                reason: "expected ',' or '}'"
            }
        );
        assert_eq!(
            err(b"[1 2]"),
            BodyError::NotJson {
                offset: 3,
                reason: "expected ',' or ']'"
            }
        );
        assert_eq!(
            err(b"{\"a\":\"x\x01\"}"),
            BodyError::NotJson {
                offset: 7,
                reason: "control character in string"
            }
        );
        assert_eq!(
            err(b"{\"a\":\"\\q\"}"),
            BodyError::NotJson {
                offset: 7,
                reason: "invalid escape"
            }
        );
        assert_eq!(
            err(b"{\"a\":\"\xc3(\"}"),
            BodyError::NotJson {
                offset: 6,
                reason: "invalid UTF-8 in string"
            }
        );
        assert_eq!(
            err(b"{\"a\":tru}"),
            BodyError::NotJson {
                offset: 5,
                reason: "invalid literal"
            }
        );
        assert_eq!(
            err(b"{\"a\":01}"),
            BodyError::NotJson {
                offset: 6,
                reason: "expected ',' or '}'"
            }
        );
        assert_eq!(
            err(b"{\"a\":-}"),
            BodyError::NotJson {
                offset: 6,
                reason: "invalid number"
            }
        );
        assert_eq!(
            err(b"{1:2}"),
            BodyError::NotJson {
                offset: 1,
                reason: "expected a string key"
            }
        );
        assert_eq!(
            err(b"\xef\xbb\xbf{\"model\":\"m\"}"),
            BodyError::NotJson {
                offset: 0,
                reason: "byte order mark is not allowed"
            }
        );
        assert_eq!(
            BodyError::NotAnObject.message(),
            "request body must be a JSON object"
        );
        assert_eq!(
            BodyError::MissingModel.message(),
            "request body must have a \"model\" field"
        );
        assert_eq!(
            BodyError::ModelNotString.message(),
            "\"model\" must be a string"
        );
    }

    const MALFORMED: &[&[u8]] = &[
        b"{",
        b"}",
        b"{{}}",
        b"{\"model\"}",
        b"{\"model\":}",
        b"{\"model\":\"m\",}",
        b"{,\"model\":\"m\"}",
        b"{\"model\":\"m\"}}",
        b"{\"model\":\"m\"}{}",
        b"{\"model\":\"m\"]",
        b"{\"a\":[}",
        b"{\"a\":[1,,2]}",
        b"{'model':'m'}",
        b"{model:\"m\"}",
        b"{\"model\":m}",
        b"{\"model\":\"m\"\"x\":1}",
        b"{\"a\"::1}",
        b"{\"a\":+1}",
        b"{\"a\":.5}",
        b"{\"a\":1.}",
        b"{\"a\":1.e5}",
        b"{\"a\":1e}",
        b"{\"a\":1e+}",
        b"{\"a\":--1}",
        b"{\"a\":0x10}",
        b"{\"a\":00}",
        b"{\"a\":-01}",
        b"{\"a\":1_000}",
        b"{\"a\":NaN}",
        b"{\"a\":Infinity}",
        b"{\"a\":-Infinity}",
        b"{\"a\":True}",
        b"{\"a\":nul}",
        b"{\"a\":nulll}",
        b"{\"a\":truefalse}",
        b"{\"a\":\"\\x41\"}",
        b"{\"a\":\"\\u12\"}",
        b"{\"a\":\"\\u12G4\"}",
        b"{\"a\":\"\\U0041\"}",
        b"{\"a\":\"\\\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\\udc00\"}",
        b"{\"a\":\"\\ud800\\u0041\"}",
        b"{\"a\":\"\\ud800\\ud800\"}",
        b"{\"a\":\"\\ud800\\n\"}",
        b"{\"a\":\"\\udbff x\"}",
        b"{\"\\ud800\":1}",
        b"{\"a\":\"\t\"}",
        b"{\"a\":\"\n\"}",
        b"{\"a\":\"\x00\"}",
        b"{\"a\":\"\x1f\"}",
        b"{\"a\":\"\x80\"}",
        b"{\"a\":\"\xff\"}",
        b"{\"a\":\"\xc0\xaf\"}",
        b"{\"a\":\"\xed\xa0\x80\"}",
        b"{\"a\":\"\xf4\x90\x80\x80\"}",
        b"{\"a\":\"\xe6\x97\"}",
        b"{\"a\":\xc3\xa9}",
        b"{\"model\":\"m\"}\x00",
        b"\x00{\"model\":\"m\"}",
        b"{\"model\":\"m\"}//",
        b"/*c*/{\"model\":\"m\"}",
        b"{\"a\":[1,2,]}",
        b"{\"a\":[,]}",
        b"{\"a\":{\"b\"}}",
        b"{\"a\":{\"b\":1,}}",
        b"{\"a\" 1}",
        b"{\"model\":\"m\",\"a\":\x0c1}",
        b"{\"a\":\"unterminated}",
        b"{\"a\":[\"x\"",
        b"[",
        b"]",
        b"[[]",
        b"[]]",
        b"\"",
        b"-",
        b"tru",
        b"nul",
        b"{\"a\":\"\xe2\x80\"}",
        b"{\"a\":\"\xf0\x9f\x98\"}",
        b"{\"a\":\"ok\"\xc3\xa9}",
        b"{\"\xff\":1}",
    ];

    #[test]
    fn malformed_json_is_rejected() {
        for body in MALFORMED {
            assert!(
                is_not_json(body),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
            assert!(
                serde_json::from_slice::<Value>(body).is_err(),
                "serde accepts {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn valid_bodies() -> Vec<String> {
        let mut v: Vec<String> = vec![
            CHAT.to_string(),
            COMPLETION.to_string(),
            r#"{"model":"m","input":["a",[1,[2,[3,{"x":[]}]]]],"encoding_format":"float"}"#.to_string(),
            r#"{"m\u006fdel":"\u00e9\ud83d\ude00","k":"\\\"\/\b\f\n\r\t","n":-12.5E-3,"t":true,"f":false,"z":null}"#.to_string(),
            " {\"model\" : \"日本語 \u{1F600}\" , \"a\" : [ ] , \"b\" : { } }".to_string(),
            r#"{"model":"x","big":123456789012345678901234567890,"tiny":1e-400}"#.to_string(),
        ];
        v.push(format!(
            r#"{{"input":"{}","model":"long"}}"#,
            "abcdefgh\u{e9}\\n".repeat(50)
        ));
        v
    }

    #[test]
    fn every_truncation_is_an_error() {
        for body in valid_bodies() {
            let bytes = body.trim_end().as_bytes();
            assert!(scan_request(bytes).is_ok());
            for cut in 0..bytes.len() {
                let prefix = &bytes[..cut];
                assert!(is_not_json(prefix), "prefix {cut} of {body:?} accepted");
            }
        }
    }

    #[test]
    fn nesting_limit_matches_serde_json() {
        for n in [
            1,
            2,
            100,
            MAX_DEPTH - 1,
            MAX_DEPTH,
            MAX_DEPTH + 1,
            MAX_DEPTH + 2,
            1000,
        ] {
            let arrays = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let objects = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
            let mixed = format!(
                "{{\"model\":\"m\",\"x\":{}{}}}",
                "[{\"a\":".repeat(n / 2),
                "}]".repeat(n / 2)
            );
            for body in [arrays, objects, mixed] {
                let serde_ok = serde_json::from_slice::<Value>(body.as_bytes()).is_ok();
                assert_eq!(!is_not_json(body.as_bytes()), serde_ok, "depth {n}");
            }
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            err(deep.as_bytes()),
            BodyError::NotJson {
                offset: MAX_DEPTH,
                reason: "nesting too deep"
            }
        );
        // Unclosed deep nesting must not overflow anything either.
        assert!(is_not_json("[".repeat(1 << 16).as_bytes()));
    }

    /// Small deterministic PRNG for the differential corpus.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const KEYS: &[&str] = &[
        "model",
        "stream",
        "user",
        "messages",
        "content",
        "mod\\u0065l",
        "\\u0073tream",
        "us\\u0065r",
        "x",
        "\\u00e9",
        "",
        "model ",
    ];
    const STRINGS: &[&str] = &[
        "",
        "m",
        "sql-lora",
        "a\\\"b",
        "\\\\",
        "\\/",
        "\\n\\t",
        "é日😀",
        "\\u00e9",
        "\\ud83d\\ude00",
        "\\uDBFF\\uDFFF",
        "long text with spaces and punctuation!?",
    ];
    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "7",
        "-12",
        "1.5",
        "1e10",
        "-12.5E-3",
        "1E+2",
        "0.000",
        "123456789012345678901234567890",
        "1e-400",
    ];

    fn gen_ws(rng: &mut Rng, out: &mut String) {
        if rng.below(4) == 0 {
            out.push_str([" ", "\n", "\t", "\r\n ", "  "][rng.below(5)]);
        }
    }

    fn gen_value(rng: &mut Rng, depth: usize, out: &mut String) {
        let choice = if depth > 4 {
            rng.below(4)
        } else {
            rng.below(6)
        };
        match choice {
            0 => {
                out.push('"');
                out.push_str(rng.pick(STRINGS));
                out.push('"');
            }
            1 => out.push_str(rng.pick(NUMBERS)),
            2 => out.push_str(rng.pick(&["true", "false", "null"])),
            3 => {
                out.push('"');
                out.push_str(rng.pick(STRINGS));
                out.push_str(rng.pick(STRINGS));
                out.push('"');
            }
            4 => {
                out.push('[');
                let n = rng.below(4);
                for k in 0..n {
                    if k > 0 {
                        out.push(',');
                    }
                    gen_ws(rng, out);
                    gen_value(rng, depth + 1, out);
                    gen_ws(rng, out);
                }
                out.push(']');
            }
            _ => gen_object(rng, depth, out),
        }
    }

    fn gen_object(rng: &mut Rng, depth: usize, out: &mut String) {
        out.push('{');
        let n = rng.below(6);
        for k in 0..n {
            if k > 0 {
                out.push(',');
            }
            gen_ws(rng, out);
            out.push('"');
            out.push_str(rng.pick(KEYS));
            out.push('"');
            gen_ws(rng, out);
            out.push(':');
            gen_ws(rng, out);
            gen_value(rng, depth + 1, out);
            gen_ws(rng, out);
        }
        out.push('}');
    }

    /// `scan_request` accepts exactly what serde_json accepts as an object, and reads the same fields.
    fn check_against_serde(body: &[u8]) {
        let ours = scan_request(body);
        let theirs = serde_json::from_slice::<Value>(body);
        let show = || String::from_utf8_lossy(body).into_owned();
        let obj = match theirs {
            Err(e) if e.to_string().contains("number out of range") => {
                // The documented difference (numbers beyond f64); serde stops there, so nothing to compare.
                return;
            }
            Err(_) => {
                assert!(
                    matches!(ours, Err(BodyError::NotJson { .. })),
                    "serde rejects, we gave {ours:?}: {}",
                    show()
                );
                return;
            }
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                assert_eq!(ours, Err(BodyError::NotAnObject), "{}", show());
                return;
            }
        };
        match obj.get("model") {
            None => assert_eq!(ours, Err(BodyError::MissingModel), "{}", show()),
            Some(Value::String(model)) => {
                let f = ours.unwrap_or_else(|e| panic!("{e}: {}", show()));
                assert_eq!(f.model, model.as_str(), "{}", show());
                let literal: String = serde_json::from_slice(&body[f.model_span.clone()]).unwrap();
                assert_eq!(&literal, model);
                assert_eq!(
                    f.stream,
                    obj.get("stream") == Some(&Value::Bool(true)),
                    "{}",
                    show()
                );
                assert_eq!(
                    f.user.as_deref(),
                    obj.get("user").and_then(Value::as_str),
                    "{}",
                    show()
                );
            }
            Some(_) => assert_eq!(ours, Err(BodyError::ModelNotString), "{}", show()),
        }
    }

    const MUTATIONS: &[u8] = b"{}[],:\"\\01-.eE+tfnua \n\x00\x1f\x7f\x80\xc3\xa9\xed\xff";

    #[test]
    fn differential_against_serde_json() {
        let mut corpus: Vec<Vec<u8>> = valid_bodies().into_iter().map(String::into_bytes).collect();
        corpus.extend(MALFORMED.iter().map(|b| b.to_vec()));
        for extra in [
            "{\"model\":1e400}",
            "[1e400]",
            "{\"model\":\"m\",\"x\":-1e999}",
            "\u{feff}{}",
        ] {
            corpus.push(extra.as_bytes().to_vec());
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let mut doc = String::new();
            gen_ws(&mut rng, &mut doc);
            if rng.below(8) == 0 {
                gen_value(&mut rng, 0, &mut doc);
            } else {
                gen_object(&mut rng, 0, &mut doc);
            }
            gen_ws(&mut rng, &mut doc);
            corpus.push(doc.into_bytes());
        }
        let mut checked = 0usize;
        for body in &corpus {
            check_against_serde(body);
            checked += 1;
            if body.is_empty() {
                continue;
            }
            for _ in 0..24 {
                let mut m = body.clone();
                let at = rng.below(m.len());
                let byte = MUTATIONS[rng.below(MUTATIONS.len())];
                match rng.below(3) {
                    0 => m[at] = byte,
                    1 => m.insert(at, byte),
                    _ => {
                        m.remove(at);
                    }
                }
                check_against_serde(&m);
                checked += 1;
            }
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn every_byte_at_every_position_against_serde_json() {
        let body =
            r#"{"model":"é\u00e9x","a":[1.5e-3,true,null,{}],"s":"\ud83d\ude00\n","user":"u"}"#;
        for at in 0..body.len() {
            for byte in 0..=255u8 {
                let mut m = body.as_bytes().to_vec();
                m[at] = byte;
                check_against_serde(&m);
            }
        }
    }

    /// The 8-byte skip must find a special byte at any alignment and run length.
    #[test]
    fn string_runs_at_every_alignment() {
        let specials: &[&[u8]] = &[
            b"\\n",
            b"\\u00e9",
            b"\\ud83d\\ude00",
            b"\x01",
            b"\x1f",
            b"\t",
            b"\xc3\xa9",
            b"\xc3",
            b"\xff",
            b"\xf0\x9f\x98\x80",
            b"\xed\xa0\x80",
            b"\\x",
            b"\x7f",
            b" ",
        ];
        for pad in 0..8 {
            for len in 0..24 {
                for special in specials {
                    let mut m = br#"{"model":"#.to_vec();
                    m.extend(std::iter::repeat_n(b' ', pad));
                    m.push(b'"');
                    m.extend(std::iter::repeat_n(b'a', len));
                    m.extend_from_slice(special);
                    m.extend(std::iter::repeat_n(b'b', 24 - len));
                    m.extend_from_slice(b"\"}");
                    check_against_serde(&m);
                    // And cut inside the string.
                    check_against_serde(&m[..m.len() - 3]);
                }
            }
        }
    }

    /// Shaped like a benchmark (multi-MB body, model last) but not timed: timing belongs to benchmarks.
    #[test]
    fn large_body_bench_shape() {
        let mut body = String::from(r#"{"messages":["#);
        let turn = r#"{"role":"user","content":"The quick brown fox jumps over the lazy dog. Ünïcödé 日本語 😀 and escapes \" \\ \n \u00e9 here."},"#;
        while body.len() < 4 << 20 {
            body.push_str(turn);
        }
        body.push_str(r#"{"role":"assistant","content":"ok"}],"max_tokens":16,"stream":true,"model":"lora-request"}"#);
        let bytes = body.as_bytes();
        let f = scan_request(bytes).unwrap();
        assert_eq!(f.model, "lora-request");
        assert!(f.stream);
        assert_eq!(f.model_span.end, bytes.len() - 1);
        let prefix =
            crate::openai::model_prefix_replacement(bytes, f.model_span.clone(), "sql-lora");
        assert_eq!(prefix.len(), f.model_span.start + "\"sql-lora\"".len());
        // A flipped byte deep inside the big string is still found.
        let mut broken = bytes.to_vec();
        let mid = broken.len() / 2;
        let q = mid + broken[mid..].iter().position(|&b| b == b'z').unwrap();
        broken[q] = 0x01;
        assert_eq!(
            scan_request(&broken),
            Err(BodyError::NotJson {
                offset: q,
                reason: "control character in string"
            })
        );
    }
}
