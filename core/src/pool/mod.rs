//! A pool as the filters see it: what the metrics collector learned of each endpoint
//! ([`EndpointState`], published as a snapshot, `crate::shared::snapshot`), a worker's view of the
//! members ([`view`]), the shared per-endpoint request counters ([`counters`]), and members read
//! from an Envoy cluster ([`discovery`]). Filters decode a snapshot only when its version changes,
//! never per request.

/// One endpoint as last scraped. Adapter names are as the engine reports them (LoRA names).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointState {
    /// Requests waiting in the engine's queue.
    pub waiting: u32,
    /// Requests the engine is running.
    pub running: u32,
    /// KV-cache use, a fraction in [0, 1].
    pub kv_cache_usage: f32,
    /// LoRA adapters loaded and serving.
    pub running_adapters: Vec<String>,
    /// LoRA adapters requested but waiting for a slot.
    pub waiting_adapters: Vec<String>,
    /// LoRA slots on the GPU (vLLM's `max_lora`), when known.
    pub max_lora: Option<u32>,
    /// KV-cache block size in tokens, when known.
    pub block_size: Option<u32>,
    /// KV-cache blocks on the GPU, when known.
    pub num_gpu_blocks: Option<u32>,
    /// Wall-clock time (ms since the Unix epoch) of the last good scrape; 0 = never.
    pub last_scrape_ms: u64,
    /// Scrapes failed in a row since the last good one.
    pub consecutive_failures: u32,
    /// The filter's pick counter for this endpoint when the last good scrape completed: picks made
    /// since then are requests the scraped numbers do not include yet.
    pub picks_at_scrape: u32,
    /// `scheduling::adapter_hash` of the model the engine serves as its base (vLLM's `model_name`
    /// label); 0 = unknown. Any other model it is asked for is one of its LoRA adapters.
    pub base_model: u32,
    /// `scheduling::adapter_hash` of the running then the waiting adapters (`hash_adapters`), so
    /// the LoRA-affinity scorer matches claims without hashing names per request. Not encoded:
    /// recomputed wherever a state is read; empty if not (the scorer then hashes the names).
    pub adapter_hashes: Vec<u32>,
}

impl EndpointState {
    /// Fill `adapter_hashes` from the adapter lists.
    pub fn hash_adapters(&mut self) {
        self.adapter_hashes = self
            .running_adapters
            .iter()
            .chain(&self.waiting_adapters)
            .map(|n| crate::scheduling::adapter_hash(n))
            .collect();
    }
}

pub mod counters;
pub mod discovery;
pub mod view;
