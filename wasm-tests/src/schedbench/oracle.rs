//! The oracle: the bound the strategies are measured against. It reads every simulated pod's
//! engine directly (queue, KV blocks, prefix cache, adapters in the batch) at the instant it
//! routes, and sends each request where its expected end-to-end time is lowest, counting requests
//! it has sent that have not reached their pod yet. Greedy with perfect information: not a proven
//! optimum, but no gateway that learns state from scrapes can know more.

use crate::sim::{shared_prefix_len, Probe, RequestKey, Sim, SimConfig};
use std::collections::VecDeque;

/// A request the oracle sent that its pod has not received yet.
struct InTransit {
    tokens: u64,
    blocks: u64,
    adapter: Option<usize>,
    hashes: std::sync::Arc<Vec<u64>>,
}

pub struct Oracle {
    cfg: SimConfig,
    /// Per pod: requests sent, and those not yet received (the pod's received count catches up).
    sent: Vec<usize>,
    transit: Vec<VecDeque<InTransit>>,
}

impl Oracle {
    pub fn new(cfg: &SimConfig, pods: usize) -> Oracle {
        Oracle {
            cfg: cfg.clone(),
            sent: vec![0; pods],
            transit: (0..pods).map(|_| VecDeque::new()).collect(),
        }
    }

    /// The pod (index into `sims`) for a request, recorded as sent there.
    pub fn pick(&mut self, sims: &[Sim], key: &RequestKey, max_tokens: u32) -> usize {
        let mut best = (f64::INFINITY, 0);
        for (i, sim) in sims.iter().enumerate() {
            // Requests that arrived are in the probe; drop them from the in-transit list.
            // (Pods start fresh for every run: all they received came from the oracle.)
            let in_transit = self.sent[i].saturating_sub(sim.request_count());
            while self.transit[i].len() > in_transit {
                self.transit[i].pop_front();
            }
            let cost = self.cost(&sim.probe(key), i, key, max_tokens);
            if cost < best.0 {
                best = (cost, i);
            }
        }
        let i = best.1;
        let bs = u64::from(self.cfg.block_size.max(1));
        self.sent[i] += 1;
        self.transit[i].push_back(InTransit {
            tokens: u64::from(key.prompt_len),
            blocks: (u64::from(key.prompt_len) + u64::from(max_tokens)).div_ceil(bs),
            adapter: key.adapter,
            hashes: std::sync::Arc::new(key.hashes.clone()),
        });
        i
    }

    /// Expected end-to-end simulated seconds of the request on this pod.
    fn cost(&self, p: &Probe, pod: usize, key: &RequestKey, max_tokens: u32) -> f64 {
        let c = &self.cfg;
        let transit = &self.transit[pod];
        let bs = u64::from(c.block_size.max(1));
        let ahead_tokens = p.waiting_tokens + transit.iter().map(|t| t.tokens).sum::<u64>();
        let ahead_blocks = p.waiting_blocks + transit.iter().map(|t| t.blocks).sum::<u64>();
        let queued = p.waiting + transit.len();
        // Prefix: what the cache holds now, or will hold once a request already there (or on
        // its way) has computed the shared blocks.
        let max_blocks = (key.prompt_len.saturating_sub(1) / c.block_size.max(1)) as usize;
        let own_blocks = &key.hashes[..max_blocks.min(key.hashes.len())];
        let in_transit_blocks = transit
            .iter()
            .map(|t| shared_prefix_len(&t.hashes, own_blocks))
            .max()
            .unwrap_or(0) as u32;
        let cached = p
            .cached_tokens
            .max(p.pending_prefix_tokens)
            .max(in_transit_blocks * c.block_size);
        let own_tokens = u64::from(key.prompt_len.saturating_sub(cached));
        // Prefill of everything ahead and of the request itself.
        let prefill_s = (ahead_tokens + own_tokens) as f64 / c.prefill_tokens_per_s;
        let step_s = c.decode_step_s(p.running + queued + 1);
        // KV blocks short once the queue ahead is admitted: wait for running requests to free
        // them, at the pod's decode pace.
        let need = (u64::from(key.prompt_len) + u64::from(max_tokens)).div_ceil(bs)
            - u64::from(cached) / bs;
        let short = (ahead_blocks + need).saturating_sub(u64::from(p.free_blocks));
        let kv_wait_s = if short > 0 && p.running > 0 {
            let per_request = p.running_remaining_tokens as f64 / p.running as f64;
            let fraction = short as f64 / f64::from(p.usable_blocks.max(1));
            fraction.min(1.0) * per_request * step_s
        } else {
            0.0
        };
        let seq_wait_s = if p.running + queued >= c.max_num_seqs as usize {
            (p.running_remaining_tokens as f64 / p.running.max(1) as f64) * step_s
        } else {
            0.0
        };
        // Adapters: the ones the batch runs, and the ones queued or on their way that will join
        // it. A request whose adapter is among them runs with them; a new adapter takes a free
        // slot (and a load), or waits until an active adapter's requests drain.
        let adapter_s = match key.adapter {
            None => 0.0,
            Some(a) => {
                let mut claimed: Vec<usize> = p.active.clone();
                claimed.extend(p.waiting_adapters.iter().copied());
                claimed.extend(transit.iter().filter_map(|t| t.adapter));
                claimed.sort_unstable();
                claimed.dedup();
                if claimed.contains(&a) {
                    if p.adapter_resident {
                        0.0
                    } else {
                        c.lora_load_s
                    }
                } else if claimed.len() < p.max_loras {
                    c.lora_load_s
                } else {
                    // A third adapter: behind the active ones' drain at best.
                    p.adapter_wait_s.max(f64::from(max_tokens) * step_s)
                }
            }
        };
        let own = prefill_s + kv_wait_s + seq_wait_s + adapter_s + f64::from(max_tokens) * step_s;
        // What the request costs the others there: its prefill stalls every running and queued
        // request's next step, and each step it is in is longer for all of them.
        let others = (p.running + queued) as f64;
        let externality = others
            * (own_tokens as f64 / c.prefill_tokens_per_s
                + f64::from(max_tokens) * c.base_itl_s * c.itl_growth);
        own + externality
    }
}
