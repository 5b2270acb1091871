//! The metrics collector role (`root_id: inference-router-collector`). It validates the shared
//! configuration document now; scraping the pods' metrics pages arrives in the next version.

use router_core::config::Config;

pub fn configure(config: &Config) -> bool {
    log::info!(
        "collector configured for {} pools ({:?} mode); scraping is not in this version",
        config.pools.len(),
        config.collector
    );
    true
}
