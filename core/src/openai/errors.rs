//! Replies the filter writes itself, in the OpenAI error shape clients already parse.

use super::rewrite::encode_json_string;

/// OpenAI-shaped error body: `{"error":{"message":...,"type":...,"code":<status>}}`.
pub fn error_body(status: u16, kind: &str, message: &str) -> String {
    let mut out = Vec::with_capacity(48 + kind.len() + message.len());
    out.extend_from_slice(b"{\"error\":{\"message\":");
    encode_json_string(message, &mut out);
    out.extend_from_slice(b",\"type\":");
    encode_json_string(kind, &mut out);
    out.extend_from_slice(b",\"code\":");
    out.extend_from_slice(status.to_string().as_bytes());
    out.extend_from_slice(b"}}");
    // Built only from &str pieces and ASCII, so always UTF-8; the lossy arm is never taken.
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// How much of a client's text (a model name) a reply or the access log repeats.
pub const QUOTE_MAX_BYTES: usize = 256;

/// `text` cut to at most [`QUOTE_MAX_BYTES`] on a character boundary, with `…` when cut: a
/// client's 100 KB model name is not sent back whole nor written whole into the access log.
pub fn bounded_quote(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= QUOTE_MAX_BYTES {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = QUOTE_MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", text.get(..end).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn quotes_of_client_text_are_bounded_on_a_character_boundary() {
        assert_eq!(bounded_quote("chat"), "chat");
        let long = "é".repeat(300);
        let q = bounded_quote(&long);
        assert!(q.len() <= QUOTE_MAX_BYTES + "…".len());
        assert!(q.ends_with('…'));
        assert!(q.starts_with("éé"));
    }

    #[test]
    fn shape() {
        let body = error_body(404, "NotFoundError", "The model `x` does not exist.");
        assert_eq!(
            body,
            r#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","code":404}}"#
        );
    }

    #[test]
    fn message_is_escaped() {
        let msg = "bad \"model\" \\ at\nline\t2 \u{1} é 🚀";
        let body = error_body(400, "invalid_request_error", msg);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": msg, "type": "invalid_request_error", "code": 400}})
        );
    }

    #[test]
    fn every_status() {
        for status in [400u16, 404, 413, 429, 503, 0, u16::MAX] {
            let v: Value = serde_json::from_str(&error_body(status, "k\"", "")).unwrap();
            assert_eq!(v["error"]["code"], json!(status));
            assert_eq!(v["error"]["type"], json!("k\""));
        }
    }
}
