//! Flow control: requests held in the gateway while their pool has no room, and let out as it
//! gains some. `queue` is the per-worker queue (priority bands, round-robin between fairness ids
//! within a band, FIFO within one id, bounded per band); the host (`src/flow.rs`) pauses the
//! requests in Envoy and resumes them from its root context. Whether a pool has room is the
//! scheduler's (`scheduling::worker::WorkerScheduler::room`).

pub mod queue;
pub mod waiting;

pub use queue::{Dropped, Entry, FlowQueue, Rejected};

/// Why a held request left the queue without being dispatched: its `flow_requests_total`
/// outcome and the `x-inference-router-dropped-reason` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The band was full (requests or bytes): 429 on arrival.
    QueueFull,
    /// Waited `ttlMs` while the pool had endpoints: 429.
    TtlExpired,
    /// Waited `noEndpointTtlMs` while the pool had no endpoints: 503.
    NoEndpoints,
}

impl DropReason {
    pub fn status(self) -> u16 {
        match self {
            DropReason::QueueFull | DropReason::TtlExpired => 429,
            DropReason::NoEndpoints => 503,
        }
    }

    /// The `x-inference-router-dropped-reason` header's value.
    pub fn header(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoEndpoints => "no_endpoints",
        }
    }

    /// The `inference_router_flow_requests_total` outcome.
    pub fn outcome(self) -> &'static str {
        match self {
            DropReason::QueueFull => "rejected",
            DropReason::TtlExpired => "expired",
            DropReason::NoEndpoints => "no_endpoints",
        }
    }
}

/// Every `inference_router_flow_requests_total` outcome, so they can exist at zero from the start.
pub const OUTCOMES: [&str; 5] = [
    "dispatched",
    "rejected",
    "expired",
    "no_endpoints",
    "abandoned",
];

/// The reply's header naming why a request was dropped.
pub const DROPPED_REASON_HEADER: &str = "x-inference-router-dropped-reason";

#[cfg(test)]
mod tests;
