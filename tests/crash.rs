//! Crash safety: clients send while the server is killed with SIGKILL at a random moment; after a
//! restart every message that got `250` is in exactly one ticket (none lost, none twice).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{message, Env, Smtp};
use rand::{Rng, SeedableRng};

/// Send messages until the server goes away; record the acknowledged ones.
fn client(
    addr: std::net::SocketAddr,
    worker: usize,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        // A fresh session every few messages, like a relay would.
        let Ok(mut c) = Smtp::try_connect(addr) else {
            return;
        };
        if c.try_cmd("EHLO crash.test").is_err() {
            return;
        }
        for _ in 0..5 {
            let marker = format!("crash-w{worker}-n{n}");
            n += 1;
            let from = format!("sender{worker}@example.org");
            let msg = message(
                &from,
                &marker,
                &format!("Message-ID: <{marker}@example.org>"),
                &"x".repeat(2000),
            );
            match c.try_send_mail(&from, &["help@support.example.com"], &msg) {
                Ok(r) if r.code == 250 => acked.lock().unwrap().push(marker),
                Ok(_) => {}
                // The server died mid-conversation: that message was not acknowledged.
                Err(_) => return,
            }
        }
    }
}

#[test]
fn sigkill_loses_nothing_acknowledged_and_duplicates_nothing() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = Env::no_filter("");
    // The test suite runs a short version; benches/crash-rounds runs 100 rounds.
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut all_acked: Vec<String> = Vec::new();

    for round in 0..rounds {
        let server = env.serve();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for w in 0..4 {
            let (acked, stop) = (acked.clone(), stop.clone());
            let addr = server.smtp;
            let worker = round * 10 + w;
            threads.push(std::thread::spawn(move || {
                client(addr, worker, acked, stop)
            }));
        }
        // Kill at a random moment after some mail has been acknowledged.
        let want = rng.random_range(5..60usize);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "clients made no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..50)));
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            let _ = t.join();
        }
        let acked = acked.lock().unwrap().clone();
        eprintln!("round {round}: {} acknowledged before SIGKILL", acked.len());
        all_acked.extend(acked);
    }

    // Restart, let the pipeline drain the spool, then count.
    let server = env.serve();
    env.wait_processed(Duration::from_secs(120));
    let tickets = env.tickets();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &tickets {
        if let Some(s) = t["subject"].as_str() {
            *seen.entry(s.to_string()).or_default() += 1;
        }
        assert_eq!(t["messages"], 1, "each marker is its own ticket: {t}");
    }
    for marker in &all_acked {
        assert_eq!(
            seen.get(marker).copied().unwrap_or(0),
            1,
            "acknowledged message {marker} must be stored exactly once"
        );
    }
    for (subject, count) in &seen {
        assert_eq!(*count, 1, "{subject} stored {count} times");
    }
    assert!(server.terminate());
}
