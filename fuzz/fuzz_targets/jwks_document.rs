#![no_main]
//! `rampart_agent::fuzzing::jwt::jwks_document`: see there for the input and what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_agent::fuzzing::jwt::jwks_document(data));
