#![no_main]
//! `router_core::fuzzing::sse_stream`: see that function for the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| router_core::fuzzing::sse_stream(data));
