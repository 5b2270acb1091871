//! The embedded collector's lease: the worker holding it scrapes, the others do not. Written with
//! compare-and-swap; a holder that stops renewing loses it when it expires.
//!
//! Layout: magic `IRL1`, owner u64, expiry ms u64 (little-endian).

const MAGIC: &[u8; 4] = b"IRL1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub owner: u64,
    pub expires_ms: u64,
}

impl Lease {
    pub fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(MAGIC);
        b[4..12].copy_from_slice(&self.owner.to_le_bytes());
        b[12..].copy_from_slice(&self.expires_ms.to_le_bytes());
        b
    }

    /// None for anything that is not a lease of this format (treated as no lease).
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        if bytes.get(..4)? != MAGIC || bytes.len() != 20 {
            return None;
        }
        Some(Lease {
            owner: u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?),
            expires_ms: u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?),
        })
    }

    /// What `me` should write to hold the lease for `ttl_ms` more, or None when another live
    /// owner holds it. Renewing one's own lease and taking an expired or absent one both succeed.
    pub fn claim(current: Option<Lease>, me: u64, now_ms: u64, ttl_ms: u64) -> Option<Lease> {
        match current {
            Some(l) if l.owner != me && l.expires_ms > now_ms => None,
            _ => Some(Lease {
                owner: me,
                expires_ms: now_ms.saturating_add(ttl_ms),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn claims_renewals_and_expiry() {
        let mine = Lease::claim(None, 1, 1000, 200).unwrap();
        assert_eq!(Lease::decode(&mine.encode()), Some(mine));
        assert_eq!(Lease::claim(Some(mine), 2, 1100, 200), None, "held by 1");
        assert!(Lease::claim(Some(mine), 1, 1100, 200).is_some(), "renewal");
        assert_eq!(
            Lease::claim(Some(mine), 2, 1200, 200).map(|l| l.owner),
            Some(2),
            "expired: taken over"
        );
        assert_eq!(Lease::decode(&mine.encode()[..19]), None);
        assert_eq!(
            Lease::decode(&[0u8; 16]),
            None,
            "the old unversioned layout"
        );
    }
}
