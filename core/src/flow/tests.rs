use super::queue::{Dropped, Entry, FlowQueue, Rejected};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn entry(item: u32, priority: i32, flow: u64, since_ms: u64) -> Entry<u32> {
    Entry {
        item,
        priority,
        flow,
        bytes: 100,
        since_ms,
    }
}

fn drain(q: &mut FlowQueue<u32>) -> Vec<u32> {
    std::iter::from_fn(|| q.pop().map(|e| e.item)).collect()
}

#[test]
fn the_highest_band_goes_first_whatever_arrived_before() {
    let mut q = FlowQueue::new(1000, u64::MAX);
    for i in 0..200 {
        q.push(entry(i, -1, 0, 0)).unwrap();
    }
    q.push(entry(1000, 1, 0, 5)).unwrap();
    q.push(entry(1001, 0, 0, 6)).unwrap();
    assert_eq!(q.top_priority(), Some(1));
    let order = drain(&mut q);
    assert_eq!(&order[..3], &[1000, 1001, 0]);
    assert_eq!(order.len(), 202);
    assert!(q.is_empty());
    assert!(q.bands().iter().all(|b| b.is_empty() && b.bytes() == 0));
}

#[test]
fn flows_take_turns_in_a_band_and_each_flow_is_fifo() {
    let mut q = FlowQueue::new(1000, u64::MAX);
    // Tenant 1 sends ten for each of tenant 2's.
    for i in 0..20 {
        q.push(entry(i, 0, 1, 0)).unwrap();
    }
    q.push(entry(100, 0, 2, 0)).unwrap();
    q.push(entry(101, 0, 2, 0)).unwrap();
    assert_eq!(drain(&mut q)[..6], [0, 100, 1, 101, 2, 3]);
}

#[test]
fn a_band_is_bounded_in_requests_and_bytes_and_others_are_not_affected() {
    let mut q = FlowQueue::new(2, 250);
    q.push(entry(1, 0, 0, 0)).unwrap();
    q.push(entry(2, 0, 0, 0)).unwrap();
    assert_eq!(q.push(entry(3, 0, 0, 0)), Err(Rejected::Requests));
    q.push(entry(4, 1, 0, 0)).unwrap();
    let mut big = entry(5, 1, 0, 0);
    big.bytes = 151;
    assert_eq!(q.push(big), Err(Rejected::Bytes));
    assert_eq!(q.len(), 3);
    assert_eq!(q.bands()[0].bytes(), 100);
}

#[test]
fn removal_and_expiry_keep_the_counts_and_the_turns() {
    let mut q = FlowQueue::new(10, u64::MAX);
    q.push(entry(1, 0, 1, 0)).unwrap();
    q.push(entry(2, 0, 2, 50)).unwrap();
    q.push(entry(3, 0, 1, 100)).unwrap();
    assert_eq!(q.remove(2).map(|e| e.item), Some(2));
    assert_eq!(q.remove(2), None);
    let mut out = Vec::new();
    q.expire(60, 60, None, &mut out);
    assert_eq!(out, vec![(entry(1, 0, 1, 0), Dropped::Ttl)]);
    out.clear();
    // No endpoints: the shorter wait applies.
    q.expire(120, 1000, Some(10), &mut out);
    assert_eq!(out, vec![(entry(3, 0, 1, 100), Dropped::NoEndpoints)]);
    assert!(q.is_empty());
    assert_eq!(q.pop(), None);
}

#[test]
fn workers_see_each_others_top_until_it_goes_stale() {
    use super::waiting::{decode, others_top, with_top, MAX_AGE_MS, MAX_WORKERS};
    let t = with_top(b"", 1, Some(-1), 100);
    let t = with_top(&t, 2, Some(5), 100);
    assert_eq!(others_top(&t, 1, 200), Some(5));
    assert_eq!(others_top(&t, 2, 200), Some(-1));
    // Worker 2 emptied its queue.
    let t = with_top(&t, 2, None, 150);
    assert_eq!(others_top(&t, 1, 200), None);
    assert_eq!(others_top(&t, 2, 100 + MAX_AGE_MS + 1), None, "stale");
    assert!(decode(b"garbage").is_empty());
    assert!(
        decode(&t[..t.len() - 1]).len() <= 1,
        "a cut entry is not read"
    );
    let mut t = Vec::new();
    for w in 0..(MAX_WORKERS as u64 + 10) {
        t = with_top(&t, w, Some(0), 500 + w);
    }
    assert_eq!(decode(&t).len(), MAX_WORKERS);
    assert!(decode(&t)
        .iter()
        .any(|e| e.worker == MAX_WORKERS as u64 + 9));
}
