//! The OpenAPI document served at `/openapi.json`.

use std::sync::OnceLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::{dto, routes};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailroom API",
        description = "Help-desk mail: tickets, messages, attachments, spam feedback, quarantine. \
            Every route but /healthz needs `Authorization: Bearer TOKEN` (tokens are made with \
            `mailroom token create`). Errors are `{\"error\":{\"code\":...,\"message\":...}}`."
    ),
    paths(
        routes::healthz,
        routes::list_tickets,
        routes::get_ticket,
        routes::update_ticket,
        routes::message_raw,
        routes::attachment,
        routes::feedback,
        routes::list_quarantine,
        routes::get_quarantined,
        routes::release,
        routes::delete_quarantined,
        routes::filter_stats,
        routes::config,
        routes::metrics_text,
        routes::erase,
        routes::export,
        routes::audit,
        routes::delete_agent,
        routes::openapi_json,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        dto::TicketStatus,
        dto::TicketSummary,
        dto::TicketList,
        dto::TicketDetail,
        dto::Message,
        dto::Flag,
        dto::Attachment,
        dto::Verdict,
        dto::Clue,
        dto::Classification,
        dto::QuarantineEntry,
        dto::QuarantineList,
        dto::FeedbackLabel,
        dto::FeedbackRequest,
        dto::Training,
        dto::FeedbackMove,
        dto::FeedbackResponse,
        dto::ReleaseResponse,
        dto::FilterStats,
        dto::Health,
        dto::TicketUpdate,
        dto::EraseRequest,
        dto::ExportRequest,
        dto::ExportArchive,
        dto::ErasureReport,
        dto::AuditAction,
        dto::AuditEntry,
        dto::AuditList,
        dto::AgentDeleted,
    )),
    modifiers(&Common),
    tags(
        (name = "tickets", description = "Tickets and their messages"),
        (name = "messages", description = "Raw messages, attachments, feedback"),
        (name = "quarantine", description = "Messages the filter called spam"),
        (name = "filter", description = "The spam filter"),
        (name = "privacy", description = "Admin-only: erasure, export and the audit log. \
            Addresses go in request bodies, never in URLs, and are never logged"),
        (name = "admin", description = "Admin-only: configuration, metrics, agents"),
        (name = "meta", description = "Health and this document"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme, requires it on every operation but `/healthz`, and documents the
/// error body as every operation's `default` response.
struct Common;

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let error = ResponseBuilder::new()
            .description(
                "Error: 400 bad input, 401 no valid token, 403 network or role not allowed, \
                 404 not found, 405, 409 filter conflict, 410 erased, 413 body too large, \
                 415 not JSON, 422 a value refused (e.g. not an email address), \
                 429 too many failed logins (Retry-After), 5xx server fault",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = path == "/healthz";
            let ops: [&mut Option<Operation>; 5] = [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                op.responses
                    .responses
                    .insert("default".to_string(), RefOr::T(error.clone()));
                if !public {
                    op.security = Some(vec![SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
                }
            }
        }
    }
}

/// The document as JSON bytes (built once).
pub fn document_json() -> Vec<u8> {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_default()
            .into_bytes()
    })
    .clone()
}
