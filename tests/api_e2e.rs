//! The HTTP API end to end: the real binary, mail over real SMTP, requests over real sockets,
//! tokens and quarantine actions through the CLI.
//!
//! Expired tokens: `token create --expires 0` makes a token whose expiry is the moment it was
//! made, which the store treats as already expired (valid only while `now < expires_at`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{message, Env, Http, HttpResponse, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Send one message over SMTP (it must be accepted).
fn send(server: &Server, from: &str, raw: &[u8]) {
    let mut c = server.connect();
    c.cmd("EHLO relay.example.org");
    let r = c.send_mail(from, &["help@support.example.com"], raw);
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT");
}

/// A plain customer question with words the starter model has never seen, so that one
/// training moves their scores.
fn question(n: u32) -> Vec<u8> {
    message(
        "pat@customer-example.org",
        &format!("Question about order {n}"),
        "",
        "Hello, I have a question about my order.\n\
         Please send the zorbulent quintafax voucher for the flumoxer account.\n\
         Thanks, Pat",
    )
}

/// The message whose subject contains `needle`, with its ticket (`None` when quarantined), via
/// the API.
fn find_message(api: Http, token: &str, needle: &str) -> (Option<u64>, Value) {
    let tickets = api.get_json("/v1/tickets?limit=500", token);
    for t in tickets["tickets"].as_array().expect("tickets") {
        let id = t["id"].as_u64().expect("ticket id");
        let detail = api.get_json(&format!("/v1/tickets/{id}"), token);
        for m in detail["messages"].as_array().expect("messages") {
            if m["subject"].as_str().is_some_and(|s| s.contains(needle)) {
                return (Some(id), m.clone());
            }
        }
    }
    let quarantine = api.get_json("/v1/quarantine?limit=500", token);
    for e in quarantine["entries"].as_array().expect("entries") {
        if e["message"]["subject"]
            .as_str()
            .is_some_and(|s| s.contains(needle))
        {
            return (None, e["message"].clone());
        }
    }
    panic!("no message with {needle:?} in tickets or quarantine");
}

fn score(m: &Value) -> f64 {
    m["classification"]["score"]
        .as_f64()
        .unwrap_or_else(|| panic!("message without a score: {m}"))
}

/// The filter's counts (not `bytes_on_disk`, which moves as sled writes in the background).
fn counts(stats: &Value) -> [u64; 4] {
    ["ham_messages", "spam_messages", "tokens", "learned_records"].map(|k| {
        stats[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k} in {stats}"))
    })
}

/// Everything an agent can change, through the CLI (works whatever the API lets in).
fn cli_snapshot(env: &Env) -> (Value, Value, [u64; 4]) {
    (
        env.cli_json(&["tickets", "list", "--json"]),
        env.cli_json(&["quarantine", "list", "--json"]),
        counts(&env.cli_json(&["filter", "stats", "--json"])),
    )
}

fn assert_error(r: &HttpResponse, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.error_code(), code, "{what}");
}

#[test]
fn feedback_through_the_api_raises_the_score_of_the_next_similar_message() {
    let env = Env::new("");
    let server = env.serve();
    let api = server.api();
    let (_, agent) = env.token("agent-1", "agent", None);

    send(&server, "pat@customer-example.org", &question(1001));
    env.wait_processed(WAIT);
    let (ticket, first) = find_message(api, &agent, "order 1001");
    let ticket = ticket.expect("the first question opens a ticket");
    assert_ne!(first["classification"]["verdict"], "spam", "{first}");
    let first_score = score(&first);
    let id = first["id"].as_u64().unwrap();
    let before = counts(&api.get_json("/v1/filter/stats", &agent));

    let r = api.post(
        &format!("/v1/messages/{id}/feedback"),
        Some(&agent),
        Some(&json!({"label": "spam"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["message"], id);
    assert_eq!(v["label"], "spam");
    assert_eq!(v["training"], "learned");
    assert_eq!(v["action"], "quarantined");
    assert_eq!(v["ticket"], ticket);
    assert_eq!(
        v["ticket_deleted"], true,
        "it was the ticket's only message"
    );

    // It moved: out of its ticket (gone with it), into the quarantine.
    assert_error(
        &api.get(&format!("/v1/tickets/{ticket}"), Some(&agent)),
        404,
        "not_found",
        "the emptied ticket",
    );
    let q = api.get_json(&format!("/v1/quarantine/{id}"), &agent);
    assert_eq!(q["message"]["id"], id);
    assert_eq!(q["message"]["quarantined"], true);
    assert_eq!(q["target_ticket"], ticket);

    // The filter learned it once.
    let after = counts(&api.get_json("/v1/filter/stats", &agent));
    assert_eq!(
        after[1],
        before[1] + 1,
        "spam_messages: {before:?} -> {after:?}"
    );
    assert_eq!(after[0], before[0], "ham_messages");
    assert_eq!(after[3], before[3] + 1, "learned_records");
    assert!(after[2] > before[2], "new tokens were learned");

    // The same feedback again changes nothing.
    let again = api.post(
        &format!("/v1/messages/{id}/feedback"),
        Some(&agent),
        Some(&json!({"label": "spam"})),
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["training"], "already_learned");
    assert_eq!(again.json()["action"], "unchanged");
    assert_eq!(counts(&api.get_json("/v1/filter/stats", &agent)), after);

    // The next, near-identical message scores higher.
    send(&server, "pat@customer-example.org", &question(1002));
    env.wait_processed(WAIT);
    let (_, second) = find_message(api, &agent, "order 1002");
    let second_score = score(&second);
    assert!(
        second_score > first_score,
        "score before feedback {first_score}, after {second_score}"
    );
}

#[test]
fn release_from_quarantine_makes_a_ticket_through_the_api_and_the_cli() {
    // Both cutoffs at 0: every message is spam, so every message goes to the quarantine.
    let env = Env::with_config("", "", "[filter]\nham_cutoff = 0.0\nspam_cutoff = 0.0\n");
    let server = env.serve();
    let api = server.api();
    let (_, agent) = env.token("agent-1", "agent", None);
    for (n, from) in [
        (1, "ann@example.org"),
        (2, "bob@example.org"),
        (3, "cy@example.org"),
    ] {
        send(
            &server,
            from,
            &message(
                from,
                &format!("Printer question {n}"),
                "",
                "The printer on floor two is jammed again.",
            ),
        );
    }
    env.wait_processed(WAIT);
    assert_eq!(
        api.get_json("/v1/tickets", &agent)["tickets"],
        json!([]),
        "everything is quarantined"
    );
    let entries = api.get_json("/v1/quarantine", &agent)["entries"].clone();
    let id_of = |needle: &str| -> u64 {
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["message"]["subject"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("{needle} not quarantined: {entries}"))["message"]["id"]
            .as_u64()
            .unwrap()
    };
    let (m1, m2, m3) = (
        id_of("question 1"),
        id_of("question 2"),
        id_of("question 3"),
    );
    let ham_before = counts(&api.get_json("/v1/filter/stats", &agent))[0];

    // API release: a new ticket holding the message, learned as ham.
    let r = api.post(&format!("/v1/quarantine/{m1}/release"), Some(&agent), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["message"], m1);
    assert_eq!(v["new_ticket"], true);
    assert_eq!(v["training"], "learned");
    let t1 = v["ticket"].as_u64().unwrap();
    let detail = api.get_json(&format!("/v1/tickets/{t1}"), &agent);
    assert_eq!(detail["ticket"]["subject"], "Printer question 1");
    assert_eq!(detail["messages"][0]["id"], m1);
    assert_eq!(detail["messages"][0]["quarantined"], false);
    assert_error(
        &api.get(&format!("/v1/quarantine/{m1}"), Some(&agent)),
        404,
        "not_found",
        "released message",
    );
    assert_error(
        &api.post(&format!("/v1/quarantine/{m1}/release"), Some(&agent), None),
        404,
        "not_found",
        "a second release",
    );
    assert_eq!(
        counts(&api.get_json("/v1/filter/stats", &agent))[0],
        ham_before + 1
    );

    // CLI release: the same.
    let out = env.cli(&["quarantine", "release", &m2.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let t2: u64 = printed
        .split_once("ticket #")
        .and_then(|(_, rest)| rest.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ticket in {printed:?}"));
    let detail = api.get_json(&format!("/v1/tickets/{t2}"), &agent);
    assert_eq!(detail["ticket"]["subject"], "Printer question 2");
    assert_eq!(detail["messages"][0]["id"], m2);
    let tickets = env.tickets();
    assert_eq!(tickets.len(), 2, "{tickets:?}");
    assert_eq!(
        counts(&api.get_json("/v1/filter/stats", &agent))[0],
        ham_before + 2
    );

    // CLI feedback spam sends it back; API delete removes the third for good.
    let back = env.cli_json(&["feedback", &m2.to_string(), "spam"]);
    assert_eq!(back["action"]["kind"], "quarantined", "{back}");
    assert_eq!(back["training"], "relabeled", "{back}");
    assert_eq!(
        api.get_json(&format!("/v1/quarantine/{m2}"), &agent)["message"]["id"],
        m2
    );
    let r = api.delete(&format!("/v1/quarantine/{m3}"), Some(&agent));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_error(
        &api.get(&format!("/v1/quarantine/{m3}"), Some(&agent)),
        404,
        "not_found",
        "deleted message",
    );
    let left: Vec<u64> = api.get_json("/v1/quarantine", &agent)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(left, vec![m2]);
}

#[test]
fn every_auth_case_gives_its_status_and_touches_nothing() {
    // Enough failed attempts allowed that the rate limit (tested in crates/api) stays out of
    // the way.
    let env = Env::with_config("", "auth_failures_per_minute = 1000", "");
    let server = env.serve();
    let api = server.api();
    let (_, admin) = env.token("admin-1", "admin", None);
    let (_, agent) = env.token("agent-1", "agent", None);
    let (revoked_id, revoked) = env.token("agent-revoked", "agent", None);
    let (_, expired) = env.token("agent-expired", "agent", Some(0));

    send(
        &server,
        "ann@example.org",
        &message(
            "ann@example.org",
            "Laptop 1",
            "",
            "My laptop will not boot.",
        ),
    );
    send(
        &server,
        "bob@example.org",
        &message("bob@example.org", "Laptop 2", "", "My laptop is slow."),
    );
    env.wait_processed(WAIT);
    let (_, m1) = find_message(api, &admin, "Laptop 1");
    let (_, m2) = find_message(api, &admin, "Laptop 2");
    let (m1, m2) = (m1["id"].as_u64().unwrap(), m2["id"].as_u64().unwrap());
    // One of them in the quarantine (by the CLI), so that release and delete have a target.
    let moved = env.cli_json(&["feedback", &m2.to_string(), "spam"]);
    assert_eq!(moved["action"]["kind"], "quarantined", "{moved}");

    // The revoked token worked until it was revoked.
    assert_eq!(api.get("/v1/tickets", Some(&revoked)).status, 200);
    let out = env.cli(&["token", "revoke", &revoked_id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = env.cli_json(&["token", "list", "--json"]);
    assert!(
        !listed.to_string().contains(&revoked) && !listed.to_string().contains(&agent),
        "token list shows no secret"
    );

    let before = cli_snapshot(&env);
    let almost = {
        // A well-formed secret that is not ours: the agent's with its last character changed.
        let mut s = agent.clone();
        let last = s.pop().unwrap();
        s.push(if last == 'A' { 'B' } else { 'A' });
        s
    };
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("missing", None, "missing_token"),
        ("wrong", Some("not-a-token"), "invalid_token"),
        ("almost", Some(&almost), "invalid_token"),
        ("revoked", Some(&revoked), "invalid_token"),
        ("expired", Some(&expired), "invalid_token"),
    ];
    let feedback = format!("/v1/messages/{m1}/feedback");
    let ham = format!("/v1/messages/{m2}/feedback");
    let release = format!("/v1/quarantine/{m2}/release");
    let quarantined = format!("/v1/quarantine/{m2}");
    for (what, token, code) in cases {
        for (method, path, body) in [
            ("GET", "/v1/tickets", None),
            ("GET", "/v1/filter/stats", None),
            ("GET", "/openapi.json", None),
            ("GET", "/v1/config", None),
            ("GET", "/metrics", None),
            ("POST", feedback.as_str(), Some(json!({"label": "spam"}))),
            ("POST", ham.as_str(), Some(json!({"label": "ham"}))),
            ("POST", release.as_str(), None),
            ("DELETE", quarantined.as_str(), None),
        ] {
            let r = api.request(method, path, token, body.as_ref());
            assert_error(&r, 401, code, &format!("{what}: {method} {path}"));
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"mailroom\""),
                "{what}: {method} {path}"
            );
        }
    }
    // Another scheme is no token at all.
    let r = api.raw(
        "GET",
        "/v1/tickets",
        &[("Authorization".into(), format!("Basic {agent}"))],
        None,
    );
    assert_error(&r, 401, "missing_token", "Basic scheme");

    // Wrong role: agents may not read the config or the metrics.
    for path in ["/v1/config", "/metrics"] {
        assert_error(
            &api.get(path, Some(&agent)),
            403,
            "forbidden_role",
            &format!("agent on {path}"),
        );
    }
    assert_eq!(
        cli_snapshot(&env),
        before,
        "refused requests changed nothing"
    );

    // The good tokens still work, and the agent's feedback does change things.
    assert_eq!(api.get("/v1/config", Some(&admin)).status, 200);
    let r = api.post(&feedback, Some(&agent), Some(&json!({"label": "spam"})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(cli_snapshot(&env), before);
}

#[test]
fn admin_sees_redacted_config_and_metrics_healthz_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = common::write_cert(dir.path(), 0o600);
    let env = Env::new(&common::tls_lines(&cert_path, &key_path));
    let server = env.serve();
    let api = server.api();
    let (_, admin) = env.token("admin-1", "admin", None);
    let (_, agent) = env.token("agent-1", "agent", None);
    send(
        &server,
        "ann@example.org",
        &message("ann@example.org", "Monitor", "", "My monitor flickers."),
    );
    env.wait_processed(WAIT);

    // Health: no token needed, and a bad one does not matter.
    for token in [None, Some("garbage")] {
        let r = api.get("/healthz", token);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"status": "ok"}));
    }

    // The config, secrets redacted.
    let r = api.get("/v1/config", Some(&admin));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let config = r.json();
    assert_eq!(config["smtp"]["hostname"], "mx.test");
    assert_eq!(config["smtp"]["domains"], json!(["support.example.com"]));
    assert_eq!(config["smtp"]["tls_key"], "[redacted]");
    assert_eq!(
        config["smtp"]["tls_cert"],
        cert_path.display().to_string(),
        "a certificate is not a secret"
    );
    assert!(config["http"]["agent_networks"].is_array(), "{config}");
    assert!(config["filter"]["spam_cutoff"].is_number(), "{config}");
    assert!(
        !r.text().contains("key.pem"),
        "the key's path leaks: {}",
        r.text()
    );

    // Metrics in the Prometheus text format.
    let _ = api.get("/v1/tickets", Some(&agent));
    let _ = api.get("/v1/tickets", None);
    let r = api.get("/metrics", Some(&admin));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    for want in [
        "# TYPE mailroom_smtp_messages_accepted_total counter",
        "mailroom_smtp_messages_accepted_total 1",
        "mailroom_api_requests_total{",
        "mailroom_api_auth_failures_total{reason=\"missing\"} 1",
        "mailroom_filter_verdicts_total{",
    ] {
        assert!(text.contains(want), "no {want:?} in the metrics:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        assert!(
            name.starts_with("mailroom_"),
            "metric outside the mailroom_ namespace: {line}"
        );
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
    }
    assert!(
        !text.contains("ann@example.org"),
        "an address in the metrics"
    );

    // The OpenAPI document (any role) and JSON errors for what is not there.
    let doc = api.get_json("/openapi.json", &agent);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in ["/v1/tickets", "/v1/messages/{id}/feedback", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "{path} not in the document");
    }
    assert_error(
        &api.get("/v1/nothing", Some(&agent)),
        404,
        "not_found",
        "unknown route",
    );
    assert_error(
        &api.request("PUT", "/v1/tickets", Some(&agent), None),
        405,
        "method_not_allowed",
        "wrong method",
    );
}

/// Write-then-rename, as editors do.
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Poll `f` until it returns `want` or `limit` passes; returns the last value.
fn eventually<T: PartialEq + std::fmt::Debug>(limit: Duration, want: T, f: impl Fn() -> T) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let got = f();
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn networks_are_enforced_and_an_edit_applies_without_restart() {
    let env = Env::new("");
    let base = std::fs::read_to_string(&env.config).unwrap();
    let http = "[http]\nlisten = [\"127.0.0.1:0\"]\n";
    assert!(base.contains(http));
    let with_networks = |lines: &str| base.replace(http, &format!("{http}{lines}\n"));
    // The server reads its own copy, which the test edits; the CLI keeps the plain one.
    let live = env.dir.path().join("live.toml");
    std::fs::write(
        &live,
        with_networks("agent_networks = [\"10.0.0.0/8\"]\nadmin_networks = [\"192.0.2.0/24\"]"),
    )
    .unwrap();
    let mut server = env.serve_with(&live);
    let api = server.api();
    let (_, admin) = env.token("admin-1", "admin", None);
    let (_, agent) = env.token("agent-1", "agent", None);
    send(
        &server,
        "ann@example.org",
        &message("ann@example.org", "Keyboard", "", "Two keys are missing."),
    );
    env.wait_processed(WAIT);
    let ticket = env.tickets()[0]["id"].as_u64().unwrap();
    let shown = env.cli_json(&["tickets", "show", &ticket.to_string(), "--json"]);
    let m = shown["thread"][0]["id"].as_u64().unwrap();
    let feedback = format!("/v1/messages/{m}/feedback");

    // Loopback is in neither list: 403 whatever is sent, and nothing changes.
    let before = cli_snapshot(&env);
    for token in [None, Some(agent.as_str()), Some(admin.as_str())] {
        for (method, path, body) in [
            ("GET", "/v1/tickets", None),
            ("GET", "/v1/config", None),
            ("POST", feedback.as_str(), Some(json!({"label": "spam"}))),
        ] {
            let r = api.request(method, path, token, body.as_ref());
            assert_error(
                &r,
                403,
                "network_not_allowed",
                &format!(
                    "{method} {path} with {}",
                    token.map_or("no token", |_| "a token")
                ),
            );
        }
    }
    assert_eq!(api.get("/healthz", None).status, 200);
    assert_eq!(
        cli_snapshot(&env),
        before,
        "refused requests changed nothing"
    );

    let agent_status = || api.get("/v1/tickets", Some(&agent)).status;
    let admin_status = || api.get("/v1/tickets", Some(&admin)).status;

    // Admins from loopback, agents not: per-role lists.
    rewrite(&live, &with_networks("agent_networks = [\"10.0.0.0/8\"]"));
    server.wait_line("config: reloaded", WAIT);
    assert_eq!(eventually(WAIT, 200, admin_status), 200);
    assert_error(
        &api.get("/v1/tickets", Some(&agent)),
        403,
        "network_not_allowed",
        "agent outside agent_networks",
    );
    assert_error(
        &api.post(&feedback, Some(&agent), Some(&json!({"label": "spam"}))),
        403,
        "network_not_allowed",
        "agent feedback outside agent_networks",
    );
    assert_eq!(cli_snapshot(&env), before);
    assert_error(
        &api.get("/v1/tickets", None),
        401,
        "missing_token",
        "no token, from a network some role may use",
    );

    // Both from loopback (the defaults): the agent gets in.
    rewrite(&live, &base);
    server.wait_line("config: reloaded", WAIT);
    assert_eq!(eventually(WAIT, 200, agent_status), 200);

    // An edit of agent_networks turns the agent away, without a restart.
    rewrite(&live, &with_networks("agent_networks = [\"10.0.0.0/8\"]"));
    server.wait_line("config: reloaded", WAIT);
    assert_eq!(eventually(WAIT, 403, agent_status), 403);
    assert_error(
        &api.get("/v1/tickets", Some(&agent)),
        403,
        "network_not_allowed",
        "agent after the edit",
    );
    assert_eq!(admin_status(), 200);

    // A broken edit is rejected and the running config kept.
    rewrite(
        &live,
        &with_networks("agent_networks = [\"not-a-network\"]"),
    );
    server.wait_line("config: rejected", WAIT);
    assert_eq!(agent_status(), 403);
    assert_eq!(admin_status(), 200);

    // Still the same process all along.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server restarted or died"
    );
    assert!(server.terminate(), "clean shutdown");
}
