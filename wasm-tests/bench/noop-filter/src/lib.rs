//! The bench's floor filter: pause the request headers, let Envoy buffer the body, continue at the
//! end of the stream. No header, body or stat access, so it costs what the proxy-wasm plumbing
//! costs (context creation, the callbacks, Envoy buffering the body) and nothing else.
//!
//! For the bench's breakdown (`calls` stage) its configuration can ask for `N` extra host calls of
//! one kind per request, made in the headers callback, so that one call's cost can be read off:
//! `time=N` (the clock: a bare call), `header=N` (read `:path`: a call plus the host's call back
//! into the VM to allocate the value), `property=N` (set a filter-state property, as the plugin's
//! access-log fields), `metric=N` (increment a counter by id). No configuration: no calls.
//!
//! As a bootstrap service with `scrape=INTERVAL_MS:CLUSTER:ADDR,ADDR,...` it is the floor of a
//! metrics collector inside Envoy: every interval it asks each address for `/metrics` through
//! `CLUSTER` (routed by the destination header, as the plugin's collector) and ignores the answer,
//! so its cost is Envoy's HTTP exchange alone (bench stage `scrapefloorN`).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot::default()) });
}}

#[derive(Clone, Copy, Default)]
enum Calls {
    #[default]
    None,
    Time(u32),
    Header(u32),
    Property(u32),
    Metric(u32, u32),
}

#[derive(Default)]
struct NoopRoot {
    calls: Calls,
    scrape: Option<(String, Vec<String>)>,
}

impl Context for NoopRoot {
    // The scraper floor: the answer is not even looked at.
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {}
}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        // The bench passes it JSON-encoded: a quoted string.
        let (kind, n) = config
            .trim()
            .trim_matches('"')
            .split_once('=')
            .unwrap_or(("", "0"));
        if kind == "scrape" {
            let mut parts = n.splitn(3, ':');
            let interval = parts.next().and_then(|v| v.parse().ok()).unwrap_or(100);
            let cluster = parts.next().unwrap_or_default().to_string();
            let addrs = parts
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::to_string)
                .collect();
            self.scrape = Some((cluster, addrs));
            self.set_tick_period(Duration::from_millis(interval));
            return true;
        }
        let n = n.parse().unwrap_or(0);
        self.calls = match kind {
            "time" => Calls::Time(n),
            "header" => Calls::Header(n),
            "property" => Calls::Property(n),
            "metric" => match hostcalls::define_metric(MetricType::Counter, "bench_noop_calls") {
                Ok(id) => Calls::Metric(n, id),
                Err(_) => Calls::None,
            },
            _ => Calls::None,
        };
        true
    }

    fn on_tick(&mut self) {
        let Some((cluster, addrs)) = &self.scrape else {
            return;
        };
        for addr in addrs {
            let headers = vec![
                (":method", "GET"),
                (":path", "/metrics"),
                (":authority", addr.as_str()),
                ("x-gateway-destination-endpoint", addr.as_str()),
            ];
            let _ = hostcalls::dispatch_http_call(
                cluster,
                headers,
                None,
                vec![],
                Duration::from_secs(1),
            );
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopFilter { calls: self.calls }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopFilter {
    calls: Calls,
}

impl Context for NoopFilter {}

impl HttpContext for NoopFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        match self.calls {
            Calls::None => {}
            Calls::Time(n) => (0..n).for_each(|_| {
                let _ = hostcalls::get_current_time();
            }),
            Calls::Header(n) => (0..n).for_each(|_| {
                let _ = self.get_http_request_header_bytes(":path");
            }),
            // Distinct keys, as the plugin's fields: each creates its filter-state entry.
            Calls::Property(n) => (0..n).for_each(|i| {
                let key = format!("bench.noop_{i}");
                let _ = hostcalls::set_property(vec![&key], Some(b"value"));
            }),
            Calls::Metric(n, id) => (0..n).for_each(|_| {
                let _ = hostcalls::increment_metric(id, 1);
            }),
        }
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
