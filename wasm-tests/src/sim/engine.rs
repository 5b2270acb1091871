//! The simulated engine: vLLM V1's scheduling loop in simulated time.
//!
//! Each step schedules running requests first (chunked prefill or one decode token each, within
//! `max_num_batched_tokens`), preempting the newest running request when the KV cache cannot hold
//! a step's tokens; then, if nothing was preempted, admits waiting requests in FCFS order while a
//! sequence slot, token budget and KV blocks remain. A waiting request whose adapter is not in the
//! batch while `max_loras` adapters already are is skipped ("deferred"); the others queue behind a
//! request that does not fit ("capacity"). A step lasts
//!
//! ```text
//! base_itl × (1 + itl_growth × (B − 1)) + prefill tokens / prefill_tokens_per_s + loads × lora_load
//! ```
//!
//! simulated seconds (B = sequences in the step), after which each request whose tokens are all
//! computed samples one token. Wall time is simulated time × `time_scale`.
//!
//! KV cache: `num_gpu_blocks − 1` usable blocks (vLLM keeps one null block) of `block_size`
//! tokens. Full prompt blocks are hashed as a chain (parent hash, adapter, block bytes) and stay
//! cached after their request ends until the block is reused, least recently freed first (a
//! request's blocks are freed tail first, so prefixes outlive suffixes). A new request reuses its
//! longest cached prefix of full blocks, at most `prompt − 1` tokens (vLLM always computes the
//! last prompt token).

use super::metrics::{Gauges, LoraSet, Recorded};
use super::{Pin, SimConfig, SimStats};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// What a request's HTTP handler hears from the engine.
#[derive(Debug)]
pub(crate) enum Event {
    /// One generated token (streaming requests only); `last` for the final one.
    Token {
        last: bool,
    },
    Done(Done),
}

/// A finished request, with its timings in simulated seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub arrival_s: f64,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    pub queue_s: f64,
    pub ttft_s: f64,
    pub e2e_s: f64,
    pub loaded_adapter: bool,
}

/// A request as the engine tracks it.
pub(crate) struct Req {
    pub adapter: Option<usize>,
    pub prompt_len: u32,
    /// Chain hashes of the prompt's full blocks.
    pub hashes: Vec<u64>,
    pub max_tokens: u32,
    pub stream: bool,
    pub tx: UnboundedSender<Event>,
    pub arrival: f64,
    output: u32,
    computed: u32,
    blocks: Vec<u32>,
    /// Leading full prompt blocks already entered in the prefix cache.
    registered: usize,
    scheduled_at: Option<f64>,
    first_token_at: Option<f64>,
    last_token_at: f64,
    /// Prefix-cache hit tokens at first admission.
    cached: u32,
    preemptions: u32,
    loaded_adapter: bool,
}

impl Req {
    pub(crate) fn new(
        adapter: Option<usize>,
        prompt_len: u32,
        hashes: Vec<u64>,
        max_tokens: u32,
        stream: bool,
        tx: UnboundedSender<Event>,
        arrival: f64,
    ) -> Req {
        Req {
            adapter,
            prompt_len,
            hashes,
            max_tokens,
            stream,
            tx,
            arrival,
            output: 0,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            scheduled_at: None,
            first_token_at: None,
            last_token_at: arrival,
            cached: 0,
            preemptions: 0,
            loaded_adapter: false,
        }
    }

    /// Tokens that exist: the prompt and what was sampled so far.
    fn known(&self) -> u32 {
        self.prompt_len + self.output
    }
}

/// Chain hashes of the full `block_size`-token blocks of a prompt whose tokens are its bytes in
/// groups of four. The adapter is part of the hash: adapters never share cached blocks.
pub(crate) fn block_hashes(
    bytes: &[u8],
    prompt_len: u32,
    block_size: u32,
    adapter: Option<usize>,
) -> Vec<u64> {
    let full = (prompt_len / block_size.max(1)) as usize;
    let span = block_size as usize * 4;
    let mut parent = 0u64;
    (0..full)
        .map(|i| {
            let start = (i * span).min(bytes.len());
            let end = ((i + 1) * span).min(bytes.len());
            let mut h = DefaultHasher::new();
            (parent, adapter, &bytes[start..end]).hash(&mut h);
            parent = h.finish();
            parent
        })
        .collect()
}

/// The KV block pool with vLLM's prefix cache: a free queue in LRU order that still holds cached
/// blocks until they are reused.
struct BlockPool {
    usable: u32,
    refs: Vec<u32>,
    hash_of: Vec<Option<u64>>,
    cached: HashMap<u64, u32>,
    /// Free blocks by the order they were freed; the first is evicted first.
    free: BTreeMap<u64, u32>,
    free_key: Vec<u64>,
    next_key: u64,
}

impl BlockPool {
    fn new(usable: u32) -> BlockPool {
        let n = usable as usize;
        BlockPool {
            usable,
            refs: vec![0; n],
            hash_of: vec![None; n],
            cached: HashMap::new(),
            free: (0..usable).map(|b| (u64::from(b), b)).collect(),
            free_key: (0..u64::from(usable)).collect(),
            next_key: u64::from(usable),
        }
    }

    fn num_free(&self) -> u32 {
        self.free.len() as u32
    }

    fn usage(&self) -> f64 {
        1.0 - f64::from(self.num_free()) / f64::from(self.usable.max(1))
    }

    fn alloc(&mut self) -> Option<u32> {
        let (_, b) = self.free.pop_first()?;
        if let Some(h) = self.hash_of[b as usize].take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
            }
        }
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Take a reference on a cached block (a prefix hit).
    fn touch(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            self.free.remove(&self.free_key[b as usize]);
        }
        self.refs[b as usize] += 1;
    }

    fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free_key[b as usize] = self.next_key;
            self.free.insert(self.next_key, b);
            self.next_key += 1;
        }
    }

    fn register(&mut self, b: u32, h: u64) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(h) {
            e.insert(b);
            self.hash_of[b as usize] = Some(h);
        }
    }

    fn free_all(&mut self, blocks: &mut Vec<u32>) {
        // Tail first: the free queue then evicts a request's suffix before its prefix.
        for b in blocks.drain(..).rev() {
            self.release(b);
        }
    }
}

/// What one step does, decided under the lock and applied after its simulated duration.
pub(crate) struct Step {
    /// (index in `running`, tokens computed this step).
    items: Vec<(usize, u32)>,
    pub duration: f64,
}

/// The engine's state; one per simulated pod, behind the pod's lock.
pub(crate) struct Engine {
    cfg: Arc<SimConfig>,
    waiting: VecDeque<Req>,
    running: Vec<Req>,
    pool: BlockPool,
    /// Adapters in GPU slots, least recently used first.
    resident: Vec<usize>,
    pub recorded: Recorded,
    pub lora: super::metrics::LoraHistory,
    lora_started: bool,
    pub pin: Option<Pin>,
    pub stats: SimStats,
}

impl Engine {
    pub(crate) fn new(cfg: SimConfig) -> Engine {
        let usable = cfg.num_gpu_blocks.saturating_sub(1).max(1);
        let recorded = Recorded::new(cfg.max_model_len);
        let stats = SimStats {
            time_scale: cfg.time_scale,
            ..SimStats::default()
        };
        Engine {
            pool: BlockPool::new(usable),
            cfg: Arc::new(cfg),
            waiting: VecDeque::new(),
            running: Vec::new(),
            resident: Vec::new(),
            recorded,
            lora: Default::default(),
            lora_started: false,
            pin: None,
            stats,
        }
    }

    pub(crate) fn add(&mut self, req: Req, model: &str) {
        *self
            .stats
            .requests_by_model
            .entry(model.to_string())
            .or_default() += 1;
        self.stats.requests += 1;
        self.lora_started |= req.adapter.is_some();
        self.waiting.push_back(req);
        self.update_lora();
    }

    /// When the oldest waiting request arrived.
    pub(crate) fn first_arrival(&self) -> Option<f64> {
        self.waiting.iter().map(|r| r.arrival).reduce(f64::min)
    }

    fn adapter_name(&self, a: usize) -> &str {
        self.cfg.adapters.get(a).map(String::as_str).unwrap_or("")
    }

    fn active_adapters(&self) -> Vec<usize> {
        let mut active: Vec<usize> = self.running.iter().filter_map(|r| r.adapter).collect();
        active.sort_unstable();
        active.dedup();
        active
    }

    fn names(&self, mut ids: Vec<usize>) -> String {
        ids.sort_unstable();
        ids.dedup();
        let mut names: Vec<&str> = ids.into_iter().map(|a| self.adapter_name(a)).collect();
        names.sort_unstable();
        names.join(",")
    }

    /// Record the current (running, waiting) adapter sets as vLLM's lora_requests_info does,
    /// unless a pin decides what that metric shows.
    fn update_lora(&mut self) {
        let pinned = self.pin.as_ref().is_some_and(Pin::pins_lora);
        if !self.lora_started || pinned {
            return;
        }
        let set = self.live_lora_set();
        self.lora.set_current(set);
    }

    fn live_lora_set(&self) -> LoraSet {
        LoraSet {
            max_lora: self.cfg.max_loras.to_string(),
            running: self.names(self.running.iter().filter_map(|r| r.adapter).collect()),
            waiting: self.names(self.waiting.iter().filter_map(|r| r.adapter).collect()),
        }
    }

    pub(crate) fn set_pin(&mut self, pin: Option<Pin>) {
        let was_pinned = self.pin.as_ref().is_some_and(Pin::pins_lora);
        match pin.as_ref().and_then(|p| p.lora_set(self.cfg.max_loras)) {
            Some(set) => self.lora.stamp(set),
            None if was_pinned => {
                // The live set becomes current again, newer than anything pinned.
                self.lora_started = true;
                let set = self.live_lora_set();
                self.lora.stamp(set);
            }
            None => {}
        }
        self.pin = pin;
    }

    /// The gauges as the engine sees them (before pinning).
    pub(crate) fn live_gauges(&self) -> Gauges {
        let active = self.active_adapters();
        let full = active.len() >= self.cfg.max_loras as usize;
        let deferred = self
            .waiting
            .iter()
            .filter(|r| r.adapter.is_some_and(|a| full && !active.contains(&a)))
            .count();
        Gauges {
            running: self.running.len() as f64,
            waiting_capacity: (self.waiting.len() - deferred) as f64,
            waiting_deferred: deferred as f64,
            kv_usage: self.pool.usage(),
        }
    }

    pub(crate) fn snapshot_stats(&self, sim_time: f64) -> SimStats {
        let mut s = self.stats.clone();
        s.running = self.running.len() as u64;
        s.waiting = self.waiting.len() as u64;
        s.kv_cache_usage = self.pool.usage();
        s.resident_adapters = self
            .resident
            .iter()
            .map(|a| self.adapter_name(*a).to_string())
            .collect();
        s.sim_time_s = sim_time;
        s
    }

    fn blocks_for(&self, tokens: u32) -> usize {
        tokens.div_ceil(self.cfg.block_size.max(1)) as usize
    }

    /// Drop requests whose client went away (their response body was dropped).
    fn reap_aborted(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].tx.is_closed() {
                let mut r = self.running.remove(i);
                self.pool.free_all(&mut r.blocks);
                self.recorded.finished_abort += 1;
                self.stats.aborted += 1;
            } else {
                i += 1;
            }
        }
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.tx.is_closed());
        let gone = (before - self.waiting.len()) as u64;
        self.recorded.finished_abort += gone;
        self.stats.aborted += gone;
    }

    fn preempt_last(&mut self) {
        if let Some(mut r) = self.running.pop() {
            self.pool.free_all(&mut r.blocks);
            r.computed = 0;
            r.registered = 0;
            r.preemptions += 1;
            self.recorded.preemptions += 1;
            self.stats.preemptions += 1;
            self.waiting.push_front(r);
        }
    }

    /// Decide the next step at simulated time `now`. `None`: nothing to do.
    pub(crate) fn schedule(&mut self, now: f64) -> Option<Step> {
        self.reap_aborted();
        let cfg = Arc::clone(&self.cfg);
        let mut budget = cfg.max_num_batched_tokens.max(1);
        let mut items: Vec<(usize, u32)> = Vec::new();
        let mut prefill_tokens = 0u32;
        let mut preempted = false;

        // Running requests first, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let (computed, known) = (self.running[i].computed, self.running[i].known());
            let n = (known - computed).min(budget);
            let need = self.blocks_for(computed + n);
            let mut fits = true;
            while need.saturating_sub(self.running[i].blocks.len()) > self.pool.num_free() as usize
            {
                if self.running.len() - 1 == i {
                    // The request itself is the newest: it goes back to waiting.
                    self.preempt_last();
                    fits = false;
                    break;
                }
                self.preempt_last();
                preempted = true;
            }
            if !fits {
                preempted = true;
                break;
            }
            while self.running[i].blocks.len() < need {
                match self.pool.alloc() {
                    Some(b) => self.running[i].blocks.push(b),
                    None => break,
                }
            }
            if known - computed > 1 {
                prefill_tokens += n;
            }
            budget -= n;
            items.push((i, n));
            i += 1;
        }

        // Then waiting requests, unless this step had to preempt.
        let mut loads = 0u32;
        if !preempted {
            let mut active = self.active_adapters();
            let mut j = 0;
            while j < self.waiting.len()
                && budget > 0
                && self.running.len() < cfg.max_num_seqs as usize
            {
                let adapter = self.waiting[j].adapter;
                if let Some(a) = adapter {
                    if !active.contains(&a) && active.len() >= cfg.max_loras as usize {
                        j += 1; // deferred by the LoRA budget; later requests may still go
                        continue;
                    }
                }
                let (hit_blocks, n) = {
                    let r = &self.waiting[j];
                    let hits = if cfg.enable_prefix_caching {
                        self.cached_prefix(&r.hashes, r.known())
                    } else {
                        Vec::new()
                    };
                    let hit_tokens = hits.len() as u32 * cfg.block_size;
                    (hits, (r.known() - hit_tokens).min(budget))
                };
                let hit_tokens = hit_blocks.len() as u32 * cfg.block_size;
                let need_new = self.blocks_for(hit_tokens + n) - hit_blocks.len();
                let evictable_hits = hit_blocks
                    .iter()
                    .filter(|b| self.pool.refs[**b as usize] == 0)
                    .count();
                if need_new + evictable_hits > self.pool.num_free() as usize {
                    break; // FCFS: nobody overtakes a request that does not fit
                }
                let Some(mut r) = self.waiting.remove(j) else {
                    break;
                };
                for b in &hit_blocks {
                    self.pool.touch(*b);
                }
                r.blocks = hit_blocks;
                r.registered = r.blocks.len();
                r.computed = hit_tokens;
                for _ in 0..need_new {
                    if let Some(b) = self.pool.alloc() {
                        r.blocks.push(b);
                    }
                }
                if cfg.enable_prefix_caching {
                    self.recorded.prefix_queries += u64::from(r.known());
                    self.recorded.prefix_hits += u64::from(hit_tokens);
                    self.stats.prefix_cache_queries += u64::from(r.known());
                    self.stats.prefix_cache_hits += u64::from(hit_tokens);
                }
                if r.scheduled_at.is_none() {
                    r.scheduled_at = Some(now.max(r.arrival));
                    r.cached = hit_tokens;
                }
                if let Some(a) = adapter {
                    if !active.contains(&a) {
                        active.push(a);
                    }
                    if self.load_adapter(a, &active) {
                        loads += 1;
                        r.loaded_adapter = true;
                    }
                }
                if r.known() - r.computed > 1 {
                    prefill_tokens += n;
                }
                budget -= n;
                self.running.push(r);
                items.push((self.running.len() - 1, n));
            }
        }
        self.update_lora();
        if items.is_empty() {
            return None;
        }
        let tokens: u32 = items.iter().map(|(_, n)| n).sum();
        self.recorded.h_iteration_tokens.observe(f64::from(tokens));
        let duration = cfg.decode_step_s(items.len())
            + f64::from(prefill_tokens) / cfg.prefill_tokens_per_s
            + f64::from(loads) * cfg.lora_load_s;
        Some(Step { items, duration })
    }

    /// Put adapter `a` in a GPU slot if it is not there; `true` if it had to be loaded.
    fn load_adapter(&mut self, a: usize, active: &[usize]) -> bool {
        if let Some(pos) = self.resident.iter().position(|x| *x == a) {
            let a = self.resident.remove(pos);
            self.resident.push(a);
            return false;
        }
        if self.resident.len() >= self.cfg.max_loras as usize {
            // The least recently used adapter that no running request needs.
            if let Some(pos) = self.resident.iter().position(|x| !active.contains(x)) {
                self.resident.remove(pos);
            }
        }
        self.resident.push(a);
        self.stats.adapter_loads += 1;
        let name = self.adapter_name(a).to_string();
        *self.stats.adapter_loads_by_adapter.entry(name).or_default() += 1;
        true
    }

    /// The cached blocks of the longest prefix of a request's full prompt blocks (`hashes`), at
    /// most `known − 1` tokens.
    fn cached_prefix(&self, hashes: &[u64], known: u32) -> Vec<u32> {
        let max = (known.saturating_sub(1) / self.cfg.block_size.max(1)) as usize;
        hashes
            .iter()
            .take(max)
            .map_while(|h| self.pool.cached.get(h).copied())
            .collect()
    }

    /// Apply a step that ended at simulated time `now`.
    pub(crate) fn apply(&mut self, step: Step, now: f64) {
        let bs = self.cfg.block_size.max(1);
        let mut finished = Vec::new();
        for (i, n) in step.items {
            let Some(r) = self.running.get_mut(i) else {
                continue;
            };
            r.computed += n;
            if self.cfg.enable_prefix_caching {
                let full = ((r.computed.min(r.prompt_len)) / bs) as usize;
                while r.registered < full.min(r.hashes.len()) {
                    let (b, h) = (r.blocks[r.registered], r.hashes[r.registered]);
                    self.pool.register(b, h);
                    r.registered += 1;
                }
            }
            if r.computed < r.known() {
                continue; // a prefill chunk
            }
            r.output += 1;
            self.recorded.generation_tokens += 1;
            self.stats.generation_tokens += 1;
            match r.first_token_at {
                None => {
                    r.first_token_at = Some(now);
                    self.recorded.h_ttft.observe(now - r.arrival);
                    let computed = r.prompt_len.saturating_sub(r.cached);
                    self.recorded.prompt_tokens += u64::from(r.prompt_len);
                    self.recorded.prompt_computed += u64::from(computed);
                    self.recorded.prompt_cached += u64::from(r.cached);
                    self.stats.prompt_tokens += u64::from(r.prompt_len);
                }
                Some(_) => self.recorded.h_itl.observe(now - r.last_token_at),
            }
            r.last_token_at = now;
            let last = r.output >= r.max_tokens;
            if r.stream {
                let _ = r.tx.send(Event::Token { last });
            }
            if last {
                finished.push(i);
            }
        }
        // Remove from the back so earlier indices stay valid.
        for i in finished.into_iter().rev() {
            let mut r = self.running.remove(i);
            self.pool.free_all(&mut r.blocks);
            self.finish(&r, now);
        }
        self.update_lora();
    }

    fn finish(&mut self, r: &Req, now: f64) {
        let scheduled = r.scheduled_at.unwrap_or(r.arrival);
        let first = r.first_token_at.unwrap_or(now);
        let rec = &mut self.recorded;
        rec.finished_length += 1;
        rec.h_prompt_tokens.observe(f64::from(r.prompt_len));
        rec.h_generation_tokens.observe(f64::from(r.output));
        rec.h_max_num_generation_tokens
            .observe(f64::from(r.max_tokens));
        rec.h_params_n.observe(1.0);
        rec.h_params_max_tokens.observe(f64::from(r.max_tokens));
        rec.h_e2e.observe(now - r.arrival);
        rec.h_queue.observe(scheduled - r.arrival);
        rec.h_inference.observe(now - scheduled);
        rec.h_prefill.observe(first - scheduled);
        rec.h_decode.observe(now - first);
        if r.output > 1 {
            rec.h_tpot.observe((now - first) / f64::from(r.output - 1));
        }
        rec.h_num_preemptions.observe(f64::from(r.preemptions));
        rec.h_prefill_kv_computed
            .observe(f64::from(r.prompt_len.saturating_sub(r.cached)));
        let s = &mut self.stats;
        s.completed += 1;
        s.usage_prompt_tokens += u64::from(r.prompt_len);
        s.usage_completion_tokens += u64::from(r.output);
        s.ttft_s_sum += first - r.arrival;
        s.queue_s_sum += scheduled - r.arrival;
        s.e2e_s_sum += now - r.arrival;
        let _ = r.tx.send(Event::Done(Done {
            arrival_s: r.arrival,
            prompt_tokens: r.prompt_len,
            completion_tokens: r.output,
            cached_tokens: r.cached,
            queue_s: scheduled - r.arrival,
            ttft_s: first - r.arrival,
            e2e_s: now - r.arrival,
            loaded_adapter: r.loaded_adapter,
        }));
    }
}

/// What a router with perfect, instant knowledge of this pod sees for one candidate request: the
/// benchmark's oracle (`wasm_tests::schedbench::oracle`) turns it into an expected cost.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub running: usize,
    pub waiting: usize,
    /// Tokens the waiting requests still have to prefill (their own cache hits not subtracted).
    pub waiting_tokens: u64,
    /// KV blocks the waiting requests need when admitted.
    pub waiting_blocks: u64,
    pub free_blocks: u32,
    pub usable_blocks: u32,
    /// Prompt tokens of the candidate found in this pod's prefix cache now.
    pub cached_tokens: u32,
    /// Prompt tokens of the candidate shared with a request running or waiting here: cached once
    /// that request's prefill has computed them.
    pub pending_prefix_tokens: u32,
    /// The candidate's adapter is in a GPU slot (true for the base model).
    pub adapter_resident: bool,
    /// When the candidate's adapter cannot join the batch before an active adapter's requests
    /// drain: simulated seconds until the first active adapter's running requests finish; else 0.
    pub adapter_wait_s: f64,
    /// Tokens still to decode, summed over running requests.
    pub running_remaining_tokens: u64,
    /// Adapters of the running batch, and of the waiting queue (each sorted, distinct).
    pub active: Vec<usize>,
    pub waiting_adapters: Vec<usize>,
    pub max_loras: usize,
}

impl Engine {
    /// The pod's exact state as the oracle sees it for a request of `adapter` with `hashes`.
    pub(crate) fn probe(&self, adapter: Option<usize>, hashes: &[u64], prompt_len: u32) -> Probe {
        let bs = self.cfg.block_size.max(1);
        let step_s = self.cfg.decode_step_s(self.running.len());
        let active = self.active_adapters();
        let max = (prompt_len.saturating_sub(1) / bs) as usize;
        let cached_blocks = if self.cfg.enable_prefix_caching {
            self.cached_prefix(hashes, prompt_len).len()
        } else {
            0
        };
        let (adapter_resident, adapter_blocked) = match adapter {
            None => (true, false),
            Some(a) => (
                self.resident.contains(&a),
                !active.contains(&a) && active.len() >= self.cfg.max_loras as usize,
            ),
        };
        let adapter_wait_s = if adapter_blocked {
            active
                .iter()
                .map(|a| {
                    self.running
                        .iter()
                        .filter(|r| r.adapter == Some(*a))
                        .map(|r| r.max_tokens.saturating_sub(r.output))
                        .max()
                        .unwrap_or(0)
                })
                .min()
                .map_or(0.0, |t| f64::from(t) * step_s)
        } else {
            0.0
        };
        Probe {
            running: self.running.len(),
            waiting: self.waiting.len(),
            waiting_tokens: self
                .waiting
                .iter()
                .map(|r| u64::from(r.known() - r.computed))
                .sum(),
            waiting_blocks: self
                .waiting
                .iter()
                .map(|r| self.blocks_for(r.known()) as u64)
                .sum(),
            free_blocks: self.pool.num_free(),
            usable_blocks: self.pool.usable,
            cached_tokens: cached_blocks as u32 * bs,
            pending_prefix_tokens: self
                .running
                .iter()
                .chain(self.waiting.iter())
                .map(|r| shared_prefix_len(&r.hashes, &hashes[..max.min(hashes.len())]))
                .max()
                .unwrap_or(0) as u32
                * bs,
            adapter_resident,
            adapter_wait_s,
            running_remaining_tokens: self
                .running
                .iter()
                .map(|r| u64::from(r.max_tokens.saturating_sub(r.output)))
                .sum(),
            waiting_adapters: {
                let mut w: Vec<usize> = self.waiting.iter().filter_map(|r| r.adapter).collect();
                w.sort_unstable();
                w.dedup();
                w
            },
            active,
            max_loras: self.cfg.max_loras as usize,
        }
    }
}

/// Leading blocks two prompts share: the length of their hash chains' common prefix.
pub(crate) fn shared_prefix_len(a: &[u64], b: &[u64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
