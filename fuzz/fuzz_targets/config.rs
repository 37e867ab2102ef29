//! Bytes as a TOML config file into the config loader and validator.
//!
//! The logic, and what it checks, is `mailroom_fuzzing::config` (crates/fuzzing).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzzing::config(data));
