//! One worker's queue of held requests for one pool. Bands by priority, highest first; within a
//! band the flows (fairness ids) take turns, one request each; within a flow, first in first out.
//! Every band is bounded in requests and bytes. Operations are linear in the band's flows or the
//! queue's length, which the bounds keep small; nothing here allocates per dispatch beyond the
//! flows' ring buffers.

use std::collections::VecDeque;

/// A held request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<T> {
    pub item: T,
    pub priority: i32,
    /// The fairness id (a hash of the fairness header; 0: none sent).
    pub flow: u64,
    /// Its body's size, counted against the band's byte bound.
    pub bytes: u64,
    /// When it was queued (ms).
    pub since_ms: u64,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The band holds `maxRequestsPerBand` requests already.
    Requests,
    /// The band's bodies would pass `maxBytesPerBand`.
    Bytes,
}

/// Why `expire` took a request out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Waited the TTL.
    Ttl,
    /// Waited the no-endpoint TTL while the pool had no endpoints.
    NoEndpoints,
}

struct Flow<T> {
    id: u64,
    entries: VecDeque<Entry<T>>,
}

/// One priority's requests: flows in turn order (the front flow goes next).
pub struct Band<T> {
    priority: i32,
    flows: VecDeque<Flow<T>>,
    len: usize,
    bytes: u64,
}

impl<T> Band<T> {
    pub fn priority(&self) -> i32 {
        self.priority
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

pub struct FlowQueue<T> {
    /// Highest priority first. A band stays once created (its gauges keep reading 0); there are
    /// at most as many as distinct priorities, which the configuration bounds.
    bands: Vec<Band<T>>,
    max_requests: usize,
    max_bytes: u64,
    len: usize,
}

impl<T: Copy + PartialEq> FlowQueue<T> {
    pub fn new(max_requests_per_band: usize, max_bytes_per_band: u64) -> FlowQueue<T> {
        FlowQueue {
            bands: Vec::new(),
            max_requests: max_requests_per_band,
            max_bytes: max_bytes_per_band,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bands, highest priority first (empty ones included).
    pub fn bands(&self) -> &[Band<T>] {
        &self.bands
    }

    /// Queue `entry` at the back of its flow, or say why not.
    pub fn push(&mut self, entry: Entry<T>) -> Result<(), Rejected> {
        let at = match self
            .bands
            .binary_search_by(|b| entry.priority.cmp(&b.priority))
        {
            Ok(i) => i,
            Err(i) => {
                self.bands.insert(
                    i,
                    Band {
                        priority: entry.priority,
                        flows: VecDeque::new(),
                        len: 0,
                        bytes: 0,
                    },
                );
                i
            }
        };
        let Some(band) = self.bands.get_mut(at) else {
            return Err(Rejected::Requests);
        };
        if band.len >= self.max_requests {
            return Err(Rejected::Requests);
        }
        if band.bytes.saturating_add(entry.bytes) > self.max_bytes {
            return Err(Rejected::Bytes);
        }
        band.len += 1;
        band.bytes += entry.bytes;
        self.len += 1;
        match band.flows.iter_mut().find(|f| f.id == entry.flow) {
            Some(flow) => flow.entries.push_back(entry),
            // A new flow joins at the back of the turn order.
            None => band.flows.push_back(Flow {
                id: entry.flow,
                entries: VecDeque::from([entry]),
            }),
        }
        Ok(())
    }

    /// The highest waiting priority.
    pub fn top_priority(&self) -> Option<i32> {
        self.bands.iter().find(|b| b.len > 0).map(|b| b.priority)
    }

    /// Take the next request: the highest non-empty band's front flow gives its oldest, then
    /// goes to the back of the turn order.
    pub fn pop(&mut self) -> Option<Entry<T>> {
        let band = self.bands.iter_mut().find(|b| b.len > 0)?;
        let mut flow = band.flows.pop_front()?;
        let entry = flow.entries.pop_front()?;
        if !flow.entries.is_empty() {
            band.flows.push_back(flow);
        }
        band.len -= 1;
        band.bytes = band.bytes.saturating_sub(entry.bytes);
        self.len -= 1;
        Some(entry)
    }

    /// Take `item` out (its client left); None if it is not queued.
    pub fn remove(&mut self, item: T) -> Option<Entry<T>> {
        let mut found = None;
        self.take_where(|e| e.item == item, &mut |e| found = Some(e));
        found
    }

    /// Take out what has waited too long: `ttl_ms`, or `no_endpoint_ttl_ms` while the pool has no
    /// endpoints; each goes to `out` with the reason.
    pub fn expire(
        &mut self,
        now_ms: u64,
        ttl_ms: u64,
        no_endpoints: Option<u64>,
        out: &mut Vec<(Entry<T>, Dropped)>,
    ) {
        let overdue = |e: &Entry<T>| {
            let waited = now_ms.saturating_sub(e.since_ms);
            match no_endpoints {
                Some(limit) if waited >= limit => Some(Dropped::NoEndpoints),
                _ if waited >= ttl_ms => Some(Dropped::Ttl),
                _ => None,
            }
        };
        let mut push = |e: Entry<T>| {
            if let Some(why) = overdue(&e) {
                out.push((e, why));
            }
        };
        self.take_where(|e| overdue(e).is_some(), &mut push);
    }

    /// Take every entry `pred` picks, oldest first within each flow, into `sink`. The turn order
    /// of the flows that remain is kept.
    fn take_where(&mut self, pred: impl Fn(&Entry<T>) -> bool, sink: &mut impl FnMut(Entry<T>)) {
        for band in &mut self.bands {
            if band.len == 0 {
                continue;
            }
            for flow in &mut band.flows {
                let mut i = 0;
                while i < flow.entries.len() {
                    if flow.entries.get(i).is_some_and(&pred) {
                        if let Some(e) = flow.entries.remove(i) {
                            band.len -= 1;
                            band.bytes = band.bytes.saturating_sub(e.bytes);
                            self.len -= 1;
                            sink(e);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            band.flows.retain(|f| !f.entries.is_empty());
        }
    }
}
