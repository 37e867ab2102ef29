//! Session limits and TLS settings of the SMTP server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Shortest `max_line_length` accepted: the RFC 5321 limit for a command line (§4.5.3.1.4).
pub const MIN_LINE_LENGTH: usize = 512;

/// Everything a session needs to know, parsed once and shared read-only.
///
/// The driver takes a snapshot (`Arc` clone) of the current value for each new session, so a
/// reload affects new sessions only.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Our host name: in the greeting, the `EHLO` reply and the `Received:` header.
    pub hostname: String,
    /// Domains we accept mail for (compared case-insensitively, a trailing dot ignored).
    /// `RCPT TO` any other domain gets `550 5.1.1`: we are not a relay.
    pub domains: Vec<String>,
    /// Largest message accepted, in octets of content as received (after dot-unstuffing,
    /// before our `Received:` header). Advertised as `SIZE`; larger ones get `552 5.3.4`.
    pub max_message_size: usize,
    /// Most recipients in one transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest line, in octets including its CRLF, for command lines (longer: `500 5.5.2`)
    /// and for lines of message content (longer: the message gets `554 5.6.0` at its end).
    /// At least [`MIN_LINE_LENGTH`].
    pub max_line_length: usize,
    /// Most concurrent sessions; more connections get `421 4.3.2` and are closed.
    pub max_connections: usize,
    /// Client errors (4xx/5xx replies to its commands) tolerated in one session; one more
    /// gets `421 4.7.0` and the connection is closed.
    pub max_errors: usize,
    /// How long to wait for the next command (and for a TLS handshake or a reply write)
    /// before `421 4.4.2` and close.
    pub idle_timeout: Duration,
    /// How long to wait for more message content (DATA or a BDAT chunk) before
    /// `421 4.4.2` and close.
    pub data_timeout: Duration,
    /// On shutdown, how long sessions in a mail transaction may take to finish before they
    /// are closed with `421 4.3.2`.
    pub shutdown_grace: Duration,
    /// TLS for `STARTTLS`; `None` disables it (not advertised).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl SmtpConfig {
    /// A configuration with sensible defaults for `hostname` serving `domains`:
    /// 25 MiB messages, 100 recipients (the RFC 5321 minimum), 4096-octet lines,
    /// 256 connections, 10 errors, 5 minute idle and 3 minute data timeouts (RFC 5321
    /// §4.5.3.2), 30 s shutdown grace, no TLS.
    pub fn new(hostname: impl Into<String>, domains: Vec<String>) -> Self {
        Self {
            hostname: hostname.into(),
            domains,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 4096,
            max_connections: 256,
            max_errors: 10,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
        }
    }

    /// Check that the values make a working server.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &'static str| Err(ConfigError { what });
        if self.hostname.is_empty()
            || self.hostname.len() > 255
            || !self.hostname.bytes().all(|b| b.is_ascii_graphic())
        {
            return bad("hostname must be 1 to 255 printable ASCII characters");
        }
        if self.max_message_size == 0 {
            return bad("max_message_size must be positive");
        }
        if self.max_recipients == 0 {
            return bad("max_recipients must be positive");
        }
        if self.max_line_length < MIN_LINE_LENGTH {
            return bad("max_line_length must be at least 512");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be positive");
        }
        if self.idle_timeout.is_zero() || self.data_timeout.is_zero() {
            return bad("timeouts must be positive");
        }
        Ok(())
    }

    /// Whether `domain` is one we accept mail for.
    pub fn serves_domain(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.domains.iter().any(|d| {
            let d = d.strip_suffix('.').unwrap_or(d);
            d.eq_ignore_ascii_case(domain)
                || ((!d.is_ascii() || !domain.is_ascii())
                    && d.to_lowercase() == domain.to_lowercase())
        })
    }
}

impl Default for SmtpConfig {
    /// [`SmtpConfig::new`] for `localhost` with no domains (so it accepts no recipient).
    fn default() -> Self {
        Self::new("localhost", Vec::new())
    }
}

/// An invalid [`SmtpConfig`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid SMTP configuration: {what}")]
pub struct ConfigError {
    /// What is wrong.
    pub what: &'static str,
}

/// Why [`load_tls`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read PEM file {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    /// rustls refused the certificate chain or the key (e.g. they do not match).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Build a TLS server configuration (TLS 1.2 and 1.3, *ring* provider) from a PEM certificate
/// chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
///
/// The provider is given explicitly, so this works whether or not a process-wide default
/// provider was installed.
pub fn load_tls(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Pem { path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .map_err(pem_err(cert_pem))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(cert_pem))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_pem.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(pem_err(key_pem))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SmtpConfig::new("mx.example.org", vec!["example.org".into()])
            .validate()
            .unwrap();
        let c = SmtpConfig {
            max_line_length: 100,
            ..SmtpConfig::default()
        };
        assert!(c.validate().is_err());
        let c = SmtpConfig {
            hostname: "bad host".into(),
            ..SmtpConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn domain_match_is_case_insensitive() {
        let c = SmtpConfig::new("mx", vec!["Example.ORG".into(), "bücher.de".into()]);
        assert!(c.serves_domain("example.org"));
        assert!(c.serves_domain("EXAMPLE.org."));
        assert!(c.serves_domain("BÜCHER.de"));
        assert!(!c.serves_domain("example.com"));
        assert!(!c.serves_domain("sub.example.org"));
    }

    #[test]
    fn load_tls_reports_missing_file() {
        let err = load_tls(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    }
}
