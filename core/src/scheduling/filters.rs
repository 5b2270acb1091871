//! Filters: which endpoints' numbers can be trusted, and which have room for more.

use super::Saturation;
use crate::pool::EndpointState;

/// Fresh: scraped at least once, the last good scrape no older than `staleness_ms`, and no scrape
/// failed since. One failure is enough to distrust an endpoint: a pod whose metrics page times out
/// or refuses is likely overloaded or gone, and the numbers we hold describe it before that.
/// A scrape time ahead of `now_ms` (clocks of two workers) counts as just now.
pub fn is_fresh(state: Option<&EndpointState>, now_ms: u64, staleness_ms: u64) -> bool {
    match state {
        Some(s) => {
            s.last_scrape_ms != 0
                && s.consecutive_failures == 0
                && now_ms.saturating_sub(s.last_scrape_ms) <= staleness_ms
        }
        None => false,
    }
}

/// Scraped successfully at least once, and the last good scrape no older than `staleness_ms`
/// (failures since then notwithstanding). What a pool-wide metrics outage falls back on.
pub fn scraped_within(s: &EndpointState, now_ms: u64, staleness_ms: u64) -> bool {
    s.last_scrape_ms != 0 && now_ms.saturating_sub(s.last_scrape_ms) <= staleness_ms
}

/// Headroom: the scraped queue and KV use are both within the saturation thresholds. This uses the
/// scraped `waiting`, not `waiting + picks_since_scrape`: picks since the scrape may already be
/// running or done, and counting them all would shed Sheddable traffic during every burst.
/// Unknown (non-finite) KV use counts as full.
pub fn has_headroom(s: &EndpointState, t: &Saturation) -> bool {
    s.waiting <= t.queue_depth
        && s.kv_cache_usage.is_finite()
        && s.kv_cache_usage <= t.kv_cache_usage
}

/// Room, for flow control's dispatch of a request of priority ≥ 0: the engine's queue, counting
/// this gateway's picks since the scrape (`queue`), is within `queue_depth`. KV cache use does not
/// gate these: an engine queues requests when its cache runs out, so the queue bound already
/// holds back what a full cache cannot take, and vLLM runs its cache near full under load — a KV
/// threshold held Critical requests in the gateway until a pod drained (docs/benchmarks.md,
/// overload workload).
pub fn has_room(queue: u64, t: &Saturation) -> bool {
    queue <= u64::from(t.queue_depth)
}

/// Room for a Sheddable request under flow control: room, and the KV cache within
/// `kv_cache_usage` too — sheddable work only takes capacity to spare, so it never drives the
/// engines into preemption at the expense of the bands above it.
pub fn has_spare_room(s: &EndpointState, queue: u64, t: &Saturation) -> bool {
    has_room(queue, t) && s.kv_cache_usage.is_finite() && s.kv_cache_usage <= t.kv_cache_usage
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn freshness() {
        let mut s = EndpointState {
            last_scrape_ms: 1_000,
            ..Default::default()
        };
        assert!(is_fresh(Some(&s), 3_000, 2_000));
        assert!(!is_fresh(Some(&s), 3_001, 2_000));
        assert!(is_fresh(Some(&s), 500, 2_000), "scrape time ahead of now");
        s.consecutive_failures = 1;
        assert!(!is_fresh(Some(&s), 1_000, 2_000));
        s.consecutive_failures = 0;
        s.last_scrape_ms = 0;
        assert!(!is_fresh(Some(&s), 1_000, 2_000), "never scraped");
        assert!(!is_fresh(None, 1_000, 2_000));
    }

    #[test]
    fn room_for_flow_control() {
        let t = Saturation::default();
        let s = |waiting, kv| EndpointState {
            waiting,
            kv_cache_usage: kv,
            ..Default::default()
        };
        assert!(has_room(5, &t), "within the bound, whatever the cache");
        assert!(!has_room(6, &t), "our picks since the scrape count");
        assert!(has_spare_room(&s(0, 0.8), 5, &t));
        assert!(
            !has_spare_room(&s(0, 0.81), 0, &t),
            "sheddable work needs cache to spare"
        );
        assert!(
            !has_spare_room(&s(0, f32::NAN), 0, &t),
            "unknown KV counts as full"
        );
    }

    #[test]
    fn headroom() {
        let t = Saturation::default();
        let mut s = EndpointState {
            waiting: 5,
            kv_cache_usage: 0.8,
            ..Default::default()
        };
        assert!(has_headroom(&s, &t));
        s.waiting = 6;
        assert!(!has_headroom(&s, &t));
        s.waiting = 0;
        s.kv_cache_usage = 0.81;
        assert!(!has_headroom(&s, &t));
        s.kv_cache_usage = f32::NAN;
        assert!(!has_headroom(&s, &t));
    }
}
