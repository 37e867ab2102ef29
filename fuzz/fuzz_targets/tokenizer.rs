//! A raw message through the spam filter's tokenizer, every combiner, train and untrain.
//!
//! The logic, and what it checks, is `mailroom_fuzzing::tokenizer` (crates/fuzzing).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailroom_fuzzing::tokenizer(data));
