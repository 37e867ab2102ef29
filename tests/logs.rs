//! Logs carry ids, never tokens, bodies or addresses: the real server at debug level, real SMTP
//! and API traffic, then the whole log is searched for every secret and personal string sent.

mod common;

use std::time::Duration;

use common::{message, Env};
use serde_json::json;

#[test]
fn no_token_body_or_address_reaches_the_log() {
    // The filter classifies (its code paths log too) but never quarantines: the message's
    // score varies with the random parts of its Received: header, and the test needs a ticket.
    let env = Env::with_config("", "", "[filter]\nham_cutoff = 0.99\nspam_cutoff = 1.0\n");
    let log = env.dir.path().join("server.log");
    let server = env.serve_logging(
        &log,
        "debug,sled=info,hyper=info,hyper_util=info,h2=info,rustls=info,tower=info,notify=info",
    );
    let (_id, token) = env.token("desk-agent", "agent", None);

    let sender = "loggy.person@example.org";
    let subject = "Subject-marker-7f3a91";
    let body = "Body-marker-c0ffee and a phone number 555-0199";
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    let r = c.send_mail(
        sender,
        &["help@support.example.com"],
        &message(sender, subject, "", body),
    );
    assert_eq!(r.code, 250);
    // A refused recipient and a wrong token too: error paths log as well.
    let r = c.send_mail(sender, &["someone@elsewhere.example.net"], b"x");
    assert_eq!(r.code, 550);
    assert_eq!(c.cmd("QUIT").code, 221);
    env.wait_processed(Duration::from_secs(30));

    let api = server.api();
    let list = api.get("/v1/tickets", Some(&token));
    assert_eq!(list.status, 200);
    let wrong = api.get("/v1/tickets", Some("mr_not-the-right-secret-at-all"));
    assert_eq!(wrong.status, 401);
    let detail_id = env.tickets()[0]["id"].as_u64().unwrap();
    let detail = env.cli_json(&["tickets", "show", &detail_id.to_string(), "--json"]);
    let message_id = detail["thread"][0]["id"].as_u64().unwrap();
    let fb = api.post(
        &format!("/v1/messages/{message_id}/feedback"),
        Some(&token),
        Some(&json!({"label": "spam"})),
    );
    assert_eq!(fb.status, 200, "{fb:?}");
    assert!(server.terminate());

    let text = std::fs::read_to_string(&log).expect("log written");
    assert!(
        text.contains("message accepted"),
        "the log is really written at debug level: {text}"
    );
    for secret in [
        token.as_str(),
        "mr_not-the-right-secret-at-all",
        sender,
        "someone@elsewhere.example.net",
        "help@support.example.com",
        subject,
        "Body-marker-c0ffee",
        "555-0199",
    ] {
        assert!(!text.contains(secret), "{secret:?} appears in the log");
    }
}
