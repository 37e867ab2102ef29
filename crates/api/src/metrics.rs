//! Metrics: the names every part of mailroom records under, their descriptions, and the
//! Prometheus recorder behind `GET /metrics`.
//!
//! Record with the `metrics` macros anywhere (`metrics::counter!(names::SMTP_ACCEPTED)
//! .increment(1)`); [`install_recorder`] installs the global Prometheus recorder once at start
//! and registers the descriptions. Labels are small fixed sets (never an address, subject or
//! token).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names.
pub mod names {
    /// Counter: messages accepted by SMTP (`250` after the spool write).
    pub const SMTP_ACCEPTED: &str = "mailroom_smtp_messages_accepted_total";
    /// Counter, label `reason` (`size`, `recipients`, `spool_full`, `timeout`, `protocol`,
    /// `tls`, `shutdown`, ...): messages or transactions SMTP refused.
    pub const SMTP_REJECTED: &str = "mailroom_smtp_messages_rejected_total";
    /// Gauge: SMTP sessions open now.
    pub const SMTP_SESSIONS: &str = "mailroom_smtp_sessions";
    /// Counter, label `outcome` (`new_ticket`, `appended`, `orphan`, `quarantined`, `failed`,
    /// `already_processed`, `error`): spool entries the pipeline processed.
    pub const PIPELINE_MESSAGES: &str = mailroom_pipeline::metric_names::MESSAGES;
    /// Histogram, seconds from acceptance (spool append) to the store commit.
    pub const PIPELINE_LATENCY: &str = mailroom_pipeline::metric_names::LATENCY;
    /// Gauge: unprocessed spool entries (the queue depth).
    pub const SPOOL_DEPTH: &str = mailroom_pipeline::metric_names::SPOOL_DEPTH;
    /// Counter, label `verdict` (`ham`, `unsure`, `spam`): the filter's verdicts on incoming
    /// mail.
    pub const FILTER_VERDICTS: &str = mailroom_pipeline::metric_names::VERDICTS;
    /// Histogram, seconds to tokenize and classify one message.
    pub const FILTER_CLASSIFY_SECONDS: &str = mailroom_pipeline::metric_names::CLASSIFY_SECONDS;
    /// Counter, labels `label` (`spam`, `ham`) and `action` (`unchanged`, `quarantined`,
    /// `released`): feedback given through the API.
    pub const FEEDBACK: &str = "mailroom_feedback_total";
    /// Counter: quarantined messages released through the API.
    pub const QUARANTINE_RELEASED: &str = "mailroom_quarantine_released_total";
    /// Counter: quarantined messages deleted through the API.
    pub const QUARANTINE_DELETED: &str = "mailroom_quarantine_deleted_total";
    /// Counter, label `status` (`open`, `closed`): ticket status updates through the API.
    pub const TICKET_STATUS_UPDATES: &str = "mailroom_ticket_status_updates_total";
    /// Counter, labels `dry_run` and `found` (`true`, `false`): erasures requested through the
    /// API.
    pub const PRIVACY_ERASURES: &str = "mailroom_privacy_erasures_total";
    /// Counter: personal data exports made through the API.
    pub const PRIVACY_EXPORTS: &str = "mailroom_privacy_exports_total";
    /// Counter: agents deleted through the API.
    pub const AGENTS_DELETED: &str = "mailroom_agents_deleted_total";
    /// Counter, labels `method`, `route` (the route template, e.g. `/v1/tickets/{id}`, or
    /// `unmatched`) and `status`: API requests answered.
    pub const API_REQUESTS: &str = "mailroom_api_requests_total";
    /// Histogram, label `route`: seconds to answer an API request.
    pub const API_REQUEST_SECONDS: &str = "mailroom_api_request_duration_seconds";
    /// Counter, label `reason` (`missing`, `invalid`, `network`, `role`, `rate_limited`):
    /// refused API requests.
    pub const API_AUTH_FAILURES: &str = "mailroom_api_auth_failures_total";
    /// Counter: API connections refused because `max_connections` were open.
    pub const API_CONNECTIONS_REFUSED: &str = "mailroom_api_connections_refused_total";
}

/// Histogram buckets (seconds) for every `*_seconds` metric.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Register the descriptions of every metric in [`names`] with the global recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(names::SMTP_ACCEPTED, "Messages accepted by SMTP");
    describe_counter!(
        names::SMTP_REJECTED,
        "Messages or transactions refused by SMTP, by reason"
    );
    describe_gauge!(names::SMTP_SESSIONS, "Open SMTP sessions");
    describe_counter!(
        names::PIPELINE_MESSAGES,
        "Spool entries processed by the pipeline, by outcome"
    );
    describe_histogram!(
        names::PIPELINE_LATENCY,
        Unit::Seconds,
        "Time from acceptance to the store commit"
    );
    describe_gauge!(names::SPOOL_DEPTH, "Unprocessed spool entries");
    describe_counter!(
        names::FILTER_VERDICTS,
        "Spam filter verdicts on incoming mail"
    );
    describe_histogram!(
        names::FILTER_CLASSIFY_SECONDS,
        Unit::Seconds,
        "Time to tokenize and classify one message"
    );
    describe_counter!(names::FEEDBACK, "Spam/ham feedback given through the API");
    describe_counter!(
        names::QUARANTINE_RELEASED,
        "Quarantined messages released through the API"
    );
    describe_counter!(
        names::QUARANTINE_DELETED,
        "Quarantined messages deleted through the API"
    );
    describe_counter!(
        names::TICKET_STATUS_UPDATES,
        "Ticket status updates through the API, by new status"
    );
    describe_counter!(
        names::PRIVACY_ERASURES,
        "Erasures requested through the API, by dry run and whether the address was a contact"
    );
    describe_counter!(
        names::PRIVACY_EXPORTS,
        "Personal data exports made through the API"
    );
    describe_counter!(names::AGENTS_DELETED, "Agents deleted through the API");
    describe_counter!(
        names::API_REQUESTS,
        "API requests by method, route and status"
    );
    describe_histogram!(
        names::API_REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer an API request, by route"
    );
    describe_counter!(
        names::API_AUTH_FAILURES,
        "API requests refused by authentication, by reason"
    );
    describe_counter!(
        names::API_CONNECTIONS_REFUSED,
        "API connections refused at the connection limit"
    );
}

/// The recorder builder mailroom uses (histogram buckets for `*_seconds`).
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Install the global Prometheus recorder (once per process) and describe every metric.
/// Pass the handle in [`crate::AppState`]. Fails if a global recorder is already installed.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = builder().install_recorder()?;
    describe_metrics();
    Ok(handle)
}

/// Middleware: count and time every response by method, route template and status.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(names::API_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names::API_REQUEST_SECONDS, "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}
