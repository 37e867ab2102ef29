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
    /// Most bytes of message content all sessions together may buffer before the spool has
    /// it (see [`crate::MessageMemory`]); a message that does not fit gets `452 4.3.1`.
    /// A message alone always fits, whatever its size up to `max_message_size`.
    pub max_message_memory: usize,
    /// Client errors (4xx/5xx replies to its commands) tolerated in one session; one more
    /// gets `421 4.7.0` and the connection is closed.
    pub max_errors: usize,
    /// How long to wait for the next command (and for a TLS handshake or a reply write)
    /// before `421 4.4.2` and close.
    pub idle_timeout: Duration,
    /// How long to wait for more message content (DATA or a BDAT chunk) before
    /// `421 4.4.2` and close.
    pub data_timeout: Duration,
    /// Slowest average rate, in bytes per second, at which message content may arrive once
    /// the first `data_timeout` of a DATA or BDAT phase has passed (0: no minimum). A client
    /// trickling a byte now and then would otherwise hold its session open indefinitely,
    /// since every byte restarts `data_timeout`; it gets `421 4.4.2` instead.
    pub min_data_rate: u64,
    /// On shutdown, how long sessions in a mail transaction may take to finish before they
    /// are closed with `421 4.3.2`.
    pub shutdown_grace: Duration,
    /// TLS for `STARTTLS`; `None` disables it (not advertised).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl SmtpConfig {
    /// A configuration with sensible defaults for `hostname` serving `domains`:
    /// 25 MiB messages, 100 recipients (the RFC 5321 minimum), 4096-octet lines,
    /// 256 connections, 128 MiB of message content in memory, 10 errors, 5 minute idle and 3 minute data timeouts (RFC 5321
    /// §4.5.3.2), a minimum data rate of 500 bytes/s, 30 s shutdown grace, no TLS.
    pub fn new(hostname: impl Into<String>, domains: Vec<String>) -> Self {
        Self {
            hostname: hostname.into(),
            domains,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 4096,
            max_connections: 256,
            max_message_memory: 128 * 1024 * 1024,
            max_errors: 10,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            min_data_rate: 500,
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
        if self.max_message_memory == 0 {
            return bad("max_message_memory must be positive");
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
    /// The private key file's metadata could not be read.
    #[error("cannot read private key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The private key file is readable (or writable) by group or others.
    #[error(
        "private key file {path} is accessible by group or others (mode {mode:04o}); \
         it must be readable only by the service user: run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The TLS versions [`load_tls`] enables: 1.3 and 1.2, nothing older (rustls implements no
/// TLS 1.1 or 1.0, so a client offering only those is refused in the handshake).
pub const TLS_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Refuse a private key file that group or others may access (`mode & 0o077 != 0`): secrets
/// are for the service user only. The file's target is checked when it is a symbolic link.
pub fn check_key_permissions(key_pem: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(key_pem).map_err(|source| TlsError::KeyFile {
        path: key_pem.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: key_pem.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// [`check_key_permissions`] on the key, then [`load_tls`]: how the service loads its
/// certificates (at start, on reload and in `mailroom config check`).
pub fn load_tls_checked(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    check_key_permissions(key_pem)?;
    load_tls(cert_pem, key_pem)
}

/// Build a TLS server configuration ([`TLS_VERSIONS`]: 1.2 and 1.3, *ring* provider) from a PEM certificate
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
        .with_protocol_versions(TLS_VERSIONS)?
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

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate for `localhost` and its key, written to a fresh directory
    /// (the key with `key_mode`).
    fn cert_files(
        tag: &str,
        key_mode: u32,
    ) -> (Dir, PathBuf, PathBuf, rcgen::CertifiedKey<rcgen::KeyPair>) {
        use std::os::unix::fs::PermissionsExt;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = Dir(std::env::temp_dir().join(format!(
            "mailroom-smtp-keymode-{tag}-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).unwrap();
        (dir, cert, key, ck)
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            let (_dir, cert, key, _) = cert_files(&format!("{mode:o}"), mode);
            let err = load_tls_checked(&cert, &key).unwrap_err();
            assert!(
                matches!(err, TlsError::KeyPermissions { mode: m, .. } if m == mode),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains(&key.display().to_string()), "{text}");
            assert!(
                text.contains(&format!("chmod 600 {}", key.display())),
                "{text}"
            );
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
            // The unchecked loader still works (the check is a policy of the service).
            load_tls(&cert, &key).unwrap();
        }
        for mode in [0o600, 0o400] {
            let (_dir, cert, key, _) = cert_files(&format!("ok{mode:o}"), mode);
            check_key_permissions(&key).unwrap();
            load_tls_checked(&cert, &key).unwrap();
        }
        let err = check_key_permissions(Path::new("/nonexistent/k.pem")).unwrap_err();
        assert!(matches!(err, TlsError::KeyFile { .. }), "{err}");
    }

    #[test]
    fn only_tls_1_2_and_1_3_are_enabled() {
        use rustls::ProtocolVersion;
        let versions: Vec<ProtocolVersion> = TLS_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(
            versions,
            [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]
        );
    }

    /// In-memory handshake of a client restricted to `version` with the server from
    /// [`load_tls_checked`]: the version negotiated.
    fn handshake(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<Option<rustls::ProtocolVersion>, rustls::Error> {
        let (_dir, cert, key, ck) = cert_files(&format!("hs{:?}", version.version), 0o600);
        let server_config = load_tls_checked(&cert, &key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_config).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                assert_eq!(client.protocol_version(), server.protocol_version());
                return Ok(server.protocol_version());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn tls_1_2_and_1_3_clients_connect() {
        use rustls::ProtocolVersion;
        assert_eq!(
            handshake(&rustls::version::TLS12).unwrap(),
            Some(ProtocolVersion::TLSv1_2)
        );
        assert_eq!(
            handshake(&rustls::version::TLS13).unwrap(),
            Some(ProtocolVersion::TLSv1_3)
        );
    }

    /// A TLS 1.1 ClientHello (legacy_version 3.2, no supported_versions extension), as an old
    /// client sends it: the server answers with an alert, never a ServerHello.
    #[test]
    fn tls_1_1_client_hello_is_refused() {
        let (_dir, cert, key, _) = cert_files("tls11", 0o600);
        let mut server =
            rustls::ServerConnection::new(load_tls_checked(&cert, &key).unwrap()).unwrap();
        let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
        body.extend([0x42; 32]); // random
        body.push(0); // session id
        body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
        body.extend([0x01, 0x00]); // null compression
        let mut hs = vec![0x01, 0, 0, body.len() as u8];
        hs.extend(body);
        let mut record = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
        record.extend(hs);
        server.read_tls(&mut record.as_slice()).unwrap();
        let err = server.process_new_packets().unwrap_err();
        assert!(matches!(err, rustls::Error::PeerIncompatible(_)), "{err:?}");
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        assert_eq!(out.first(), Some(&0x15), "an alert record: {out:?}");
    }
}
