//! The bench's floor filter: pause the request headers, let Envoy buffer the body, continue at the
//! end of the stream. No header, body or stat access, so it costs what the proxy-wasm plumbing
//! costs (context creation, the callbacks, Envoy buffering the body) and nothing else.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopFilter))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopFilter;

impl Context for NoopFilter {}

impl HttpContext for NoopFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // Like the plugin: hold the headers until the whole body is here (a bodiless request
        // has nothing to wait for).
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        // Pause = StopIterationAndBuffer: Envoy keeps the chunks until the last one.
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
