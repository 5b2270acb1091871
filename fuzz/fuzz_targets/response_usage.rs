#![no_main]
//! `router_core::fuzzing::response_usage`: see that function for the property.
libfuzzer_sys::fuzz_target!(|data: &[u8]| router_core::fuzzing::response_usage(data));
