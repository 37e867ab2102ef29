//! A raw message (or several, split at MESSAGE_SEPARATOR) through analysis, threading,
//! classification, routing and the store commit.
//!
//! The logic, and what it checks, is `mailroom_fuzzing::parse_ticket` (crates/fuzzing).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzzing::parse_ticket(data));
