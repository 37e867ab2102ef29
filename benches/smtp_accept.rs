//! SMTP accepts per second against the real binary: 10 KB messages over N concurrent connections,
//! every `250` after the spool's fsync. `cargo bench --bench smtp_accept` runs the full load
//! (2,000 messages, 16 connections); under `cargo test` it runs a small smoke load.
//! Set `SMTP_LOAD_MESSAGES` / `SMTP_LOAD_CONNECTIONS` to change the load.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn reply(reader: &mut BufReader<TcpStream>) -> u16 {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return 0;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

fn session(addr: SocketAddr, count: usize, worker: usize) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut w = stream;
    assert_eq!(reply(&mut reader), 220);
    w.write_all(b"EHLO load.test\r\n").unwrap();
    assert_eq!(reply(&mut reader), 250);
    let body =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n".repeat(140);
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let msg = format!(
            "From: load{worker}@example.org\r\nTo: help@support.example.com\r\nSubject: load {worker}-{i}\r\nMessage-ID: <load-{worker}-{i}@example.org>\r\n\r\n{body}"
        );
        let start = Instant::now();
        // Pipelined: MAIL, RCPT, DATA in one write.
        w.write_all(
            b"MAIL FROM:<load@example.org>\r\nRCPT TO:<help@support.example.com>\r\nDATA\r\n",
        )
        .unwrap();
        assert_eq!(reply(&mut reader), 250);
        assert_eq!(reply(&mut reader), 250);
        assert_eq!(reply(&mut reader), 354);
        w.write_all(msg.as_bytes()).unwrap();
        w.write_all(b".\r\n").unwrap();
        let code = reply(&mut reader);
        assert_eq!(code, 250, "message not accepted");
        latencies.push(start.elapsed());
    }
    w.write_all(b"QUIT\r\n").ok();
    latencies
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env_num = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let total = env_num("SMTP_LOAD_MESSAGES", if full { 2000 } else { 64 });
    let conns = env_num("SMTP_LOAD_CONNECTIONS", if full { 16 } else { 4 });

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mailroom.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = {:?}\nspool_max_entries = 100000\n[smtp]\nlisten = [\"127.0.0.1:0\"]\ndomains = [\"support.example.com\"]\n[log]\nlevel = \"error\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mailroom");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr: Option<SocketAddr> = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("smtp: listening on ") {
            addr = a.parse().ok();
        }
        if line.starts_with("control: listening") {
            break;
        }
    }
    let addr = addr.expect("server address");

    let start = Instant::now();
    let per = total / conns;
    let handles: Vec<_> = (0..conns)
        .map(|w| std::thread::spawn(move || session(addr, per, w)))
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("session"))
        .collect();
    let elapsed = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .unwrap_or_default();
    println!(
        "smtp_accept: {} messages of 10 KB over {} connections in {:.2?}: {:.0} msg/s, p50 {:.1?}, p99 {:.1?}, peak RSS {} kB",
        lat.len(),
        conns,
        elapsed,
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        rss
    );
    let _ = child.kill();
    let _ = child.wait();
}
