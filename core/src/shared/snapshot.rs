//! The binary encoding of a pool snapshot in Envoy shared data.
//!
//! Layout (little-endian), chosen so a filter can decode it with no allocation beyond the result:
//! ```text
//! magic      "IRS3"
//! version    u64       bumped by the collector on every publish
//! generation u64       bumped when the member list changes (not on every scrape)
//! count      u32       number of endpoints
//! per endpoint:
//!   address        u16 length + UTF-8 `ip:port`
//!   waiting u32, running u32, kv_cache_usage f32,
//!   max_lora u32, block_size u32, num_gpu_blocks u32   (u32::MAX = unknown)
//!   last_scrape_ms u64, consecutive_failures u32, picks_at_scrape u32, base_model u32
//!   running adapters: u8 count, each u16 length + UTF-8
//!   waiting adapters: same
//! ```
//! 46 bytes per endpoint plus its address (~16) and its adapter names: about 70 bytes for an
//! endpoint with one adapter loaded, so 512 endpoints publish ~36 KB (and a 24-byte header).

use crate::pool::EndpointState;

const MAGIC: &[u8; 4] = b"IRS3";
const UNKNOWN: u32 = u32::MAX;
/// Adapter names kept per list; more are dropped (vLLM's max_loras is typically far lower).
const MAX_ADAPTERS: usize = 255;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    /// The member list's generation: views rebuild their member tables only when it moves.
    pub generation: u64,
    /// (`ip:port`, state) per endpoint.
    pub endpoints: Vec<(String, EndpointState)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    BadMagic,
    Truncated,
    BadUtf8,
}

pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + snapshot.endpoints.len() * 72);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&snapshot.version.to_le_bytes());
    out.extend_from_slice(&snapshot.generation.to_le_bytes());
    out.extend_from_slice(&(snapshot.endpoints.len() as u32).to_le_bytes());
    for (addr, s) in &snapshot.endpoints {
        put_str(&mut out, addr);
        for v in [s.waiting, s.running] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&s.kv_cache_usage.to_le_bytes());
        for v in [s.max_lora, s.block_size, s.num_gpu_blocks] {
            out.extend_from_slice(&v.unwrap_or(UNKNOWN).to_le_bytes());
        }
        out.extend_from_slice(&s.last_scrape_ms.to_le_bytes());
        out.extend_from_slice(&s.consecutive_failures.to_le_bytes());
        out.extend_from_slice(&s.picks_at_scrape.to_le_bytes());
        out.extend_from_slice(&s.base_model.to_le_bytes());
        for list in [&s.running_adapters, &s.waiting_adapters] {
            let n = list.len().min(MAX_ADAPTERS);
            out.push(n as u8);
            for name in list.iter().take(n) {
                put_str(&mut out, name);
            }
        }
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names longer than u16::MAX are cut at a char boundary; no adapter or address is that long.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes().get(..end).unwrap_or_default());
}

/// Only the version, without decoding the rest: what a filter checks before deciding to decode.
pub fn peek_version(bytes: &[u8]) -> Option<u64> {
    let mut r = Reader { bytes, at: 0 };
    (r.take(4)? == MAGIC).then_some(())?;
    r.u64()
}

pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4).ok_or(SnapshotError::Truncated)? != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let t = SnapshotError::Truncated;
    let version = r.u64().ok_or(t.clone())?;
    let generation = r.u64().ok_or(t.clone())?;
    let count = r.u32().ok_or(t.clone())? as usize;
    // Each endpoint takes at least 48 bytes: a hostile count cannot make us reserve much.
    let mut endpoints = Vec::with_capacity(count.min(bytes.len() / 48));
    for _ in 0..count {
        let addr = r.string()?;
        let mut s = EndpointState {
            waiting: r.u32().ok_or(t.clone())?,
            running: r.u32().ok_or(t.clone())?,
            kv_cache_usage: f32::from_bits(r.u32().ok_or(t.clone())?),
            ..EndpointState::default()
        };
        let known = |v: u32| (v != UNKNOWN).then_some(v);
        s.max_lora = known(r.u32().ok_or(t.clone())?);
        s.block_size = known(r.u32().ok_or(t.clone())?);
        s.num_gpu_blocks = known(r.u32().ok_or(t.clone())?);
        s.last_scrape_ms = r.u64().ok_or(t.clone())?;
        s.consecutive_failures = r.u32().ok_or(t.clone())?;
        s.picks_at_scrape = r.u32().ok_or(t.clone())?;
        s.base_model = r.u32().ok_or(t.clone())?;
        for list in [&mut s.running_adapters, &mut s.waiting_adapters] {
            let n = *r.take(1).ok_or(t.clone())?.first().ok_or(t.clone())?;
            for _ in 0..n {
                list.push(r.string()?);
            }
        }
        s.hash_adapters();
        endpoints.push((addr, s));
    }
    Ok(Snapshot {
        version,
        generation,
        endpoints,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Result<String, SnapshotError> {
        let len = self.take(2).ok_or(SnapshotError::Truncated)?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let s = self.take(len).ok_or(SnapshotError::Truncated)?;
        String::from_utf8(s.to_vec()).map_err(|_| SnapshotError::BadUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn sample() -> Snapshot {
        let mut s = sample_unhashed();
        for (_, e) in &mut s.endpoints {
            e.hash_adapters();
        }
        s
    }

    fn sample_unhashed() -> Snapshot {
        Snapshot {
            version: 42,
            generation: 3,
            endpoints: vec![
                (
                    "127.0.0.11:8000".into(),
                    EndpointState {
                        waiting: 3,
                        running: 7,
                        kv_cache_usage: 0.25,
                        running_adapters: vec!["sql-lora".into(), "tweet-summary".into()],
                        waiting_adapters: vec!["travel-helper".into()],
                        max_lora: Some(2),
                        block_size: Some(16),
                        num_gpu_blocks: Some(4096),
                        last_scrape_ms: 1_795_444_402_257,
                        consecutive_failures: 0,
                        picks_at_scrape: 99,
                        base_model: 0x1234_5678,
                        adapter_hashes: Vec::new(),
                    },
                ),
                ("[::1]:9000".into(), EndpointState::default()),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        assert_eq!(peek_version(&bytes), Some(42));
    }

    #[test]
    fn size_per_endpoint_is_as_documented() {
        let one = Snapshot {
            version: 1,
            generation: 1,
            endpoints: vec![(
                "10.0.0.11:8000".into(),
                EndpointState {
                    running_adapters: vec!["sql-lora".into()],
                    ..EndpointState::default()
                },
            )],
        };
        // 24 header + 46 fixed + 2+14 address + 2+8 adapter.
        assert_eq!(encode(&one).len(), 24 + 46 + 16 + 10);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix {n} decoded");
        }
        assert_eq!(
            decode(b"XXXX\0\0\0\0\0\0\0\0"),
            Err(SnapshotError::BadMagic)
        );
    }

    #[test]
    fn a_hostile_count_does_not_allocate_or_panic() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(SnapshotError::Truncated));
    }
}
