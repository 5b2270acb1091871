//! Fault injection, compiled only into test builds (`--features fault-injection`, `make
//! build-faults` → `dist/inference_router_faults.wasm`): a request or a metrics page carrying the
//! mark makes this VM trap, so the end-to-end tests can show what Envoy's failure policies do
//! with a crashed plugin. Release builds have none of it.

/// Request header whose value `trap` kills the worker's VM.
pub const TRAP_HEADER: &str = "x-inference-router-fault";
/// A metrics page containing this kills the collector's VM.
pub const TRAP_PAGE_MARK: &[u8] = b"# inference-router-fault: trap";

/// Trap (wasm `unreachable`) when `marked`: what a bug in the module would do.
pub fn trap_if(marked: bool) {
    if marked {
        log::warn!("fault injection: this VM traps now");
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
    }
}
