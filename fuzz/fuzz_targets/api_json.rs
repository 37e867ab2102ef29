//! A request body (or query, path segment, bearer token) through the HTTP API's router.
//!
//! The logic, and what it checks, is `mailroom_fuzzing::api_json` (crates/fuzzing).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzzing::api_json(data));
