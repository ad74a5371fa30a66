#![no_main]
//! `rampart_agent::fuzzing::packet::packet`: see there for the input and what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_agent::fuzzing::packet::packet(data));
