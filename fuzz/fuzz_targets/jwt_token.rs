#![no_main]
//! `rampart_agent::fuzzing::jwt::jwt_token`: see there for the input and what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_agent::fuzzing::jwt::jwt_token(data));
