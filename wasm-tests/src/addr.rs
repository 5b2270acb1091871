//! Loopback addresses for test pods. Every pod gets its own IP in 127.0.0.0/8 (all local on Linux),
//! so routing by `ip:port` is observable; the port is left to the kernel (bind to port 0), so tests
//! running in parallel — or in other processes — never collide.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Usable last octets per /24: .11 ..= .250 (stay clear of .0/.1 and .255).
const PER_BLOCK: u32 = 240;
/// 127.0.0.x … 127.0.199.x, then wrap around (ports still keep addresses distinct).
const BLOCKS: u32 = 200;

/// The next unused pod IP in this process: 127.0.0.11, 127.0.0.12, …
pub fn next_pod_ip() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (PER_BLOCK * BLOCKS);
    let block = (n / PER_BLOCK) as u8;
    let host = (11 + n % PER_BLOCK) as u8;
    Ipv4Addr::new(127, 0, block, host)
}
