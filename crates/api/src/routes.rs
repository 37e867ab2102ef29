//! The handlers. Store calls block, so each runs on the blocking pool.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use mailroom_pipeline::{Filter, Settings};
use mailroom_spamfilter::Label;
use mailroom_store::{
    validate_token_name, ContactId, FeedbackAction, MessageKey, Store, TicketId, TicketQuery,
    TicketStatus,
};

use crate::auth::Caller;
use crate::dto::{
    check_email, AgentDeleted, AuditList, AuditParams, EraseRequest, ErasureReport, ExportArchive,
    ExportRequest, FeedbackLabel, FeedbackRequest, FeedbackResponse, FilterStats, Health,
    PageParams, QuarantineEntry, QuarantineList, ReleaseResponse, TicketDetail, TicketList,
    TicketParams, TicketSummary, TicketUpdate,
};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::metrics::names;
use crate::AppState;

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 500;
/// Default page size of the audit log.
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;
/// Largest page size of the audit log.
pub const MAX_AUDIT_LIMIT: u32 = 1000;

/// Run a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store task failed");
            ApiError::internal()
        })?
}

fn page_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        l @ 1..=MAX_LIMIT => Ok(l as usize),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

fn cursor(c: Option<&str>) -> Result<Option<u64>, ApiError> {
    match c {
        None => Ok(None),
        Some(c) => match c.parse::<u64>() {
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(ApiError::bad_request(
                "invalid_cursor",
                "cursor must be a next_cursor value from a previous page",
            )),
        },
    }
}

/// The filter to train with: the configured one, or the defaults when it is off for incoming
/// mail (feedback still trains, as `filter train` does).
fn filter_of(settings: &Settings) -> Filter {
    settings.filter.clone().unwrap_or_default()
}

fn today() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / 86_400) as u32
}

/// Liveness: answers while the server runs. Needs no token.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
    })
}

/// Tickets, newest first, filtered and paged.
#[utoipa::path(get, path = "/v1/tickets", tag = "tickets", params(TicketParams),
    responses((status = 200, description = "A page of tickets", body = TicketList)))]
pub async fn list_tickets(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<TicketParams>,
) -> Result<Json<TicketList>, ApiError> {
    let query = TicketQuery {
        status: q.status.map(TicketStatus::from),
        requester: q.requester,
        flagged: q.flagged,
        unsure: q.unsure,
        before: cursor(q.cursor.as_deref())?.map(TicketId),
        limit: page_limit(q.limit)?,
    };
    let page = blocking(&app.store, move |s| Ok(s.ticket_page(&query)?)).await?;
    Ok(Json(TicketList {
        tickets: page.tickets.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|t| t.0.to_string()),
    }))
}

/// One ticket with its messages.
#[utoipa::path(get, path = "/v1/tickets/{id}", tag = "tickets",
    params(("id" = u64, Path, description = "Ticket number")),
    responses((status = 200, description = "The ticket", body = TicketDetail)))]
pub async fn get_ticket(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<TicketDetail>, ApiError> {
    let detail = blocking(&app.store, move |s| Ok(s.ticket(TicketId(id))?)).await?;
    match detail {
        Some(d) => Ok(Json(d.into())),
        None => Err(ApiError::not_found(format!("no ticket {id}"))),
    }
}

/// Open or close a ticket. Closing records when, and which agent (the token's); reopening
/// clears both. Setting the status it already has changes nothing.
#[utoipa::path(patch, path = "/v1/tickets/{id}", tag = "tickets",
    params(("id" = u64, Path, description = "Ticket number")),
    request_body = TicketUpdate,
    responses((status = 200, description = "The ticket as it is now", body = TicketSummary)))]
pub async fn update_ticket(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<u64>,
    ApiJson(body): ApiJson<TicketUpdate>,
) -> Result<Json<TicketSummary>, ApiError> {
    let status = TicketStatus::from(body.status);
    let actor = caller.actor();
    let summary = blocking(&app.store, move |s| {
        Ok(s.ticket_set_status(TicketId(id), status, actor)?)
    })
    .await?;
    let Some(summary) = summary else {
        return Err(ApiError::not_found(format!("no ticket {id}")));
    };
    let label = match status {
        TicketStatus::Open => "open",
        TicketStatus::Closed => "closed",
    };
    metrics::counter!(names::TICKET_STATUS_UPDATES, "status" => label).increment(1);
    Ok(Json(summary.into()))
}

/// A message exactly as received (`.eml`).
#[utoipa::path(get, path = "/v1/messages/{id}/raw", tag = "messages",
    params(("id" = u64, Path, description = "Message id")),
    responses((status = 200, description = "The raw message", content_type = "message/rfc822",
        body = String)))]
pub async fn message_raw(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Response, ApiError> {
    let raw = blocking(&app.store, move |s| Ok(s.message_raw(MessageKey(id))?)).await?;
    let Some(raw) = raw else {
        return Err(ApiError::not_found(format!("no message {id}")));
    };
    let disposition = format!("attachment; filename=\"message-{id}.eml\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("message/rfc822"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::try_from(disposition).map_err(|_| ApiError::internal())?,
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        raw,
    )
        .into_response())
}

/// Keep a file name safe for a `Content-Disposition` header: its last path component, no
/// control characters, quotes, backslashes or separators, no leading dots, at most 150
/// characters; `attachment` when nothing is left.
pub fn sanitize_filename(name: Option<&str>) -> String {
    let name = name.unwrap_or("");
    let last = name
        .rsplit(['/', '\\'])
        .find(|part| !part.trim().is_empty())
        .unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '"' | '\'' | ';' | ':' | '*' | '?' | '<' | '>' | '|' | '%' => '_',
            c => c,
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let cleaned: String = cleaned.chars().take(150).collect();
    if cleaned.is_empty() {
        "attachment".to_string()
    } else {
        cleaned
    }
}

/// `attachment; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
pub fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// A content type from an attachment record, if it is a plain `type/subtype` (parameters
/// dropped); else `application/octet-stream`.
fn safe_content_type(ct: &str) -> HeaderValue {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match essence.split_once('/') {
        Some((t, s)) if token(t) && token(s) => HeaderValue::from_str(&essence)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
        _ => HeaderValue::from_static("application/octet-stream"),
    }
}

/// Download an attachment. The type comes from its record; the file name is sanitised.
#[utoipa::path(get, path = "/v1/attachments/{contact}/{sha256}", tag = "messages",
    params(("contact" = u64, Path, description = "Owner contact id"),
        ("sha256" = String, Path, description = "Hex SHA-256 of the content",
            pattern = "^[0-9a-fA-F]{64}$")),
    responses((status = 200, description = "The attachment, with the type it was sent as",
        content_type = "*/*")))]
pub async fn attachment(
    State(app): State<AppState>,
    ApiPath((contact, sha256)): ApiPath<(u64, String)>,
) -> Result<Response, ApiError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "invalid_path",
            "sha256 must be 64 hex digits",
        ));
    }
    let sha = sha256.to_ascii_lowercase();
    let found = blocking(&app.store, move |s| {
        Ok(s.attachment_download(ContactId(contact), &sha)?)
    })
    .await?;
    let Some(a) = found else {
        return Err(ApiError::not_found("no such attachment"));
    };
    let name = sanitize_filename(a.filename.as_deref());
    let disposition =
        HeaderValue::try_from(content_disposition(&name)).map_err(|_| ApiError::internal())?;
    Ok((
        [
            (header::CONTENT_TYPE, safe_content_type(&a.content_type)),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox; default-src 'none'"),
            ),
        ],
        a.bytes,
    )
        .into_response())
}

/// Mark a message as spam or not spam: trains or untrains the filter at once (the same
/// label twice changes nothing). Spam moves a message out of its ticket into the
/// quarantine; ham releases a quarantined message.
#[utoipa::path(post, path = "/v1/messages/{id}/feedback", tag = "messages",
    params(("id" = u64, Path, description = "Message id")),
    request_body = FeedbackRequest,
    responses((status = 200, description = "Trained (and moved)", body = FeedbackResponse)))]
pub async fn feedback(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
    ApiJson(body): ApiJson<FeedbackRequest>,
) -> Result<Json<FeedbackResponse>, ApiError> {
    let settings: Arc<Settings> = app.settings.borrow().clone();
    let label = match body.label {
        FeedbackLabel::Spam => Label::Spam,
        FeedbackLabel::Ham => Label::Ham,
    };
    let outcome = blocking(&app.store, move |s| {
        let filter = filter_of(&settings);
        Ok(s.message_feedback(
            MessageKey(id),
            label,
            filter.tokenizer(),
            filter.classifier(),
            today(),
        )?)
    })
    .await?;
    let response = FeedbackResponse::new(id, body.label, outcome);
    let action = match outcome.action {
        FeedbackAction::Unchanged => "unchanged",
        FeedbackAction::Quarantined { .. } => "quarantined",
        FeedbackAction::Released { .. } => "released",
    };
    metrics::counter!(names::FEEDBACK, "label" => label.to_string(), "action" => action)
        .increment(1);
    Ok(Json(response))
}

/// Quarantined messages, newest first, paged.
#[utoipa::path(get, path = "/v1/quarantine", tag = "quarantine", params(PageParams),
    responses((status = 200, description = "A page of the quarantine", body = QuarantineList)))]
pub async fn list_quarantine(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<QuarantineList>, ApiError> {
    let limit = page_limit(q.limit)?;
    let before = cursor(q.cursor.as_deref())?.map(MessageKey);
    let page = blocking(&app.store, move |s| Ok(s.quarantine_page(before, limit)?)).await?;
    Ok(Json(QuarantineList {
        entries: page.entries.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|m| m.0.to_string()),
    }))
}

/// One quarantined message.
#[utoipa::path(get, path = "/v1/quarantine/{id}", tag = "quarantine",
    params(("id" = u64, Path, description = "Message id")),
    responses((status = 200, description = "The quarantined message", body = QuarantineEntry)))]
pub async fn get_quarantined(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<QuarantineEntry>, ApiError> {
    let entry = blocking(&app.store, move |s| Ok(s.quarantine_entry(MessageKey(id))?)).await?;
    match entry {
        Some(e) => Ok(Json(e.into())),
        None => Err(ApiError::not_found(format!("no quarantined message {id}"))),
    }
}

/// Release a quarantined message: it joins the ticket it would have joined (while that
/// ticket exists) or opens a new one, and the filter learns it as ham.
#[utoipa::path(post, path = "/v1/quarantine/{id}/release", tag = "quarantine",
    params(("id" = u64, Path, description = "Message id")),
    responses((status = 200, description = "Released", body = ReleaseResponse)))]
pub async fn release(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let settings: Arc<Settings> = app.settings.borrow().clone();
    let outcome = blocking(&app.store, move |s| {
        if s.quarantine_entry(MessageKey(id))?.is_none() {
            return Err(ApiError::not_found(format!("no quarantined message {id}")));
        }
        let filter = filter_of(&settings);
        Ok(s.message_feedback(
            MessageKey(id),
            Label::Ham,
            filter.tokenizer(),
            filter.classifier(),
            today(),
        )?)
    })
    .await?;
    match outcome.action {
        FeedbackAction::Released { ticket, new_ticket } => {
            metrics::counter!(names::QUARANTINE_RELEASED).increment(1);
            Ok(Json(ReleaseResponse {
                message: id,
                ticket: ticket.0,
                new_ticket,
                training: outcome.training.into(),
            }))
        }
        _ => Err(ApiError::not_found(format!(
            "message {id} left the quarantine meanwhile"
        ))),
    }
}

/// Delete a quarantined message for good (with its attachments no other message uses).
#[utoipa::path(delete, path = "/v1/quarantine/{id}", tag = "quarantine",
    params(("id" = u64, Path, description = "Message id")),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_quarantined(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    let deleted = blocking(
        &app.store,
        move |s| Ok(s.quarantine_delete(MessageKey(id))?),
    )
    .await?;
    if deleted {
        metrics::counter!(names::QUARANTINE_DELETED).increment(1);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no quarantined message {id}")))
    }
}

/// The spam filter's model size and counts.
#[utoipa::path(get, path = "/v1/filter/stats", tag = "filter",
    responses((status = 200, description = "Counts", body = FilterStats)))]
pub async fn filter_stats(State(app): State<AppState>) -> Result<Json<FilterStats>, ApiError> {
    let stats = blocking(&app.store, |s| Ok(s.filter_stats()?)).await?;
    Ok(Json(stats.into()))
}

/// 422 `invalid_email` for an email field that is not an address (the message never
/// repeats it).
fn email_field(email: &str) -> Result<(), ApiError> {
    check_email(email)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email", m))
}

/// Erase a person (right to erasure): their contact, the tickets they opened with every
/// message on them, their messages on other tickets, attachments, quarantine, orphan, spool
/// and failed entries, learned-message records; then their key is destroyed, so copies in
/// old database segments and in backups are unreadable too. Writes an audit record (counts
/// only). With `dry_run`, only reports what would go. An address that is not a contact gives
/// `found: false` (spool and failed entries from it are still removed). Admins only. The
/// address goes in the body, never in the URL, and is never logged.
#[utoipa::path(post, path = "/v1/privacy/erase", tag = "privacy",
    request_body = EraseRequest,
    responses((status = 200, description = "What was (or would be) removed: counts and ids",
        body = ErasureReport)))]
pub async fn erase(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<EraseRequest>,
) -> Result<Json<ErasureReport>, ApiError> {
    email_field(&body.email)?;
    let actor = caller.actor();
    let EraseRequest { email, dry_run } = body;
    let report = blocking(&app.store, move |s| {
        Ok(s.erase_person(&email, dry_run, actor)?)
    })
    .await?;
    metrics::counter!(names::PRIVACY_ERASURES,
        "dry_run" => if dry_run { "true" } else { "false" },
        "found" => if report.found { "true" } else { "false" })
    .increment(1);
    Ok(Json(report.into()))
}

/// Export everything stored about a person (right of access) as a `.tar.gz`: `person.json`
/// (contact, the tickets they opened, other tickets they wrote into), `messages/<id>.json` and
/// `messages/<id>.eml` per message, `attachments/<sha256>/<name>` per attachment and
/// `manifest.json`. Writes an audit record (counts only). Admins only; the address goes in the
/// body and is never logged.
#[utoipa::path(post, path = "/v1/privacy/export", tag = "privacy",
    request_body = ExportRequest,
    responses((status = 200, description = "The archive", content_type = "application/gzip",
        body = ExportArchive,
        headers(("Content-Disposition" = String,
            description = "`attachment; filename=\"mailroom-export-<contact id>.tar.gz\"`"))),
        (status = 404, description = "The address is not a contact (or was erased)",
            body = ErrorBody)))]
pub async fn export(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<ExportRequest>,
) -> Result<Response, ApiError> {
    email_field(&body.email)?;
    let actor = caller.actor();
    let email = body.email;
    let archive = blocking(&app.store, move |s| {
        let Some(export) = s.export_person(&email, actor)? else {
            return Ok(None);
        };
        // An error's text may name a file of the archive (an attachment's name): log its kind.
        let bytes = mailroom_store::write_export_archive(&export, Vec::new()).map_err(|e| {
            tracing::error!(kind = ?e.kind(), "writing an export archive failed");
            ApiError::internal()
        })?;
        Ok(Some((export.contact.id, bytes)))
    })
    .await?;
    let Some((contact, bytes)) = archive else {
        return Err(ApiError::not_found("this address is not a contact"));
    };
    metrics::counter!(names::PRIVACY_EXPORTS).increment(1);
    let disposition = format!("attachment; filename=\"mailroom-export-{contact}.tar.gz\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::try_from(disposition).map_err(|_| ApiError::internal())?,
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response())
}

/// The audit log, newest first: erasures, exports, retention runs, backups, restores and
/// agent deletions, with who did them and counts (never an address). Admins only.
#[utoipa::path(get, path = "/v1/audit", tag = "privacy", params(AuditParams),
    responses((status = 200, description = "A page of the audit log", body = AuditList)))]
pub async fn audit(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = match q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT) {
        l @ 1..=MAX_AUDIT_LIMIT => l as usize,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and {MAX_AUDIT_LIMIT}"),
            ))
        }
    };
    // Ids are small, but the document says int64: keep to it.
    let before = match q.before {
        Some(b) if b > i64::MAX as u64 => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("before must be at most {}", i64::MAX),
            ))
        }
        b => b,
    };
    let mut entries = blocking(&app.store, move |s| Ok(s.audit_list(before, limit + 1)?)).await?;
    let next = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(AuditList {
        entries: entries.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// Delete an agent: revoke every token of theirs, remove their record and destroy their key,
/// so tickets they closed and audit records of what they did show `agent-N` from then on.
/// Admins only. An admin may delete their own agent: the response still arrives, and their
/// token stops working right after it (401).
#[utoipa::path(delete, path = "/v1/agents/{name}", tag = "admin",
    params(("name" = String, Path, description = "The agent's name (the name its tokens were \
        made with)", min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$")),
    responses((status = 200, description = "Deleted", body = AgentDeleted)))]
pub async fn delete_agent(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<AgentDeleted>, ApiError> {
    validate_token_name(&name)
        .map_err(|m| ApiError::bad_request("invalid_path", format!("invalid agent name: {m}")))?;
    let actor = caller.actor();
    let deleted = blocking(&app.store, move |s| Ok(s.agent_delete(&name, actor)?)).await?;
    let Some(deleted) = deleted else {
        return Err(ApiError::not_found("no such agent"));
    };
    metrics::counter!(names::AGENTS_DELETED).increment(1);
    Ok(Json(deleted.into()))
}

/// The configuration in force, secrets redacted. Admins only.
#[utoipa::path(get, path = "/v1/config", tag = "admin",
    responses((status = 200, description = "The configuration", body = Object)))]
pub async fn config(State(app): State<AppState>) -> Json<serde_json::Value> {
    let value: Arc<serde_json::Value> = app.config_json.borrow().clone();
    Json((*value).clone())
}

/// Metrics in the Prometheus text format. Admins only.
#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses((status = 200, description = "Prometheus text format",
        content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics_text(State(app): State<AppState>) -> Response {
    app.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// This document. Needs a token (agent or admin).
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_file_names_are_tamed() {
        for (input, want) in [
            (Some("../../etc/passwd"), "passwd"),
            (Some("..\\..\\boot.ini"), "boot.ini"),
            (Some("a\"b\r\nSet-Cookie: x=1"), "a_bSet-Cookie_ x=1"),
            (Some("..."), "attachment"),
            (Some("dir/"), "dir"),
            (None, "attachment"),
            (Some(".htaccess"), "htaccess"),
            (Some("rapport été.pdf"), "rapport été.pdf"),
        ] {
            assert_eq!(sanitize_filename(input), want, "{input:?}");
        }
        let d = content_disposition("rapport été.pdf");
        assert_eq!(
            d,
            "attachment; filename=\"rapport _t_.pdf\"; filename*=UTF-8''rapport%20%C3%A9t%C3%A9.pdf"
        );
        assert!(
            HeaderValue::try_from(content_disposition(&sanitize_filename(Some(
                "x\u{7f}\u{0}y\"\\z"
            ))))
            .is_ok()
        );
    }

    #[test]
    fn content_types_are_checked() {
        assert_eq!(
            safe_content_type("application/PDF; name=x"),
            "application/pdf"
        );
        assert_eq!(
            safe_content_type("text/html\r\nX: y"),
            "application/octet-stream"
        );
        assert_eq!(safe_content_type("nonsense"), "application/octet-stream");
    }
}
