//! The properties the fuzz targets check (`fuzz/`, `make fuzz`), one function per parser the
//! plugin points at outside input. Each panics when a property fails, so libFuzzer reports the
//! input; each must never panic otherwise. `make test` runs them on the seed corpora and a few
//! thousand mutations with the stable toolchain (the smoke test below); `make fuzz` runs them under
//! libFuzzer.
//!
//! Every property is stronger than "no crash": the request rewrite keeps every byte but the ones it
//! means to change, incremental parsers give the same answer for any split of their input, and
//! encode → decode round-trips.

// A property that fails must panic: that is how libFuzzer learns of it. Nothing in the plugin
// calls these functions.
#![allow(clippy::panic)]

use crate::config::{Config, Engine};
use crate::metrics::{parse_page, Dialect};
use crate::openai::{plan_body_edit, scan_request, SseParser, UsageScanner, UsageStripper};
use crate::pool::discovery::members_from_admin;
use crate::shared::counters::CounterTable;
use crate::shared::{journal, lease::Lease, CollectorInfo};

/// A split point derived from the input, so a libFuzzer input chooses its own chunking.
fn split_at(data: &[u8]) -> usize {
    let seed = data.iter().fold(0usize, |h, &b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    if data.is_empty() {
        0
    } else {
        seed % (data.len() + 1)
    }
}

/// The request scan agrees with serde_json on what is a JSON object with a string `model`, and
/// the planned edit changes only the model value (and, for a stream, only inserts the usage
/// request), keeping every other byte in place.
pub fn request_body(data: &[u8]) {
    let ours = scan_request(data);
    let reference: Option<serde_json::Value> = serde_json::from_slice(data).ok();
    let reference_ok = reference
        .as_ref()
        .and_then(|v| v.as_object())
        .and_then(|o| o.get("model"))
        .is_some_and(|m| m.is_string());
    // serde_json refuses numbers outside f64's range, which are valid JSON and accepted here.
    if reference_ok {
        assert!(
            ours.is_ok(),
            "serde_json accepts, the scan refuses: {ours:?}"
        );
    }
    let Ok(fields) = ours else {
        return;
    };
    if let Some(v) = &reference {
        assert_eq!(
            v.get("model").and_then(|m| m.as_str()),
            Some(fields.model.as_ref()),
            "a different model than serde_json's"
        );
    }
    let target = "fuzz-target-\"\\\u{1}é";
    let Some(edit) = plan_body_edit(data, &fields, Some(target), true) else {
        panic!("a model edit was planned for nothing");
    };
    let out = edit.apply(data);
    assert_eq!(edit.new_len, out.len());
    // Everything before the first edit and after the last one is the client's, byte for byte.
    let first = fields
        .usage
        .splice()
        .map_or(fields.model_span.start, |(r, _)| {
            r.start.min(fields.model_span.start)
        });
    assert_eq!(out.get(..first), data.get(..first));
    let tail = data.get(edit.replaced..).unwrap_or_default();
    assert!(out.ends_with(tail));
    if let Some(v) = &reference {
        let rewritten: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("the rewrite broke the JSON: {e}"));
        assert_eq!(
            rewritten.get("model").and_then(|m| m.as_str()),
            Some(target)
        );
        // Every other top-level member is unchanged (stream_options may gain include_usage).
        if let (Some(a), Some(b)) = (v.as_object(), rewritten.as_object()) {
            for (k, val) in a {
                if k != "model" && k != "stream_options" {
                    assert_eq!(b.get(k), Some(val), "member {k} changed");
                }
            }
        }
    }
}

/// The response usage scanner gives the same answer for any split of the body.
pub fn response_usage(data: &[u8]) {
    let whole = {
        let mut s = UsageScanner::new();
        s.feed(data);
        s.finish()
    };
    let at = split_at(data);
    let (a, b) = data.split_at(at);
    let mut s = UsageScanner::new();
    s.feed(a);
    s.feed(b);
    assert_eq!(s.finish(), whole, "split at {at}");
}

/// The SSE parser and the usage stripper give the same events, usage and output bytes for any
/// split; the stripper only ever removes bytes.
pub fn sse_stream(data: &[u8]) {
    let mut whole = SseParser::new();
    whole.feed(data);
    let at = split_at(data);
    let (a, b) = data.split_at(at);
    let mut split = SseParser::new();
    split.feed(a);
    split.feed(b);
    assert_eq!(split.usage(), whole.usage(), "split at {at}");

    let strip = |chunks: &[&[u8]]| {
        let mut s = UsageStripper::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        (out, s.parser().usage())
    };
    let one = strip(&[data]);
    let two = strip(&[a, b]);
    assert_eq!(one, two, "stripped differently when split at {at}");
    assert!(one.0.len() <= data.len(), "the stripper added bytes");
}

/// The Prometheus text parser in every engine dialect: never a panic, the same answer twice.
pub fn metrics_page(data: &[u8]) {
    for engine in [
        Engine::Vllm,
        Engine::Sglang,
        Engine::TrtllmServe,
        Engine::TritonTrtllm,
        Engine::VllmAscend,
    ] {
        let Ok(dialect) = Dialect::new(engine, &[]) else {
            continue;
        };
        let first = parse_page(data, &dialect);
        if engine == Engine::Vllm {
            assert_eq!(parse_page(data, &dialect), first);
        }
        let usage = first.state.kv_cache_usage;
        assert!(
            usage.is_finite() && (0.0..=1.0).contains(&usage),
            "KV use {usage}"
        );
    }
}

/// The configuration document: refused or accepted, never a panic; an accepted document means
/// the same thing when read again.
pub fn configuration(data: &[u8]) {
    if let Ok(c) = Config::parse(data) {
        let again = Config::parse(data).unwrap_or_else(|e| panic!("accepted once, then {e}"));
        assert_eq!(c.instance, again.instance);
        assert_eq!(c.pools_fingerprint, again.pools_fingerprint);
    }
}

/// Every shared-data value and the discovery reader: undecodable bytes are refused, decodable
/// ones round-trip.
pub fn shared_data(data: &[u8]) {
    if let Ok(s) = crate::shared::decode(data) {
        let again =
            crate::shared::decode(&crate::shared::encode(&s)).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(again.version, s.version);
        assert_eq!(again.endpoints.len(), s.endpoints.len());
    }
    if let Ok(t) = CounterTable::decode(Some(data)) {
        assert_eq!(CounterTable::decode(Some(&t.encode())), Ok(t));
    }
    if let Some(l) = Lease::decode(data) {
        assert_eq!(Lease::decode(&l.encode()), Some(l));
    }
    if let Some(i) = CollectorInfo::decode(data) {
        assert_eq!(CollectorInfo::decode(&i.encode()), Some(i));
    }
    if let Ok(r) = crate::gate::Release::decode(data) {
        assert_eq!(crate::gate::Release::decode(&r.encode()), Ok(r));
    }
    let (entries, _) = journal::unseen(data, 1, 0);
    let appended = journal::append(data, 2, b"x", 4096);
    assert!(appended.len() <= 4096 || entries.is_empty() || appended.len() <= data.len() + 64);
    let _ = members_from_admin(data, "c", None);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SEEDS: &[&[u8]] = &[
        br#"{"model":"lora-request","prompt":"hi","stream":true}"#,
        br#"{"model":"a\u0062c","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":false}}"#,
        br#"{"stream":true,"stream_options":null,"model":"m","user":"u"}"#,
        br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":5}}"#,
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        b"vllm:num_requests_waiting{model_name=\"m\"} 3\nvllm:kv_cache_usage_perc{model_name=\"m\"} 7e9\n",
        br#"{"pools":[{"name":"p","endpoints":["10.0.0.1:80"]}],"models":[{"modelName":"m","poolRef":"p"}]}"#,
        br#"{"cluster_statuses":[{"name":"c","host_statuses":[{"address":{"socket_address":{"address":"10.0.0.1","port_value":80}}}]}]}"#,
        b"IRS3\x01\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0",
        b"",
    ];

    /// A cheap deterministic mutator: flips, inserts, deletes and splices over the seeds.
    fn mutations(n: usize) -> Vec<Vec<u8>> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut d = SEEDS[i % SEEDS.len()].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = if d.is_empty() {
                    0
                } else {
                    (next() as usize) % d.len()
                };
                match next() % 4 {
                    0 if !d.is_empty() => d[at] ^= 1 << (next() % 8),
                    1 => {
                        const ALPHABET: &[u8] = b"{}[]\":,\\0e-9tfn \n";
                        d.insert(at, ALPHABET[(next() as usize) % ALPHABET.len()]);
                    }
                    2 if !d.is_empty() => {
                        d.remove(at);
                    }
                    _ => {
                        let other = SEEDS[(next() as usize) % SEEDS.len()];
                        let from = (next() as usize) % (other.len() + 1);
                        d.splice(at..at, other[from..].iter().copied());
                    }
                }
            }
            out.push(d);
        }
        out
    }

    /// What CI runs of the fuzz targets: every property over the seeds and 3,000 mutations.
    #[test]
    fn fuzz_targets_smoke() {
        let inputs: Vec<Vec<u8>> = SEEDS
            .iter()
            .map(|s| s.to_vec())
            .chain(mutations(3000))
            .collect();
        for d in &inputs {
            request_body(d);
            response_usage(d);
            sse_stream(d);
            metrics_page(d);
            configuration(d);
            shared_data(d);
        }
    }
}
