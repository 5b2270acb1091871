//! Reading token usage from a response as it passes, chunk by chunk, never holding it back: the
//! JSON body's `usage`, the SSE stream's usage event, or (when the filter asked the server for
//! usage the client did not want) the stream with that event taken out again.

use super::{SseParser, Usage, UsageScanner, UsageStripper};

/// How the response's tokens are read.
pub enum ResponseTap {
    /// Not read: not routed, compressed, or already finished.
    None,
    Json(UsageScanner),
    Sse(SseParser),
    /// A stream with our injected usage event, taken out of what the client gets; the buffer is
    /// reused for each chunk's filtered bytes.
    Strip(UsageStripper, Vec<u8>),
}

/// What one chunk changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TapStep {
    /// The chunk must be replaced by `ResponseTap::replacement` (a stripped stream).
    pub replace: bool,
    /// The first generated token went by in this chunk.
    pub first_token: bool,
}

impl ResponseTap {
    /// The tap for a response: `encoded`: a `content-encoding` other than identity (cannot be read
    /// as it passes); `streaming`: the client asked for a stream; `usage_injected`: the filter
    /// asked the server for stream usage on the client's behalf.
    pub fn new(encoded: bool, streaming: bool, usage_injected: bool) -> ResponseTap {
        match (encoded, streaming, usage_injected) {
            (true, _, _) => ResponseTap::None,
            (false, false, _) => ResponseTap::Json(UsageScanner::new()),
            (false, true, false) => ResponseTap::Sse(SseParser::new()),
            (false, true, true) => ResponseTap::Strip(UsageStripper::new(), Vec::new()),
        }
    }

    /// The body changes length: the client's copy must not announce the server's length.
    pub fn changes_length(&self) -> bool {
        matches!(self, ResponseTap::Strip(..))
    }

    /// Whether the chunks need to be read at all.
    pub fn reads(&self) -> bool {
        !matches!(self, ResponseTap::None)
    }

    /// Read one chunk (`end`: the last one).
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> TapStep {
        match self {
            ResponseTap::None => TapStep::default(),
            ResponseTap::Json(scanner) => {
                scanner.feed(chunk);
                TapStep::default()
            }
            ResponseTap::Sse(parser) => TapStep {
                replace: false,
                first_token: parser.feed(chunk).first_token,
            },
            ResponseTap::Strip(stripper, out) => {
                out.clear();
                let progress = stripper.feed_progress(chunk, out);
                if end {
                    stripper.finish(out);
                }
                TapStep {
                    replace: true,
                    first_token: progress.first_token,
                }
            }
        }
    }

    /// What replaces the chunk just fed, when `TapStep::replace` said so.
    pub fn replacement(&self) -> &[u8] {
        match self {
            ResponseTap::Strip(_, out) => out,
            _ => &[],
        }
    }

    /// The response is over (or cut short): its usage, once; the tap is spent afterwards.
    pub fn finish(&mut self) -> Option<Usage> {
        match std::mem::replace(self, ResponseTap::None) {
            ResponseTap::None => None,
            ResponseTap::Json(scanner) => scanner.finish(),
            ResponseTap::Sse(parser) => parser.usage(),
            ResponseTap::Strip(stripper, _) => stripper.parser().usage(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn json_usage_whatever_the_chunking() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        for split in 0..body.len() {
            let mut tap = ResponseTap::new(false, false, false);
            assert!(!tap.feed(&body[..split], false).replace);
            tap.feed(&body[split..], true);
            let u = tap.finish().unwrap();
            assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 5));
            assert!(tap.finish().is_none(), "once");
        }
    }

    #[test]
    fn injected_usage_is_counted_and_taken_out() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut tap = ResponseTap::new(false, true, true);
        assert!(tap.changes_length());
        let mut client = Vec::new();
        let mut first = false;
        for (i, chunk) in stream.as_bytes().chunks(7).enumerate() {
            let end = (i + 1) * 7 >= stream.len();
            let step = tap.feed(chunk, end);
            first |= step.first_token;
            assert!(step.replace);
            client.extend_from_slice(tap.replacement());
        }
        assert!(first);
        let client = String::from_utf8(client).unwrap();
        assert!(!client.contains("usage"), "{client}");
        assert!(client.ends_with("data: [DONE]\n\n"));
        assert_eq!(tap.finish().unwrap().completion_tokens, 1);
        assert!(
            !ResponseTap::new(true, true, true).reads(),
            "compressed: not read"
        );
    }
}
