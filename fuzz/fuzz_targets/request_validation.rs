#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgewise_gateway::fuzzing::request(data));
