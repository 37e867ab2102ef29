//! The API over real sockets: a server on 127.0.0.1:0 and a small HTTP/1.1 client.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{deliver, exchange, loopback_config, metrics_handle, nets, seed, Server};
use mailroom_api::{router, ApiConfig, AppState};
use mailroom_pipeline::Settings;
use mailroom_store::{NewAttachment, Role, Store, StoreOptions, ThreadDecision, TicketId};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What a request may have changed.
fn snapshot(store: &Store, ticket: TicketId) -> (mailroom_store::FilterStats, usize, usize, usize) {
    (
        store.filter_stats().unwrap(),
        store.ticket(ticket).unwrap().unwrap().thread.len(),
        store.quarantine().unwrap().len(),
        store.token_list().unwrap().len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_case_gives_its_status_and_touches_nothing() {
    let server = Server::start(loopback_config()).await;
    let (ticket, _, spam) = seed(&server.store);
    let agent = server.token(Role::Agent);
    let admin = server.token(Role::Admin);
    let revoked = server.token(Role::Admin);
    let revoked_id = server.store.token_list().unwrap().last().unwrap().id;
    assert!(server.store.token_revoke(revoked_id).unwrap());
    let (_, expired) = server
        .store
        .token_create("old", Role::Admin, Some(1))
        .unwrap();
    let before = snapshot(&server.store, ticket);
    let feedback = format!("/v1/messages/{}/feedback", spam.0);
    let spam_body = Some(r#"{"label":"spam"}"#);

    // Missing, wrong, revoked, expired: 401, and nothing changes.
    let r = server.send("POST", &feedback, None, spam_body).await;
    assert_eq!((r.status, r.code().as_str()), (401, "missing_token"));
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let wrong = format!("mr_{}", "A".repeat(43));
    for token in [
        wrong.as_str(),
        "garbage",
        revoked.as_str(),
        expired.as_str(),
    ] {
        let r = server.send("POST", &feedback, Some(token), spam_body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "invalid_token"),
            "{token}"
        );
    }
    let basic = format!("Basic {}", "YWxhZGRpbjpvcGVuc2VzYW1l");
    let r = server
        .raw(
            "GET",
            "/v1/tickets",
            &[format!("Authorization: {basic}")],
            None,
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (401, "missing_token"));

    // Wrong role: 403 on admin routes.
    for path in ["/v1/config", "/metrics"] {
        let r = server.get(path, Some(&agent)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "forbidden_role"),
            "{path}"
        );
    }
    assert_eq!(snapshot(&server.store, ticket), before, "nothing changed");

    // The right tokens get in; admins may do what agents do.
    for token in [&agent, &admin] {
        let r = server.get("/v1/tickets", Some(token)).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["tickets"][0]["id"], ticket.0);
    }
    let r = server.get("/v1/config", Some(&admin)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["secret"], "[redacted]");
    let r = server.get("/metrics", Some(&admin)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("mailroom_api_requests_total"), "{text}");
    assert!(text.contains("mailroom_api_auth_failures_total"), "{text}");
    assert!(!text.contains(&agent) && !text.contains("127.0.0.1"));
    let r = server.get("/healthz", None).await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));

    // Live reload: agents only from 10/8 now, admins still from loopback.
    server.reconfigure(|c| c.agent_networks = nets(&["10.0.0.0/8"]));
    let r = server.get("/v1/tickets", Some(&agent)).await;
    assert_eq!((r.status, r.code().as_str()), (403, "network_not_allowed"));
    let r = server
        .send("POST", &feedback, Some(&agent), spam_body)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(server.get("/v1/tickets", Some(&admin)).await.status, 200);
    assert_eq!(
        snapshot(&server.store, ticket),
        before,
        "still nothing changed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_the_networks_gets_403_whatever_it_sends() {
    let server = Server::start(ApiConfig {
        agent_networks: nets(&["10.0.0.0/8"]),
        admin_networks: nets(&["192.0.2.0/24", "2001:db8::/32"]),
        auth_failures_per_minute: 2,
        ..ApiConfig::default()
    })
    .await;
    let (ticket, _, spam) = seed(&server.store);
    let admin = server.token(Role::Admin);
    let before = snapshot(&server.store, ticket);
    for _ in 0..4 {
        for token in [Some(admin.as_str()), None, Some("wrong")] {
            let r = server
                .send(
                    "POST",
                    &format!("/v1/messages/{}/feedback", spam.0),
                    token,
                    Some(r#"{"label":"spam"}"#),
                )
                .await;
            assert_eq!((r.status, r.code().as_str()), (403, "network_not_allowed"));
        }
    }
    let r = server.get("/v1/nonexistent", Some(&admin)).await;
    assert_eq!(r.status, 403);
    assert_eq!(snapshot(&server.store, ticket), before);
    assert_eq!(server.get("/healthz", None).await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_address() {
    let server = Server::start(ApiConfig {
        auth_failures_per_minute: 3,
        ..ApiConfig::default()
    })
    .await;
    let agent = server.token(Role::Agent);
    for _ in 0..3 {
        assert_eq!(server.get("/v1/tickets", Some("nope")).await.status, 401);
    }
    let r = server.get("/v1/tickets", Some("nope")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "too_many_auth_failures")
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let r = server.get("/v1/tickets", Some(&agent)).await;
    assert_eq!(
        r.status, 429,
        "blocked even with a good token for the minute"
    );
    assert_eq!(server.get("/healthz", None).await.status, 200);

    // Another loopback address is counted apart.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if socket.bind("127.0.0.2:0".parse().unwrap()).is_ok() {
        let stream = socket.connect(server.addr).await.unwrap();
        let r = exchange(
            stream,
            "GET",
            "/v1/tickets",
            &[format!("Authorization: Bearer {agent}")],
            None,
        )
        .await;
        assert_eq!(r.status, 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spam_feedback_moves_the_message_and_trains_once() {
    let server = Server::start(loopback_config()).await;
    let (ticket, first, spam) = seed(&server.store);
    let agent = server.token(Role::Agent);
    let stats = server.get("/v1/filter/stats", Some(&agent)).await.json();
    assert_eq!(stats["spam_messages"], 0);

    let path = format!("/v1/messages/{}/feedback", spam.0);
    let r = server
        .send("POST", &path, Some(&agent), Some(r#"{"label":"spam"}"#))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["training"], "learned");
    assert_eq!(v["action"], "quarantined");
    assert_eq!(v["ticket"], ticket.0);
    assert_eq!(v["ticket_deleted"], false);
    let stats = server.get("/v1/filter/stats", Some(&agent)).await.json();
    assert_eq!(stats["spam_messages"], 1);
    let tokens = stats["tokens"].as_u64().unwrap();
    assert!(tokens > 0);

    let t = server
        .get(&format!("/v1/tickets/{}", ticket.0), Some(&agent))
        .await
        .json();
    let ids: Vec<u64> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [first.0]);
    let q = server.get("/v1/quarantine", Some(&agent)).await.json();
    assert_eq!(q["entries"][0]["message"]["id"], spam.0);
    assert_eq!(q["entries"][0]["target_ticket"], ticket.0);
    let one = server
        .get(&format!("/v1/quarantine/{}", spam.0), Some(&agent))
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["message"]["quarantined"], true);

    // Twice: a no-op.
    let r = server
        .send("POST", &path, Some(&agent), Some(r#"{"label":"spam"}"#))
        .await
        .json();
    assert_eq!(
        (r["training"].as_str(), r["action"].as_str()),
        (Some("already_learned"), Some("unchanged"))
    );
    let again = server.get("/v1/filter/stats", Some(&agent)).await.json();
    assert_eq!(again["spam_messages"], 1);
    assert_eq!(again["tokens"], tokens);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_makes_a_ticket_and_trains_ham_and_delete_removes() {
    let server = Server::start(loopback_config()).await;
    let agent = server.token(Role::Agent);
    let (old_ticket, lone, _) = deliver(
        &server.store,
        "bob@example.com",
        "Invoice overdue",
        "please pay the attached invoice today",
        ThreadDecision::New {
            subject: "Invoice overdue".into(),
        },
        vec![],
    );
    let old_ticket = old_ticket.unwrap();
    let r = server
        .send(
            "POST",
            &format!("/v1/messages/{}/feedback", lone.0),
            Some(&agent),
            Some(r#"{"label":"spam"}"#),
        )
        .await
        .json();
    assert_eq!(r["ticket_deleted"], true);
    let gone = server
        .get(&format!("/v1/tickets/{}", old_ticket.0), Some(&agent))
        .await;
    assert_eq!((gone.status, gone.code().as_str()), (404, "not_found"));

    let release = format!("/v1/quarantine/{}/release", lone.0);
    let r = server.send("POST", &release, Some(&agent), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["new_ticket"], true);
    assert_eq!(v["training"], "relabeled");
    let new_ticket = v["ticket"].as_u64().unwrap();
    assert_ne!(new_ticket, old_ticket.0);
    let t = server
        .get(&format!("/v1/tickets/{new_ticket}"), Some(&agent))
        .await
        .json();
    assert_eq!(t["ticket"]["requester"], "bob@example.com");
    assert_eq!(t["ticket"]["subject"], "Invoice overdue");
    assert_eq!(t["messages"][0]["id"], lone.0);
    let stats = server.get("/v1/filter/stats", Some(&agent)).await.json();
    assert_eq!(
        (
            stats["ham_messages"].as_u64(),
            stats["spam_messages"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let r = server.send("POST", &release, Some(&agent), None).await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));

    // Delete.
    let (_, junk, _) = deliver(
        &server.store,
        "spammer@example.net",
        "Free money",
        "free money now",
        ThreadDecision::Quarantine {
            ticket: None,
            subject: "Free money".into(),
        },
        vec![],
    );
    let path = format!("/v1/quarantine/{}", junk.0);
    assert_eq!(server.get(&path, Some(&agent)).await.status, 200);
    let r = server.send("DELETE", &path, Some(&agent), None).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    assert_eq!(server.get(&path, Some(&agent)).await.status, 404);
    let raw = server
        .get(&format!("/v1/messages/{}/raw", junk.0), Some(&agent))
        .await;
    assert_eq!(raw.status, 404);
    let r = server.send("DELETE", &path, Some(&agent), None).await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    server.stop().await;
}

/// Method, path, content type, body, expected status and error code.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_never_a_5xx() {
    let server = Server::start(ApiConfig {
        max_body_bytes: 1024,
        ..loopback_config()
    })
    .await;
    let (ticket, _, spam) = seed(&server.store);
    let agent = server.token(Role::Agent);
    let auth = format!("Authorization: Bearer {agent}");
    let feedback = format!("/v1/messages/{}/feedback", spam.0);
    let before = snapshot(&server.store, ticket);

    let huge = vec![b'x'; 1_000_000];
    let r = server
        .raw(
            "POST",
            &feedback,
            &[auth.clone(), "Content-Type: application/json".into()],
            Some(&huge),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (413, "body_too_large"));
    // Chunked, so no Content-Length to refuse at once: cut off while reading.
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1000).as_bytes());
        chunked.extend_from_slice(&[b' '; 1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = server
        .raw(
            "POST",
            &feedback,
            &[
                auth.clone(),
                "Content-Type: application/json".into(),
                "Transfer-Encoding: chunked".into(),
            ],
            Some(&chunked),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (413, "body_too_large"));

    let cases: &[Case] = &[
        (
            "POST",
            &feedback,
            Some("application/json"),
            Some("{not json"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            &feedback,
            Some("application/json"),
            Some(r#"{"label":"eggs"}"#),
            400,
            "invalid_body",
        ),
        (
            "POST",
            &feedback,
            Some("application/json"),
            Some(r#"{"label":"spam","x":1}"#),
            400,
            "invalid_body",
        ),
        (
            "POST",
            &feedback,
            Some("application/json"),
            Some("[]"),
            400,
            "invalid_body",
        ),
        (
            "POST",
            &feedback,
            Some("text/plain"),
            Some(r#"{"label":"spam"}"#),
            415,
            "unsupported_media_type",
        ),
        ("POST", &feedback, None, None, 415, "unsupported_media_type"),
        (
            "POST",
            "/v1/messages/999999/feedback",
            Some("application/json"),
            Some(r#"{"label":"ham"}"#),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/messages/abc/feedback",
            Some("application/json"),
            Some(r#"{"label":"ham"}"#),
            400,
            "invalid_path",
        ),
        ("GET", "/v1/tickets/abc", None, None, 400, "invalid_path"),
        (
            "GET",
            "/v1/tickets/18446744073709551616",
            None,
            None,
            400,
            "invalid_path",
        ),
        ("GET", "/v1/tickets/999", None, None, 404, "not_found"),
        (
            "GET",
            "/v1/tickets?limit=0",
            None,
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/tickets?limit=100000",
            None,
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/tickets?status=pending",
            None,
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/tickets?flagged=maybe",
            None,
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/tickets?bogus=1",
            None,
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/tickets?cursor=xyz",
            None,
            None,
            400,
            "invalid_cursor",
        ),
        (
            "GET",
            "/v1/quarantine?cursor=-1",
            None,
            None,
            400,
            "invalid_cursor",
        ),
        (
            "GET",
            "/v1/attachments/1/nothex",
            None,
            None,
            400,
            "invalid_path",
        ),
        (
            "GET",
            "/v1/attachments/1/0000000000000000000000000000000000000000000000000000000000000000",
            None,
            None,
            404,
            "not_found",
        ),
        ("GET", "/v1/messages/999/raw", None, None, 404, "not_found"),
        ("GET", "/v1/nope", None, None, 404, "not_found"),
        ("PUT", "/v1/tickets", None, None, 405, "method_not_allowed"),
        (
            "DELETE",
            "/v1/tickets/1",
            None,
            None,
            405,
            "method_not_allowed",
        ),
        ("GET", &feedback, None, None, 405, "method_not_allowed"),
    ];
    for (method, path, ct, body, status, code) in cases {
        let mut headers = vec![auth.clone()];
        if let Some(ct) = ct {
            headers.push(format!("Content-Type: {ct}"));
        }
        let r = server
            .raw(method, path, &headers, body.map(str::as_bytes))
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (*status, *code),
            "{method} {path} {body:?}"
        );
    }
    assert_eq!(
        snapshot(&server.store, ticket),
        before,
        "bad input changed nothing"
    );

    // Pagination works with good input.
    for i in 0..3 {
        deliver(
            &server.store,
            "frank@example.com",
            &format!("Question {i}"),
            "hello",
            ThreadDecision::New {
                subject: format!("Question {i}"),
            },
            vec![],
        );
    }
    let mut seen = Vec::new();
    let mut next = String::new();
    loop {
        let q = if next.is_empty() {
            "/v1/tickets?limit=2".to_string()
        } else {
            format!("/v1/tickets?limit=2&cursor={next}")
        };
        let v = server.get(&q, Some(&agent)).await.json();
        seen.extend(
            v["tickets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_u64().unwrap()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => next = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, [4, 3, 2, 1]);
    let v = server
        .get(
            "/v1/tickets?requester=FRANK%40example.com&flagged=false",
            Some(&agent),
        )
        .await
        .json();
    assert_eq!(v["tickets"].as_array().unwrap().len(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_download_with_a_hostile_filename() {
    let server = Server::start(loopback_config()).await;
    let agent = server.token(Role::Agent);
    let hostile = "..\\../../etc/passwd\r\nSet-Cookie: session=evil; \"x\".html";
    let data = b"<script>alert(1)</script>".to_vec();
    let (ticket, message, raw) = deliver(
        &server.store,
        "grace@example.com",
        "See attached",
        "attached",
        ThreadDecision::New {
            subject: "See attached".into(),
        },
        vec![NewAttachment {
            filename: Some(hostile.into()),
            content_type: "text/html\r\nX-Evil: 1".into(),
            data: data.clone(),
            retention_class: "attachment".into(),
        }],
    );
    let t = server
        .get(&format!("/v1/tickets/{}", ticket.unwrap().0), Some(&agent))
        .await
        .json();
    let a = &t["messages"][0]["attachments"][0];
    assert_eq!(a["filename"], hostile, "shown as sent, JSON-escaped");
    let link = a["download"].as_str().unwrap().to_string();
    let r = server.get(&link, Some(&agent)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, data);
    let cd = r.header("content-disposition").unwrap();
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(
        !cd.contains('/') && !cd.contains('\\') && !cd.contains(".."),
        "{cd}"
    );
    assert!(cd.contains("passwd"), "{cd}");
    assert!(r.header("set-cookie").is_none() && r.header("x-evil").is_none());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r
        .headers
        .iter()
        .all(|(n, _)| !n.eq_ignore_ascii_case("session")));

    let r = server
        .get(&format!("/v1/messages/{}/raw", message.0), Some(&agent))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("message/rfc822"));
    assert_eq!(r.body, raw);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_parses_and_lists_every_route() {
    let server = Server::start(loopback_config()).await;
    let agent = server.token(Role::Agent);
    let admin = server.token(Role::Admin);
    assert_eq!(server.get("/openapi.json", None).await.status, 401);
    let r = server.get("/openapi.json", Some(&agent)).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(op["responses"]["default"].is_object(), "{method} {path}");
            assert_eq!(
                op.get("security").is_some(),
                path != "/healthz",
                "{method} {path}"
            );
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/v1/tickets"),
        ("GET", "/v1/tickets/{id}"),
        ("PATCH", "/v1/tickets/{id}"),
        ("GET", "/v1/messages/{id}/raw"),
        ("POST", "/v1/messages/{id}/feedback"),
        ("GET", "/v1/attachments/{contact}/{sha256}"),
        ("GET", "/v1/quarantine"),
        ("GET", "/v1/quarantine/{id}"),
        ("DELETE", "/v1/quarantine/{id}"),
        ("POST", "/v1/quarantine/{id}/release"),
        ("GET", "/v1/filter/stats"),
        ("GET", "/v1/config"),
        ("POST", "/v1/privacy/erase"),
        ("POST", "/v1/privacy/export"),
        ("GET", "/v1/audit"),
        ("DELETE", "/v1/agents/{name}"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(documented, expected);

    // Every documented route is served (no router 404 or 405), and schemas resolve.
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "999999")
            .replace("{contact}", "1")
            .replace("{sha256}", &"0".repeat(64))
            .replace("{name}", "nobody");
        let r = server.send(method, &concrete, Some(&admin), None).await;
        assert_ne!(r.status, 405, "{method} {path}");
        if r.status == 404 {
            assert_ne!(
                r.json()["error"]["message"],
                "no such route",
                "{method} {path}"
            );
        }
        assert!(r.status < 500, "{method} {path}: {r:?}");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = serde_json::to_string(&doc).unwrap();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_a_certificate_is_configured() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let server = Server::start(ApiConfig {
        tls: Some(Arc::new(server_config)),
        ..loopback_config()
    })
    .await;
    let agent = server.token(Role::Agent);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let r = exchange(
        tls,
        "GET",
        "/v1/tickets",
        &[format!("Authorization: Bearer {agent}")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_without_connect_info_fails_closed() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let secret = store.token_create("t", Role::Admin, None).unwrap().1;
    let (_s, settings) = watch::channel(Arc::new(Settings::default()));
    let (_a, api) = watch::channel(Arc::new(ApiConfig::default()));
    let (_c, config) = watch::channel(Arc::new(Value::Null));
    let app = router(AppState::new(
        store,
        settings,
        api,
        config,
        metrics_handle(),
    ));
    let req = axum::http::Request::get("/v1/tickets")
        .header("authorization", format!("Bearer {secret}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(req).await.unwrap();
    assert_eq!(response.status(), 500);
}
