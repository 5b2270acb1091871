//! Byte-exact substitution of the `model` value: everything but the value's bytes is the client's.

use std::ops::Range;

/// Append `s` as a JSON string literal (with quotes), escaping `"` `\` and control chars; non-ASCII as raw UTF-8.
pub fn encode_json_string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(run..i).unwrap_or_default());
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        run = i + 1;
    }
    out.extend_from_slice(bytes.get(run..).unwrap_or_default());
    out.push(b'"');
}

/// Whether `span` delimits a string literal in `body` (quotes included), so a bad span never corrupts a body.
fn is_string_span(body: &[u8], span: &Range<usize>) -> bool {
    span.end >= span.start.saturating_add(2)
        && span.end <= body.len()
        && body.get(span.start) == Some(&b'"')
        && body.get(span.end - 1) == Some(&b'"')
}

/// The replacement for `body[..span.end]`: `body[..span.start]` followed by `new_model` encoded as a JSON string.
/// The host replaces the first `span.end` bytes of Envoy's buffered body with this (Envoy's buffer API can only
/// replace a prefix), so only the bytes up to the model value are copied.
/// A span that is not a string literal inside `body` yields the prefix unchanged (replacing it is a no-op).
pub fn model_prefix_replacement(body: &[u8], span: Range<usize>, new_model: &str) -> Vec<u8> {
    if !is_string_span(body, &span) {
        return body
            .get(..span.end.min(body.len()))
            .unwrap_or_default()
            .to_vec();
    }
    let prefix = body.get(..span.start).unwrap_or_default();
    let mut out = Vec::with_capacity(prefix.len() + new_model.len() + 8);
    out.extend_from_slice(prefix);
    encode_json_string(new_model, &mut out);
    out
}

/// The whole rewritten body (used in tests and as a fallback). A span that is not a string literal inside
/// `body` yields the body unchanged.
pub fn rewrite_model(body: &[u8], span: Range<usize>, new_model: &str) -> Vec<u8> {
    if !is_string_span(body, &span) {
        return body.to_vec();
    }
    let suffix = body.get(span.end..).unwrap_or_default();
    let mut out = model_prefix_replacement(body, span, new_model);
    out.reserve_exact(suffix.len());
    out.extend_from_slice(suffix);
    out
}

/// How the request body changes on its way to the server: replace `body[..replaced]` with
/// `bytes` (Envoy's buffer API replaces a prefix, so only the bytes up to the last edit are
/// copied). Everything after `replaced` is the client's, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyEdit {
    pub replaced: usize,
    pub bytes: Vec<u8>,
    /// The body's length afterwards, for `content-length`.
    pub new_len: usize,
    /// The server was asked for stream usage the client did not ask for: the response's extra
    /// usage event must be taken out again.
    pub usage_injected: bool,
}

/// The edits a request needs, planned from the one scan of its body: the `model` value becomes
/// `target` (if given), and a stream whose client did not ask for usage asks for it
/// (`ask_usage`: the API reports stream usage that way). None when the body goes unchanged.
pub fn plan_body_edit(
    body: &[u8],
    fields: &super::RequestFields<'_>,
    target: Option<&str>,
    ask_usage: bool,
) -> Option<BodyEdit> {
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
    if let Some(target) = target {
        if is_string_span(body, &fields.model_span) {
            let mut quoted = Vec::with_capacity(target.len() + 2);
            encode_json_string(target, &mut quoted);
            edits.push((fields.model_span.clone(), quoted));
        }
    }
    let usage = if ask_usage {
        fields.usage.splice()
    } else {
        None
    };
    if let Some((range, insert)) = &usage {
        if range.start <= range.end && range.end <= body.len() {
            edits.push((range.clone(), insert.to_vec()));
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(r, _)| r.start);
    // Two edits never overlap (the model is a string member, the usage edit is elsewhere); if a
    // bad plan ever says otherwise, the body goes unchanged rather than corrupted.
    if edits.windows(2).any(|w| w[0].0.end > w[1].0.start) {
        return None;
    }
    let replaced = edits.iter().map(|(r, _)| r.end).max().unwrap_or(0);
    let mut bytes = Vec::with_capacity(replaced + 64);
    let mut at = 0;
    for (range, new) in &edits {
        bytes.extend_from_slice(body.get(at..range.start).unwrap_or_default());
        bytes.extend_from_slice(new);
        at = range.end;
    }
    Some(BodyEdit {
        replaced,
        new_len: body.len() - replaced + bytes.len(),
        bytes,
        usage_injected: usage.is_some(),
    })
}

impl BodyEdit {
    /// The whole new body (tests, and hosts without a prefix-replacing buffer API).
    pub fn apply(&self, body: &[u8]) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.extend_from_slice(body.get(self.replaced..).unwrap_or_default());
        out
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::openai::scan_request;
    use serde_json::Value;

    fn enc(s: &str) -> String {
        let mut v = Vec::new();
        encode_json_string(s, &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn encode_escapes() {
        assert_eq!(enc(""), r#""""#);
        assert_eq!(enc("sql-lora"), r#""sql-lora""#);
        assert_eq!(enc("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(enc("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(enc("\u{0}\u{1f}\u{7f}"), "\"\\u0000\\u001f\u{7f}\"");
        assert_eq!(enc("modèle-🚀"), "\"modèle-🚀\"");
    }

    #[test]
    fn encode_round_trips_through_serde() {
        let mut all_controls = String::new();
        for c in 0u8..0x20 {
            all_controls.push(char::from(c));
        }
        for s in [
            all_controls.as_str(),
            "plain",
            "\"\"\\\\",
            "x\u{2028}y\u{2029}",
            "日本語のモデル",
            "emoji 😀 and \u{10ffff}",
            "trailing\\",
        ] {
            let decoded: String = serde_json::from_str(&enc(s)).unwrap();
            assert_eq!(decoded, s);
        }
    }

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let body = br#"{ "z": 1, "model" :  "lora-request" , "a":[{"model":"x"}], "stream":true }"#;
        let span = scan_request(body).unwrap().model_span;
        let out = rewrite_model(body, span.clone(), "sql-lora");
        assert_eq!(
            out,
            br#"{ "z": 1, "model" :  "sql-lora" , "a":[{"model":"x"}], "stream":true }"#.to_vec()
        );
        let prefix = model_prefix_replacement(body, span.clone(), "sql-lora");
        assert_eq!(prefix, br#"{ "z": 1, "model" :  "sql-lora""#.to_vec());
        let mut joined = prefix;
        joined.extend_from_slice(&body[span.end..]);
        assert_eq!(joined, out);
    }

    #[test]
    fn rewrite_escapes_new_model() {
        let body = br#"{"model":"m"}"#;
        let span = scan_request(body).unwrap().model_span;
        let out = rewrite_model(body, span, "a\"b\\c\n🚀");
        let fields = scan_request(&out).unwrap();
        assert_eq!(fields.model, "a\"b\\c\n🚀");
    }

    #[test]
    fn rewrite_escaped_model_value() {
        let body = br#"{"mod\u0065l":"\u0074weet\n","x":"\ud83d\ude00"}"#;
        let f = scan_request(body).unwrap();
        assert_eq!(f.model, "tweet\n");
        let out = rewrite_model(body, f.model_span, "t");
        assert_eq!(out, br#"{"mod\u0065l":"t","x":"\ud83d\ude00"}"#.to_vec());
    }

    #[test]
    fn bad_spans_never_panic_and_change_nothing() {
        let body = br#"{"model":"m","k":"v"}"#;
        let len = body.len();
        let spans = [
            0..0,
            0..1,
            9..9,
            9..10,
            Range { start: 10, end: 9 },
            9..len + 1,
            len..len + 5,
            usize::MAX - 1..usize::MAX,
            Range {
                start: usize::MAX,
                end: 0,
            },
            0..len,
            2..8,
        ];
        for span in spans {
            assert_eq!(
                rewrite_model(body, span.clone(), "new"),
                body.to_vec(),
                "{span:?}"
            );
            let prefix = model_prefix_replacement(body, span.clone(), "new");
            assert_eq!(prefix, body[..span.end.min(len)].to_vec(), "{span:?}");
        }
        assert_eq!(rewrite_model(b"", 0..2, "x"), Vec::<u8>::new());
        // Any string literal is accepted as a span; the host only ever passes the model's.
        assert_eq!(
            rewrite_model(body, 9..12, "n"),
            br#"{"model":"n","k":"v"}"#.to_vec()
        );
    }

    fn corpus() -> Vec<&'static str> {
        vec![
            r#"{"model":"lora-request","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hi \"there\"\n"}],"temperature":0.7,"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"prompt":["a","b",[1,2,3]],"model":"tweet-summary","n":2,"logit_bias":{"50256":-100},"user":"u-1"}"#,
            " \n{ \"model\" : \"x\" , \"input\" : [ 1.5e3 , -0 , 1e400 , 123456789012345678901234567890 ] } \r\n",
            r#"{"model":"a","model":"b","z":null,"a":false}"#,
            r#"{"model":"","meta":{"model":"nested"}}"#,
            r#"{"m\u006fdel":"escaped-key","x":"\u00e9\ud83d\ude00"}"#,
        ]
    }

    #[test]
    fn rewrite_equals_input_with_model_changed() {
        for body in corpus() {
            let body = body.as_bytes();
            let span = scan_request(body).unwrap().model_span;
            for new_model in ["sql-lora", "", "x\"y", "модель", "\u{0}"] {
                let out = rewrite_model(body, span.clone(), new_model);
                // Numbers such as 1e400 are outside serde_json's range: compare those bodies textually instead.
                match (
                    serde_json::from_slice::<Value>(body),
                    serde_json::from_slice::<Value>(&out),
                ) {
                    (Ok(mut before), Ok(after)) => {
                        before["model"] = Value::String(new_model.to_string());
                        assert_eq!(before, after);
                    }
                    _ => {
                        let s = String::from_utf8(out.clone()).unwrap();
                        assert!(s.contains(&enc(new_model)));
                        assert_eq!(out.len(), body.len() - span.len() + enc(new_model).len());
                    }
                }
                assert_eq!(scan_request(&out).unwrap().model, new_model);
                assert_eq!(&out[..span.start], &body[..span.start]);
                assert_eq!(
                    &out[out.len() - (body.len() - span.end)..],
                    &body[span.end..]
                );
            }
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::openai::{request_usage_rewrite, scan_request};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn both_edits_from_one_scan_match_the_edits_made_one_by_one() {
        let bodies: [&[u8]; 4] = [
            br#"{"model":"lora-request","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            br#"{"stream":true,"stream_options":{"include_usage":false},"model":"lora-request"}"#,
            br#"{"stream":true,"model":"lora-request","stream_options":null , "n":1}"#,
            br#"{ "stream_options" : {"continuous_usage_stats":true,"include_usage":null} , "model" : "lora-request" , "stream" : true }"#,
        ];
        for body in bodies {
            let fields = scan_request(body).unwrap();
            let edit = plan_body_edit(body, &fields, Some("sql-lora-1"), true).unwrap();
            let with_usage = request_usage_rewrite(body).unwrap();
            let f2 = scan_request(&with_usage).unwrap();
            let expected = rewrite_model(&with_usage, f2.model_span, "sql-lora-1");
            let got = edit.apply(body);
            assert_eq!(got, expected, "{}", String::from_utf8_lossy(body));
            assert_eq!(edit.new_len, got.len());
            assert!(edit.usage_injected);
        }
    }

    #[test]
    fn one_edit_or_none() {
        let body =
            br#"{"model":"a","prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#;
        let fields = scan_request(body).unwrap();
        let edit = plan_body_edit(body, &fields, Some("b"), true).unwrap();
        assert!(!edit.usage_injected, "the client asked for usage");
        assert_eq!(edit.replaced, 12, "only the prefix up to the model value");
        assert_eq!(
            edit.apply(body),
            rewrite_model(body, fields.model_span.clone(), "b")
        );
        assert_eq!(plan_body_edit(body, &fields, None, true), None);
        let plain = br#"{"model":"a","prompt":"x"}"#;
        let fields = scan_request(plain).unwrap();
        assert_eq!(plan_body_edit(plain, &fields, None, true), None);
        let edit = plan_body_edit(plain, &fields, Some("\"\u{1}"), false).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&edit.apply(plain)).unwrap();
        assert_eq!(out["model"], "\"\u{1}");
    }
}
