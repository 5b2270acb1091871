//! The reader → gate handoff, for installs that cannot set `allow_on_headers_stop_iteration`
//! (Istio's WasmPlugin, Envoy Gateway's EnvoyExtensionPolicy).
//!
//! Without that flag a filter that pauses its request headers never sees the body, and a filter
//! that lets the headers go on cannot change them any more. So the module is inserted twice:
//! - the *reader*, early in the chain, lets the headers pass, buffers and reads the body, decides
//!   (model, target, endpoint) and rewrites the body in its last body callback;
//! - the *gate*, later in the chain (before the router), pauses the headers and, once the reader's
//!   decision arrives, sets the routing headers and resumes the request.
//!
//! They meet through Envoy's per-request filter state, which every filter of the stream can read
//! whatever VM it runs in: the reader marks an inference request ([`READER_MARK_KEY`]), the gate
//! publishes where it waits ([`GateAddress`] under [`GATE_ADDRESS_KEY`]), and the reader sends the
//! [`Release`] through the gate's shared queue. The formats here are the only contract between the
//! two; each starts with a magic and version so a mixed rollout refuses, never misreads.

/// Filter-state key (Envoy stores it as `wasm.<key>`) the reader sets on an inference request it
/// will decide, before the headers reach the gate.
pub const READER_MARK_KEY: &str = "inference_router.reader";

/// Filter-state key under which the gate publishes its [`GateAddress`].
pub const GATE_ADDRESS_KEY: &str = "inference_router.gate";

/// Prefix of the shared queue each gate VM registers (the rest is unique per VM instance).
pub const QUEUE_PREFIX: &str = "inference-router-gate/";

const ADDRESS_MAGIC: &[u8; 4] = b"IRA1";
const RELEASE_MAGIC: &[u8; 4] = b"IRR1";

/// Upper bounds a decoder enforces, so a corrupt message cannot ask for huge allocations.
const MAX_NAME: usize = 1024;
const MAX_VALUE: usize = 8192;
const MAX_EDITS: usize = 16;

/// Why bytes did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not this format or not this version (another build of the module on the other side).
    Magic,
    /// Cut short or inconsistent.
    Malformed,
}

/// Where a paused gate waits: its VM (`plugin_vm_id`, empty when Envoy was given none), the
/// shared queue its VM registered, and its HTTP context id in that VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateAddress {
    pub vm_id: String,
    pub queue: String,
    pub context_id: u32,
    /// Random per gate VM instance: tells the reader whether the gate runs in its own VM.
    pub instance: u64,
}

impl GateAddress {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.vm_id.len() + self.queue.len());
        out.extend_from_slice(ADDRESS_MAGIC);
        out.extend_from_slice(&self.context_id.to_le_bytes());
        out.extend_from_slice(&self.instance.to_le_bytes());
        put_str(&mut out, &self.vm_id);
        put_str(&mut out, &self.queue);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<GateAddress, DecodeError> {
        let mut r = Reader::new(bytes, ADDRESS_MAGIC)?;
        let context_id = r.u32()?;
        let instance = r.u64()?;
        let vm_id = r.str(MAX_NAME)?;
        let queue = r.str(MAX_NAME)?;
        r.end()?;
        Ok(GateAddress {
            vm_id,
            queue,
            context_id,
            instance,
        })
    }
}

/// One request-header change: set `name` to `value`, or remove it (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEdit {
    pub name: String,
    pub value: Option<String>,
}

/// The reader's decision for a paused gate: the header edits to make, whether to clear the route
/// cache, then resume.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Release {
    pub context_id: u32,
    pub edits: Vec<HeaderEdit>,
    pub clear_route_cache: bool,
}

impl Release {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            12 + self
                .edits
                .iter()
                .map(|e| 6 + e.name.len() + e.value.as_ref().map_or(0, String::len))
                .sum::<usize>(),
        );
        out.extend_from_slice(RELEASE_MAGIC);
        out.extend_from_slice(&self.context_id.to_le_bytes());
        out.push(u8::from(self.clear_route_cache));
        out.push(self.edits.len().min(MAX_EDITS) as u8);
        for e in self.edits.iter().take(MAX_EDITS) {
            put_str(&mut out, &e.name);
            match &e.value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_str(&mut out, v);
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Release, DecodeError> {
        let mut r = Reader::new(bytes, RELEASE_MAGIC)?;
        let context_id = r.u32()?;
        let clear_route_cache = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Malformed),
        };
        let n = usize::from(r.u8()?);
        if n > MAX_EDITS {
            return Err(DecodeError::Malformed);
        }
        let mut edits = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str(MAX_NAME)?;
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.str(MAX_VALUE)?),
                _ => return Err(DecodeError::Malformed),
            };
            edits.push(HeaderEdit { name, value });
        }
        r.end()?;
        Ok(Release {
            context_id,
            edits,
            clear_route_cache,
        })
    }
}

/// Strings are a u16 little-endian length and the bytes; longer ones are cut (never by the
/// callers here: names and values are bounded well below).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let n = bytes.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(bytes.get(..n).unwrap_or_default());
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], magic: &[u8; 4]) -> Result<Reader<'a>, DecodeError> {
        match bytes.split_at_checked(4) {
            Some((m, rest)) if m == magic => Ok(Reader { rest }),
            _ => Err(DecodeError::Magic),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or(DecodeError::Malformed)?;
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| DecodeError::Malformed)?,
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| DecodeError::Malformed)?,
        ))
    }

    fn str(&mut self, max: usize) -> Result<String, DecodeError> {
        let len = self.take(2)?;
        let n = usize::from(u16::from_le_bytes(
            len.try_into().map_err(|_| DecodeError::Malformed)?,
        ));
        if n > max {
            return Err(DecodeError::Malformed);
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn release() -> Release {
        Release {
            context_id: 0xdead_beef,
            edits: vec![
                HeaderEdit {
                    name: "x-gateway-destination-endpoint".into(),
                    value: Some("10.0.0.11:8000".into()),
                },
                HeaderEdit {
                    name: "content-length".into(),
                    value: Some("1234".into()),
                },
                HeaderEdit {
                    name: "x-old".into(),
                    value: None,
                },
            ],
            clear_route_cache: true,
        }
    }

    #[test]
    fn release_round_trips() {
        let r = release();
        assert_eq!(Release::decode(&r.encode()), Ok(r));
        let empty = Release::default();
        assert_eq!(Release::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn address_round_trips() {
        let a = GateAddress {
            vm_id: "envoyextensionpolicy/default/inference-router/wasm/1".into(),
            queue: format!("{QUEUE_PREFIX}00112233aabbccdd"),
            context_id: 7,
            instance: 42,
        };
        assert_eq!(GateAddress::decode(&a.encode()), Ok(a.clone()));
        let istio = GateAddress {
            vm_id: String::new(),
            ..a
        };
        assert_eq!(GateAddress::decode(&istio.encode()), Ok(istio));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = release().encode();
        for n in 0..bytes.len() {
            assert!(Release::decode(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Release::decode(&longer), Err(DecodeError::Malformed));
    }

    #[test]
    fn other_formats_and_versions_are_refused_by_magic() {
        let addr = GateAddress {
            vm_id: String::new(),
            queue: "q".into(),
            context_id: 1,
            instance: 1,
        }
        .encode();
        assert_eq!(Release::decode(&addr), Err(DecodeError::Magic));
        assert_eq!(
            GateAddress::decode(&release().encode()),
            Err(DecodeError::Magic)
        );
        let mut v2 = release().encode();
        v2[3] = b'2';
        assert_eq!(Release::decode(&v2), Err(DecodeError::Magic));
    }

    #[test]
    fn bad_flags_and_oversized_fields_are_refused() {
        let mut bytes = release().encode();
        bytes[8] = 2; // clear_route_cache must be 0 or 1
        assert_eq!(Release::decode(&bytes), Err(DecodeError::Malformed));
        let mut many = Vec::from(&RELEASE_MAGIC[..]);
        many.extend_from_slice(&[0, 0, 0, 0, 0, 200]);
        assert_eq!(Release::decode(&many), Err(DecodeError::Malformed));
        let mut long_name = Vec::from(&RELEASE_MAGIC[..]);
        long_name.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0xff, 0xff]);
        assert_eq!(Release::decode(&long_name), Err(DecodeError::Malformed));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz targets go further.
        let mut x = 0x1234_5678_u32;
        for len in 0..64 {
            let mut bytes = Vec::from(&RELEASE_MAGIC[..]);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                bytes.push(x as u8);
            }
            let _ = Release::decode(&bytes);
            bytes[..4].copy_from_slice(ADDRESS_MAGIC);
            let _ = GateAddress::decode(&bytes);
        }
    }
}
