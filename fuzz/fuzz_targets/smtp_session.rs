//! Bytes from an SMTP client into the sans-IO session, cut into reads four ways.
//!
//! The logic, and what it checks, is `mailroom_fuzzing::smtp_session` (crates/fuzzing).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzzing::smtp_session(data));
