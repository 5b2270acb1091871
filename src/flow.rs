//! Flow control on the host (`flowControl`): a request whose pool has no room is held paused in
//! Envoy — its headers never continued, its body buffered by Envoy — in this worker's queue
//! (`router_core::flow::FlowQueue`), and the worker's root context lets it out on its tick: it
//! makes the request's stream current (`set_effective_context`), plans it with the endpoint state
//! of that moment, carries the plan out and resumes the stream. Or it answers 429 / 503 saying
//! why. Each worker has its own queue; the room they dispatch into is shared (the published
//! endpoint states plus every worker's picks since each scrape).

use crate::filter::{Decided, FilterState, Inputs};
use crate::host::{self, Envoy};
use crate::stats as host_stats;
use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;
use router_core::config::FlowControl;
use router_core::flow::waiting::{others, with_top};
use router_core::flow::{DropReason, Dropped, Entry, FlowQueue, DROPPED_REASON_HEADER, OUTCOMES};
use router_core::gate::GateAddress;
use router_core::host::{update, SharedStore};
use router_core::openai;
use router_core::request::plan::Held;
use router_core::scheduling::worker::{PoolLoad, Room};
use router_core::stats::{self, name_with_labels};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// How often a worker with flow control looks at its queues: a held request waits at most this
/// long past the moment its pool has room.
pub const FLOW_TICK: Duration = Duration::from_millis(10);

/// How often the saturation gauge is refreshed while nothing is queued.
const SATURATION_GAUGE_MS: u64 = 1000;

/// A worker holding requests repeats its top priority in the shared table this often, well
/// inside `waiting::MAX_AGE_MS`, so the others keep deferring to it.
const SAY_TOP_MS: u64 = 300;

/// Where a held request's decision is left for its filter context, which takes it when its
/// response (or its end) comes.
pub type Ticket = Rc<RefCell<Option<Decided>>>;

/// A held request: all its decision needs.
struct Waiting {
    inputs: Inputs,
    gate: Option<GateAddress>,
    body_size: usize,
    held: Held,
    since_ms: u64,
    ticket: Ticket,
}

pub struct Flow {
    settings: FlowControl,
    /// Per pool.
    queues: RefCell<Vec<FlowQueue<u32>>>,
    waiting: RefCell<HashMap<u32, Waiting>>,
    pool_names: Vec<String>,
    saturation_at_ms: Cell<u64>,
    /// This worker's id in the shared table of what each worker holds (`flow::waiting`).
    worker: u64,
    /// Per pool: that table's key, and what this worker last said there (top, when).
    waiting_keys: Vec<String>,
    said: RefCell<Vec<(Option<i32>, u64)>>,
}

impl Flow {
    pub fn new(
        settings: FlowControl,
        pool_names: Vec<String>,
        keys: &router_core::shared::Keys,
        worker: u64,
    ) -> Flow {
        let queues = pool_names
            .iter()
            .map(|_| FlowQueue::new(settings.max_requests_per_band, settings.max_bytes_per_band))
            .collect();
        Flow {
            settings,
            queues: RefCell::new(queues),
            waiting: RefCell::new(HashMap::new()),
            waiting_keys: pool_names.iter().map(|p| keys.waiting(p)).collect(),
            said: RefCell::new(vec![(None, 0); pool_names.len()]),
            pool_names,
            saturation_at_ms: Cell::new(0),
            worker,
        }
    }

    /// The top priorities the other workers of this Envoy hold for `pool`.
    fn others(&self, pool: usize, now_ms: u64) -> Vec<i32> {
        let Some(key) = self.waiting_keys.get(pool) else {
            return Vec::new();
        };
        match Envoy.get(key) {
            Some((table, _)) => others(&table, self.worker, now_ms),
            None => Vec::new(),
        }
    }

    /// Say this worker's top priority for `pool` in the shared table when it changed, and
    /// repeat it while requests are held.
    fn say_top(&self, pool: usize, now_ms: u64) {
        let top = self
            .queues
            .borrow()
            .get(pool)
            .and_then(FlowQueue::top_priority);
        let Some(key) = self.waiting_keys.get(pool) else {
            return;
        };
        let mut said = self.said.borrow_mut();
        let Some(last) = said.get_mut(pool) else {
            return;
        };
        let due = top != last.0 || (top.is_some() && now_ms.saturating_sub(last.1) >= SAY_TOP_MS);
        if !due {
            return;
        }
        let worker = self.worker;
        if update(&Envoy, key, 4, |table| {
            Some(with_top(table.unwrap_or_default(), worker, top, now_ms))
        }) {
            *last = (top, now_ms);
        }
    }

    fn pool_name(&self, pool: usize) -> &str {
        self.pool_names.get(pool).map_or("?", String::as_str)
    }

    /// The outcomes per priority exist at zero from the start, so `increase()` alerts see the
    /// first expiry.
    pub fn ready_stats(&self, priorities: &[i32]) {
        for pool in 0..self.pool_names.len() {
            for &p in priorities {
                for outcome in OUTCOMES {
                    host_stats::increment(
                        &self.name(stats::FLOW_REQUESTS_TOTAL, pool, p, Some(outcome)),
                        0,
                    );
                }
                host_stats::gauge_add(&self.name(stats::FLOW_QUEUE_REQUESTS, pool, p, None), 0);
            }
        }
    }

    fn name(&self, metric: &str, pool: usize, priority: i32, outcome: Option<&str>) -> String {
        let priority = priority.to_string();
        let mut labels = vec![
            ("pool", self.pool_name(pool)),
            ("priority", priority.as_str()),
        ];
        if let Some(outcome) = outcome {
            labels.push(("outcome", outcome));
        }
        name_with_labels(metric, &labels)
    }

    /// Whether a request of `priority` for `pool` goes on now: nothing of the pool is queued here
    /// or on another worker (so it does not pass those that are) and the pool has room for it, or
    /// nothing fresh is known of it.
    pub fn admits(&self, load: PoolLoad, pool: usize, priority: i32, now_ms: u64) -> bool {
        let queued = self
            .queues
            .borrow()
            .get(pool)
            .is_some_and(|q| !q.is_empty());
        !queued
            && matches!(load.room_for(priority).0, Room::Yes | Room::Unknown)
            && self.others(pool, now_ms).is_empty()
    }

    /// Queue the request of context `id`; Err: its band is full.
    fn hold(&self, id: u32, waiting: Waiting) -> Result<(), Box<(Waiting, DropReason)>> {
        let entry = Entry {
            item: id,
            priority: waiting.held.priority,
            flow: waiting.held.flow,
            bytes: waiting.body_size as u64,
            since_ms: waiting.since_ms,
        };
        let pushed = match self.queues.borrow_mut().get_mut(waiting.held.pool) {
            Some(q) => q.push(entry).is_ok(),
            None => false,
        };
        if !pushed {
            return Err(Box::new((waiting, DropReason::QueueFull)));
        }
        self.gauges(&entry, waiting.held.pool, 1);
        self.waiting.borrow_mut().insert(id, waiting);
        Ok(())
    }

    fn gauges(&self, entry: &Entry<u32>, pool: usize, sign: i64) {
        let p = entry.priority;
        host_stats::gauge_add(&self.name(stats::FLOW_QUEUE_REQUESTS, pool, p, None), sign);
        host_stats::gauge_add(
            &self.name(stats::FLOW_QUEUE_BYTES, pool, p, None),
            sign * entry.bytes as i64,
        );
    }

    /// A request left the queue: gauges down, its outcome counted, its wait recorded.
    fn left(&self, entry: &Entry<u32>, pool: usize, outcome: &str, now_ms: u64) {
        self.gauges(entry, pool, -1);
        let p = entry.priority;
        host_stats::increment(
            &self.name(stats::FLOW_REQUESTS_TOTAL, pool, p, Some(outcome)),
            1,
        );
        host_stats::record(
            &self.name(stats::FLOW_QUEUE_WAIT_MS, pool, p, None),
            now_ms.saturating_sub(entry.since_ms),
        );
    }
}

impl FilterState {
    /// Hold a request flow control did not admit: queue it, or answer 429 when its band is full.
    /// The ticket gets its decision once it leaves the queue.
    pub(crate) fn hold(
        &self,
        flow: &Flow,
        context_id: u32,
        inputs: &Inputs,
        gate: Option<GateAddress>,
        body_size: usize,
        held: Held,
    ) -> Option<Ticket> {
        let ticket: Ticket = Rc::new(RefCell::new(None));
        let waiting = Waiting {
            inputs: inputs.clone(),
            gate,
            body_size,
            held,
            since_ms: host::now_ms(),
            ticket: Rc::clone(&ticket),
        };
        match flow.hold(context_id, waiting) {
            Ok(()) => Some(ticket),
            Err(refused) => {
                let (waiting, reason) = *refused;
                let entry = Entry {
                    item: context_id,
                    priority: waiting.held.priority,
                    flow: waiting.held.flow,
                    bytes: 0,
                    since_ms: waiting.since_ms,
                };
                flow.gauges(&entry, waiting.held.pool, 1);
                flow.left(
                    &entry,
                    waiting.held.pool,
                    reason.outcome(),
                    waiting.since_ms,
                );
                let decided = self.drop_reply(flow, &waiting, reason);
                *ticket.borrow_mut() = Some(decided);
                Some(ticket)
            }
        }
    }

    /// Answer a held request with why it was dropped (on the current stream).
    fn drop_reply(&self, flow: &Flow, waiting: &Waiting, reason: DropReason) -> Decided {
        let name = flow.pool_name(waiting.held.pool);
        let message = match reason {
            DropReason::QueueFull => format!(
                "pool \"{name}\" is saturated and its queue for priority {} is full",
                waiting.held.priority
            ),
            DropReason::TtlExpired => format!(
                "pool \"{name}\" stayed saturated for {} ms (flowControl.ttlMs)",
                flow.settings.ttl_ms
            ),
            DropReason::NoEndpoints => format!(
                "pool \"{name}\" had no endpoints for {} ms (flowControl.noEndpointTtlMs)",
                flow.settings.no_endpoint_ttl_ms
            ),
        };
        let status = reason.status();
        let kind = if status == 429 {
            "rate_limit_exceeded"
        } else {
            "service_unavailable"
        };
        let outcome = if status == 429 { "shed" } else { "unavailable" };
        log::debug!("{status} {}: {message}", reason.header());
        self.count(outcome, waiting.held.labels);
        let body = openai::error_body(status, kind, &message);
        let sent = hostcalls::send_http_response(
            u32::from(status),
            vec![
                ("content-type", "application/json"),
                (DROPPED_REASON_HEADER, reason.header()),
            ],
            Some(body.as_bytes()),
        );
        if let Err(e) = sent {
            log::warn!("flow control: reply {status} not sent: {e:?}");
        }
        Decided::replied(waiting.held.labels, outcome, waiting.held.requested.clone())
    }

    /// The client of a held request left: out of the queue at once.
    pub(crate) fn abandon(&self, context_id: u32) {
        let Some(flow) = self.flow() else { return };
        let Some(waiting) = flow.waiting.borrow_mut().remove(&context_id) else {
            return;
        };
        let pool = waiting.held.pool;
        let removed = flow
            .queues
            .borrow_mut()
            .get_mut(pool)
            .and_then(|q| q.remove(context_id));
        if let Some(entry) = removed {
            flow.left(&entry, pool, "abandoned", host::now_ms());
        }
    }

    /// The root's tick: drop what waited too long, then dispatch while the pools have room.
    pub fn on_flow_tick(&self, now_ms: u64) {
        let Some(flow) = self.flow() else { return };
        let gauge_due = now_ms.saturating_sub(flow.saturation_at_ms.get()) >= SATURATION_GAUGE_MS;
        if gauge_due {
            flow.saturation_at_ms.set(now_ms);
        }
        let mut dropped = Vec::new();
        for pool in 0..flow.pool_names.len() {
            let queued = flow
                .queues
                .borrow()
                .get(pool)
                .is_some_and(|q| !q.is_empty());
            // Also says "nothing" once after the last held request left.
            flow.say_top(pool, now_ms);
            if !queued && !gauge_due {
                continue;
            }
            let mut load = self.pool_load(pool, now_ms);
            if queued || gauge_due {
                if let Some(s) = load.saturation {
                    let name = name_with_labels(
                        stats::POOL_SATURATION_PERMILLE,
                        &[("pool", flow.pool_name(pool))],
                    );
                    host_stats::gauge(&name, (s * 1000.0).round() as u64);
                }
            }
            if !queued {
                continue;
            }
            let no_endpoints =
                (load.room == Room::NoEndpoints).then_some(flow.settings.no_endpoint_ttl_ms);
            if let Some(q) = flow.queues.borrow_mut().get_mut(pool) {
                q.expire(now_ms, flow.settings.ttl_ms, no_endpoints, &mut dropped);
            }
            for (entry, why) in dropped.drain(..) {
                let reason = match why {
                    Dropped::Ttl => DropReason::TtlExpired,
                    Dropped::NoEndpoints => DropReason::NoEndpoints,
                };
                flow.left(&entry, pool, reason.outcome(), now_ms);
                let Some(waiting) = flow.waiting.borrow_mut().remove(&entry.item) else {
                    continue;
                };
                if hostcalls::set_effective_context(entry.item).is_ok() {
                    let decided = self.drop_reply(flow, &waiting, reason);
                    *waiting.ticket.borrow_mut() = Some(decided);
                }
            }
            // A band lower than another worker's top is left for that worker to go first; free
            // slots are split between the workers holding the top band, so one worker's tenants
            // do not take a whole scrape's room before another worker's get any.
            let others = flow.others(pool, now_ms);
            let top_here = flow
                .queues
                .borrow()
                .get(pool)
                .and_then(FlowQueue::top_priority);
            let others_top = others.iter().copied().max();
            let sharing = 1 + others
                .iter()
                .filter(|&&p| top_here.is_some_and(|t| p >= t))
                .count() as u64;
            let mut budget = match load.room_for(top_here.unwrap_or(0)) {
                (Room::Yes, slots) => slots.div_ceil(sharing),
                _ => u64::MAX,
            };
            while budget > 0 {
                budget -= 1;
                let mut queues = flow.queues.borrow_mut();
                let Some(q) = queues.get_mut(pool) else { break };
                let Some(top) = q.top_priority() else { break };
                if others_top.is_some_and(|o| top < o) {
                    break;
                }
                // Sheddable bands go only into capacity to spare (`has_spare_room`).
                if !matches!(load.room_for(top).0, Room::Yes | Room::Unknown) {
                    break;
                }
                let next = q.pop();
                drop(queues);
                let Some(entry) = next else { break };
                flow.left(&entry, pool, "dispatched", now_ms);
                self.dispatch(flow, entry.item);
                load = self.pool_load(pool, now_ms);
            }
            flow.say_top(pool, now_ms);
        }
    }

    fn pool_load(&self, pool: usize, now_ms: u64) -> PoolLoad {
        self.scheduler.load(&Envoy, &Envoy, pool, now_ms)
    }

    /// Let a held request go: plan it now, carry the plan out on its stream and resume it.
    fn dispatch(&self, flow: &Flow, context_id: u32) {
        let Some(waiting) = flow.waiting.borrow_mut().remove(&context_id) else {
            return;
        };
        if hostcalls::set_effective_context(context_id).is_err() {
            return;
        }
        // Envoy still buffers the whole body for the paused stream.
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, waiting.body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let (decided, routed) = match self.carry_out(&waiting.inputs, waiting.gate, &body, None) {
            crate::filter::Carried::Routed(d) => (d, true),
            crate::filter::Carried::Replied(d) => (d, false),
            crate::filter::Carried::Held(_) => return,
        };
        *waiting.ticket.borrow_mut() = Some(decided);
        if routed {
            if let Err(e) = hostcalls::resume_http_request() {
                log::warn!("flow control: request not resumed: {e:?}");
            }
        }
    }
}
