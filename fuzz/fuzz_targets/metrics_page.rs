#![no_main]
//! `router_core::fuzzing::metrics_page`: see that function for the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| router_core::fuzzing::metrics_page(data));
