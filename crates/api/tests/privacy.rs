//! Issue #6 over the API: closing tickets, erasure, export, the audit log, deleting agents.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use common::{deliver, loopback_config, Resp, Server};
use mailroom_store::{NewAttachment, Role, ThreadDecision};
use serde_json::{json, Value};

/// Everything logged in this test binary (every level, every thread).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace,sled=info"))
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init()
            .expect("the only subscriber of this test binary");
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

async fn start() -> Server {
    logs();
    Server::start(loopback_config()).await
}

fn new_ticket(server: &Server, from: &str, subject: &str, attachments: Vec<NewAttachment>) -> u64 {
    let (ticket, _, _) = deliver(
        &server.store,
        from,
        subject,
        "hello, something is broken",
        ThreadDecision::New {
            subject: subject.into(),
        },
        attachments,
    );
    ticket.unwrap().0
}

async fn post(server: &Server, path: &str, token: &str, body: Value) -> Resp {
    server
        .send("POST", path, Some(token), Some(&body.to_string()))
        .await
}

/// The audit log as the API shows it (one page of up to 1000).
async fn audit(server: &Server, admin: &str) -> Vec<Value> {
    let r = server.get("/v1/audit?limit=1000", Some(admin)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["entries"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_close_and_reopen_tickets() {
    let server = start().await;
    let ticket = new_ticket(&server, "alice@example.com", "Printer on fire", vec![]);
    let other = new_ticket(&server, "bob@example.com", "VPN down", vec![]);
    let agent = server.token_named("alice-agent", Role::Agent);
    let path = format!("/v1/tickets/{ticket}");

    let r = server
        .send("PATCH", &path, Some(&agent), Some(r#"{"status":"closed"}"#))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["id"], ticket);
    assert_eq!(v["status"], "closed");
    assert_eq!(v["closed_by"], "alice-agent");
    assert!(v["closed_at"].as_u64().unwrap() > 1_700_000_000, "{v}");

    let closed = server
        .get("/v1/tickets?status=closed", Some(&agent))
        .await
        .json();
    let ids: Vec<u64> = closed["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [ticket]);
    assert_eq!(closed["tickets"][0]["closed_by"], "alice-agent");
    let open = server
        .get("/v1/tickets?status=open", Some(&agent))
        .await
        .json();
    assert_eq!(open["tickets"][0]["id"], other);
    assert_eq!(open["tickets"].as_array().unwrap().len(), 1);
    assert_eq!(open["tickets"][0]["closed_at"], Value::Null);
    let detail = server.get(&path, Some(&agent)).await.json();
    assert_eq!(detail["ticket"]["status"], "closed");

    // Reopening clears when and who.
    let r = server
        .send("PATCH", &path, Some(&agent), Some(r#"{"status":"open"}"#))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(
        (&v["status"], &v["closed_at"], &v["closed_by"]),
        (&json!("open"), &Value::Null, &Value::Null)
    );

    let missing = server
        .send(
            "PATCH",
            "/v1/tickets/999999",
            Some(&agent),
            Some(r#"{"status":"closed"}"#),
        )
        .await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "not_found")
    );
    for (path, ct, body, status, code) in [
        (
            &path[..],
            "application/json",
            r#"{"status":"pending"}"#,
            400,
            "invalid_body",
        ),
        (
            &path[..],
            "application/json",
            r#"{"status":"closed","x":1}"#,
            400,
            "invalid_body",
        ),
        (&path[..], "application/json", "{}", 400, "invalid_body"),
        (&path[..], "application/json", "{", 400, "invalid_json"),
        (
            &path[..],
            "text/plain",
            r#"{"status":"closed"}"#,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/tickets/abc",
            "application/json",
            r#"{"status":"closed"}"#,
            400,
            "invalid_path",
        ),
    ] {
        let r = server
            .raw(
                "PATCH",
                path,
                &[
                    format!("Authorization: Bearer {agent}"),
                    format!("Content-Type: {ct}"),
                ],
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{path} {body}"
        );
    }
    let r = server
        .send("PATCH", &path, None, Some(r#"{"status":"closed"}"#))
        .await;
    assert_eq!(r.status, 401);
    let detail = server.get(&path, Some(&agent)).await.json();
    assert_eq!(
        detail["ticket"]["status"], "open",
        "refused requests change nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_agents_and_bad_input() {
    let server = start().await;
    let ticket = new_ticket(&server, "yara@example.com", "Lost password", vec![]);
    let agent = server.token_named("an-agent", Role::Agent);
    let admin = server.token_named("an-admin", Role::Admin);
    let erase = json!({"email": "yara@example.com"});

    // Agents and strangers.
    for (method, path, body) in [
        ("POST", "/v1/privacy/erase", Some(erase.to_string())),
        ("POST", "/v1/privacy/export", Some(erase.to_string())),
        ("GET", "/v1/audit", None),
        ("DELETE", "/v1/agents/an-admin", None),
    ] {
        let r = server
            .send(method, path, Some(&agent), body.as_deref())
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "forbidden_role"),
            "{method} {path}"
        );
        let r = server.send(method, path, None, body.as_deref()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "missing_token"),
            "{method} {path}"
        );
    }

    // Addresses that are not addresses: 422, and the answer does not repeat them.
    let long = format!("{}@example.com", "x".repeat(309));
    assert_eq!(long.len(), 321);
    for path in ["/v1/privacy/erase", "/v1/privacy/export"] {
        for email in [
            "",
            "no-at-sign",
            "two@at@signs.example",
            "@example.com",
            "yara@",
            "ya\u{1}ra@example.com",
            "yara@example.com\r\nX-Injected: 1",
            "yara\u{85}@example.com",
            &long,
        ] {
            let r = post(&server, path, &admin, json!({ "email": email })).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (422, "invalid_email"),
                "{path} {email:?}"
            );
            let text = String::from_utf8_lossy(&r.body);
            assert!(email.len() < 4 || !text.contains(email), "{text}");
        }
        // 320 bytes is fine (not a contact: 404 for export, a report for erase).
        let longest = format!("{}@example.com", "x".repeat(308));
        let r = post(
            &server,
            path,
            &admin,
            json!({ "email": longest, "dry_run": true }),
        )
        .await;
        if path.ends_with("export") {
            assert_eq!(r.status, 400, "no dry_run on export: {r:?}");
            let r = post(&server, path, &admin, json!({ "email": longest })).await;
            assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
        } else {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.json()["found"], false);
        }
        // Bodies of the wrong shape: 400 (or 415), as everywhere.
        for (ct, body, status, code) in [
            ("application/json", r#"{"email":5}"#, 400, "invalid_body"),
            (
                "application/json",
                r#"{"email":"a@b","x":1}"#,
                400,
                "invalid_body",
            ),
            ("application/json", "{}", 400, "invalid_body"),
            ("application/json", "[]", 400, "invalid_body"),
            ("application/json", "{", 400, "invalid_json"),
            (
                "text/plain",
                r#"{"email":"a@b"}"#,
                415,
                "unsupported_media_type",
            ),
        ] {
            let r = server
                .raw(
                    "POST",
                    path,
                    &[
                        format!("Authorization: Bearer {admin}"),
                        format!("Content-Type: {ct}"),
                    ],
                    Some(body.as_bytes()),
                )
                .await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (status, code),
                "{path} {body}"
            );
        }
    }
    let r = post(
        &server,
        "/v1/privacy/erase",
        &admin,
        json!({"email": "a@b", "dry_run": "yes"}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_body"));

    for query in [
        "limit=0",
        "limit=1001",
        "before=abc",
        "before=-1",
        "before=9223372036854775808",
        "bogus=1",
    ] {
        let r = server
            .get(&format!("/v1/audit?{query}"), Some(&admin))
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_query"),
            "{query}"
        );
    }
    let name65 = "x".repeat(65);
    for (name, status, code) in [
        (name65.as_str(), 400, "invalid_path"),
        ("%01", 400, "invalid_path"),
        ("%20", 400, "invalid_path"),
        ("nobody", 404, "not_found"),
    ] {
        let r = server
            .send("DELETE", &format!("/v1/agents/{name}"), Some(&admin), None)
            .await;
        assert_eq!((r.status, r.code().as_str()), (status, code), "{name}");
    }

    // Nothing was erased, exported or deleted, and nothing audited.
    assert_eq!(
        server
            .get(&format!("/v1/tickets/{ticket}"), Some(&agent))
            .await
            .status,
        200
    );
    let entries = audit(&server, &admin).await;
    assert_eq!(
        entries.len(),
        0,
        "dry runs and refused requests are not audited: {entries:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_the_person_and_keeps_the_address_out_of_the_logs() {
    let server = start().await;
    let address = "Zelda.Secret@Privacy-Test.example";
    let ticket = new_ticket(&server, address, "Please forget me", vec![]);
    let kept = new_ticket(&server, "bob@example.com", "Unrelated", vec![]);
    let admin = server.token_named("root", Role::Admin);
    let agent = server.token_named("helper", Role::Agent);
    let path = format!("/v1/tickets/{ticket}");

    let r = post(
        &server,
        "/v1/privacy/erase",
        &admin,
        json!({"email": address, "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!((&v["dry_run"], &v["found"]), (&json!(true), &json!(true)));
    assert_eq!(v["tickets"], json!([ticket]));
    assert_eq!(v["audit_id"], Value::Null);
    assert_eq!(v["key_destroyed"], false);
    assert_eq!(
        server.get(&path, Some(&agent)).await.status,
        200,
        "a dry run"
    );

    // The address is matched whatever its case.
    let r = post(
        &server,
        "/v1/privacy/erase",
        &admin,
        json!({"email": address.to_uppercase(), "dry_run": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!((&v["dry_run"], &v["found"]), (&json!(false), &json!(true)));
    assert_eq!(v["tickets"], json!([ticket]));
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&v["contacts"], &v["key_destroyed"]),
        (&json!(1), &json!(true))
    );
    let audit_id = v["audit_id"].as_u64().expect("audited");

    let gone = server.get(&path, Some(&agent)).await;
    assert_eq!((gone.status, gone.code().as_str()), (404, "not_found"));
    let list = server.get("/v1/tickets", Some(&agent)).await.json();
    assert_eq!(list["tickets"].as_array().unwrap().len(), 1);
    assert_eq!(list["tickets"][0]["id"], kept);
    let r = server
        .get(&format!("/v1/tickets/{kept}"), Some(&agent))
        .await;
    assert_eq!(r.status, 200);

    let entries = audit(&server, &admin).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["id"], audit_id);
    assert_eq!(
        (&e["action"], &e["actor"], &e["agent"]),
        (&json!("erase"), &json!("token"), &json!("root"))
    );
    assert_eq!(e["counts"]["tickets"], 1);
    assert!(e["token"].is_u64());

    // Again: nobody by that address any more.
    let v = post(
        &server,
        "/v1/privacy/erase",
        &admin,
        json!({"email": address}),
    )
    .await
    .json();
    assert_eq!((&v["found"], &v["tickets"]), (&json!(false), &json!([])));

    let r = server.get("/metrics", Some(&admin)).await;
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("mailroom_privacy_erasures_total"), "{text}");

    let logs = logged();
    assert!(
        logs.contains("/v1/privacy/erase"),
        "the capture works (the request span names the route)"
    );
    let lower = logs.to_lowercase();
    for part in ["zelda", "privacy-test"] {
        assert!(!lower.contains(part), "{part} was logged");
    }
    server.stop().await;
}

/// The files of a `.tar.gz`, by path.
fn untar(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_an_archive_of_the_persons_files_only() {
    let server = start().await;
    let admin = server.token_named("root", Role::Admin);
    let alice_file = b"%PDF-1.4 alice's report".to_vec();
    let (alice_ticket, alice_msg, alice_raw) = deliver(
        &server.store,
        "alice@example.org",
        "Report attached",
        "see the report",
        ThreadDecision::New {
            subject: "Report attached".into(),
        },
        vec![NewAttachment {
            filename: Some("../report.pdf".into()),
            content_type: "application/pdf".into(),
            data: alice_file.clone(),
            retention_class: "attachment".into(),
        }],
    );
    let alice_ticket = alice_ticket.unwrap();
    // Bob writes into alice's ticket and opens his own, with a file.
    let (_, bob_reply, _) = deliver(
        &server.store,
        "bob@example.net",
        "Re: Report attached",
        "thanks",
        ThreadDecision::Existing(alice_ticket),
        vec![],
    );
    new_ticket(
        &server,
        "bob@example.net",
        "Bob's own",
        vec![NewAttachment {
            filename: Some("bob.txt".into()),
            content_type: "text/plain".into(),
            data: b"bob's secret file".to_vec(),
            retention_class: "attachment".into(),
        }],
    );
    let detail = server
        .get(&format!("/v1/tickets/{}", alice_ticket.0), Some(&admin))
        .await
        .json();
    let contact = detail["messages"][0]["attachments"][0]["contact"]
        .as_u64()
        .unwrap();
    let sha = detail["messages"][0]["attachments"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let r = post(
        &server,
        "/v1/privacy/export",
        &admin,
        json!({"email": "ALICE@example.org"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/gzip"));
    assert_eq!(
        r.header("content-disposition"),
        Some(format!("attachment; filename=\"mailroom-export-{contact}.tar.gz\"").as_str())
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let files = untar(&r.body);
    let names: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let m = alice_msg.0;
    let want: BTreeSet<String> = [
        "person.json".to_string(),
        "manifest.json".to_string(),
        format!("messages/{m}.json"),
        format!("messages/{m}.eml"),
        // The sent name was `../report.pdf`: the archive has no way out of its directory.
        format!("attachments/{sha}/_report.pdf"),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        names,
        want.iter().map(String::as_str).collect(),
        "{names:?}"
    );
    assert_eq!(files[&format!("messages/{m}.eml")], alice_raw);
    assert_eq!(files[&format!("attachments/{sha}/_report.pdf")], alice_file);
    let person: Value = serde_json::from_slice(&files["person.json"]).unwrap();
    assert_eq!(person["contact"]["id"], contact);
    assert_eq!(person["contact"]["address"], "alice@example.org");
    assert_eq!(person["tickets"][0]["id"], alice_ticket.0);
    for (name, data) in &files {
        let text = String::from_utf8_lossy(data);
        assert!(!text.contains("bob@example.net"), "{name} names bob");
        assert!(!text.contains("bob's secret"), "{name} holds bob's file");
        assert!(!text.contains("thanks"), "{name} holds bob's reply");
    }
    assert!(!names.contains(format!("messages/{}.eml", bob_reply.0).as_str()));

    let r = post(
        &server,
        "/v1/privacy/export",
        &admin,
        json!({"email": "nobody@example.org"}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    assert!(!String::from_utf8_lossy(&r.body).contains("nobody@"));

    let entries = audit(&server, &admin).await;
    assert_eq!(
        entries.len(),
        1,
        "one export (the refused one is not audited)"
    );
    assert_eq!(
        (&entries[0]["action"], &entries[0]["agent"]),
        (&json!("export"), &json!("root"))
    );
    assert_eq!(entries[0]["counts"]["messages"], 1);
    let text = String::from_utf8(server.get("/metrics", Some(&admin)).await.body).unwrap();
    assert!(text.contains("mailroom_privacy_exports_total"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_revokes_their_tokens_and_leaves_agent_n() {
    let server = start().await;
    let ticket = new_ticket(&server, "alice@example.com", "Printer on fire", vec![]);
    let root = server.token_named("root", Role::Admin);
    let carol = server.token_named("carol admin", Role::Admin);
    let bob = server.token_named("bob", Role::Agent);
    let bob2 = server.token_named("bob", Role::Agent);
    let dave = server.token_named("dave", Role::Admin);

    // Bob closes a ticket; carol exports alice.
    let r = server
        .send(
            "PATCH",
            &format!("/v1/tickets/{ticket}"),
            Some(&bob),
            Some(r#"{"status":"closed"}"#),
        )
        .await;
    assert_eq!(r.json()["closed_by"], "bob");
    let r = post(
        &server,
        "/v1/privacy/export",
        &carol,
        json!({"email": "alice@example.com"}),
    )
    .await;
    assert_eq!(r.status, 200);

    let r = server
        .send("DELETE", "/v1/agents/bob", Some(&root), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["tokens_revoked"], 2);
    let bob_id = v["agent"].as_u64().unwrap();
    for token in [&bob, &bob2] {
        let r = server.get("/v1/tickets", Some(token)).await;
        assert_eq!((r.status, r.code().as_str()), (401, "invalid_token"));
    }
    let t = server
        .get(&format!("/v1/tickets/{ticket}"), Some(&root))
        .await
        .json();
    assert_eq!(t["ticket"]["closed_by"], format!("agent-{bob_id}"));
    let r = server
        .send("DELETE", "/v1/agents/bob", Some(&root), None)
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));

    // A name with a space, percent-encoded in the path.
    let r = server
        .send("DELETE", "/v1/agents/carol%20admin", Some(&root), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let carol_id = r.json()["agent"].as_u64().unwrap();
    assert_eq!(server.get("/v1/audit", Some(&carol)).await.status, 401);

    // An admin may delete their own agent: the answer arrives, then the token is dead.
    let r = server
        .send("DELETE", "/v1/agents/dave", Some(&dave), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tokens_revoked"], 1);
    let dave_id = r.json()["agent"].as_u64().unwrap();
    let r = server.get("/v1/audit", Some(&dave)).await;
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_token"));

    let entries = audit(&server, &root).await;
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["agent"].as_str().unwrap()))
        .collect();
    let dave_n = format!("agent-{dave_id}");
    let carol_n = format!("agent-{carol_id}");
    assert_eq!(
        seen,
        [
            ("agent_delete", dave_n.as_str()),
            ("agent_delete", "root"),
            ("agent_delete", "root"),
            ("export", carol_n.as_str()),
        ]
    );
    assert_eq!(entries[1]["counts"]["tokens_revoked"], 1);
    assert_eq!(entries[2]["counts"]["tokens_revoked"], 2);
    let text = String::from_utf8(server.get("/metrics", Some(&root)).await.body).unwrap();
    for name in [
        "mailroom_agents_deleted_total",
        "mailroom_ticket_status_updates_total",
    ] {
        assert!(text.contains(name), "{name}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_pages_newest_first() {
    let server = start().await;
    let admin = server.token_named("root", Role::Admin);
    for i in 0..5 {
        let r = post(
            &server,
            "/v1/privacy/erase",
            &admin,
            json!({"email": format!("nobody{i}@example.org")}),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let all = server.get("/v1/audit", Some(&admin)).await.json();
    let ids: Vec<u64> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(all["next"], Value::Null);
    let exact = server.get("/v1/audit?limit=5", Some(&admin)).await.json();
    assert_eq!(exact["next"], Value::Null, "no empty last page");

    let mut paged = Vec::new();
    let mut query = "/v1/audit?limit=2".to_string();
    loop {
        let v = server.get(&query, Some(&admin)).await.json();
        let page: Vec<u64> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        assert!(page.len() <= 2);
        paged.extend(page);
        match v["next"].as_u64() {
            Some(next) => query = format!("/v1/audit?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(paged, ids);
    server.stop().await;
}
