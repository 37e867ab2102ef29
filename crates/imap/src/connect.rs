//! Connecting and logging in: TCP, implicit TLS or STARTTLS, LOGIN or AUTHENTICATE XOAUTH2.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_imap::Client;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{describe, server_text, ImapError};
use crate::{AccountConfig, Secret, TlsMode};

/// The byte stream under a session: TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Io for T {}

/// A logged-in IMAP session.
pub(crate) type Session = async_imap::Session<Box<dyn Io>>;

/// Run `fut`, or fail with [`ImapError::Timeout`] after `limit`.
pub(crate) async fn timed<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, ImapError>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ImapError::Timeout(limit, what)),
    }
}

/// The TLS settings for `config`: its CA file, or the WebPKI roots.
fn tls_connector(config: &AccountConfig) -> Result<tokio_rustls::TlsConnector, ImapError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ImapError::Tls(format!("ca_file {}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| ImapError::Tls(format!("ca_file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ImapError::Tls(format!("ca_file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(ImapError::Tls(format!(
                    "ca_file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // Our own provider: the process-wide default may not be installed (CLI runs).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

async fn tls_wrap<S: AsyncRead + AsyncWrite + Unpin + Send + Debug + 'static>(
    config: &AccountConfig,
    stream: S,
) -> Result<Box<dyn Io>, ImapError> {
    let connector = tls_connector(config)?;
    let name = ServerName::try_from(config.host.clone())
        .map_err(|e| ImapError::Tls(format!("server name {:?}: {e}", config.host)))?;
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| ImapError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

/// Read the server's greeting (`* OK ...`).
async fn greeting<T: AsyncRead + AsyncWrite + Unpin + Send + Debug>(
    client: &mut Client<T>,
) -> Result<(), ImapError> {
    match client.read_response().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ImapError::Protocol {
            context: "greeting",
            message: "the server closed the connection".to_owned(),
        }),
        Err(e) => Err(ImapError::Protocol {
            context: "greeting",
            message: e.to_string(),
        }),
    }
}

/// The account's secret, read now.
fn read_secret(secret: &Secret) -> Result<String, ImapError> {
    let (what, value) = match secret {
        Secret::PasswordEnv(var) => (
            "password_env",
            std::env::var(var).map_err(|_| ImapError::Secret {
                what: "password_env",
                message: format!("environment variable {var} is not set (or not UTF-8)"),
            })?,
        ),
        Secret::PasswordFile(path) => (
            "password_file",
            std::fs::read_to_string(path).map_err(|e| ImapError::Secret {
                what: "password_file",
                message: format!("{}: {e}", path.display()),
            })?,
        ),
        Secret::Xoauth2TokenFile(path) => (
            "xoauth2_token_file",
            std::fs::read_to_string(path).map_err(|e| ImapError::Secret {
                what: "xoauth2_token_file",
                message: format!("{}: {e}", path.display()),
            })?,
        ),
    };
    let value = value.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        return Err(ImapError::Secret {
            what,
            message: "it is empty".to_owned(),
        });
    }
    Ok(value)
}

/// The SASL XOAUTH2 initial response: `user=USER^Aauth=Bearer TOKEN^A^A`. After a failure the
/// server sends a JSON challenge, which is answered with an empty response.
pub(crate) struct XOAuth2 {
    pub(crate) user: String,
    pub(crate) token: String,
    pub(crate) sent: bool,
}

impl XOAuth2 {
    /// The initial response's bytes (before base64).
    pub(crate) fn initial(user: &str, token: &str) -> String {
        format!("user={user}\x01auth=Bearer {token}\x01\x01")
    }
}

impl async_imap::Authenticator for &mut XOAuth2 {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> String {
        if self.sent {
            String::new()
        } else {
            self.sent = true;
            XOAuth2::initial(&self.user, &self.token)
        }
    }
}

async fn login<T: AsyncRead + AsyncWrite + Unpin + Send + Debug>(
    config: &AccountConfig,
    client: Client<T>,
) -> Result<async_imap::Session<T>, ImapError> {
    let secret = read_secret(&config.secret)?;
    let result = match &config.secret {
        Secret::Xoauth2TokenFile(_) => {
            let mut auth = XOAuth2 {
                user: config.username.clone(),
                token: secret,
                sent: false,
            };
            client.authenticate("XOAUTH2", &mut auth).await
        }
        Secret::PasswordEnv(_) | Secret::PasswordFile(_) => {
            client.login(&config.username, &secret).await
        }
    };
    result.map_err(|(e, _client)| match e {
        async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
            ImapError::Auth(format!("the server said: {}", server_text(&text)))
        }
        async_imap::error::Error::Validate(_) => ImapError::Auth(
            "the user name or secret holds a character IMAP cannot send (CR, LF or NUL)".to_owned(),
        ),
        other => ImapError::Auth(describe(other)),
    })
}

/// Connect, secure and log in; the session is not in any mailbox yet.
pub(crate) async fn connect(config: &AccountConfig) -> Result<Session, ImapError> {
    let limit = config.limits.io_timeout;
    let address = format!("{}:{}", config.host, config.port);
    let tcp = timed(limit, "connect", async {
        TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|source| ImapError::Connect {
                address: address.clone(),
                source,
            })
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match config.tls {
        TlsMode::None => Box::new(tcp),
        TlsMode::Implicit => timed(limit, "TLS handshake", tls_wrap(config, tcp)).await?,
        TlsMode::StartTls => {
            timed(limit, "STARTTLS", async {
                let mut client = Client::new(tcp);
                greeting(&mut client).await?;
                client
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|e| ImapError::Tls(format!("STARTTLS: {}", describe(e))))?;
                tls_wrap(config, client.into_inner()).await
            })
            .await?
        }
    };
    let mut client = Client::new(stream);
    if config.tls != TlsMode::StartTls {
        timed(limit, "greeting", greeting(&mut client)).await?;
    }
    timed(limit, "login", login(config, client)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_initial_response_has_the_sasl_shape() {
        assert_eq!(
            XOAuth2::initial("someone@example.org", "ya29.token"),
            "user=someone@example.org\u{1}auth=Bearer ya29.token\u{1}\u{1}"
        );
        let mut auth = XOAuth2 {
            user: "u".into(),
            token: "t".into(),
            sent: false,
        };
        let mut a = &mut auth;
        use async_imap::Authenticator;
        assert_eq!(a.process(b""), "user=u\u{1}auth=Bearer t\u{1}\u{1}");
        // After a failure the server's JSON challenge gets an empty answer.
        assert_eq!(a.process(b"{\"status\":\"401\"}"), "");
    }

    #[test]
    fn secrets_are_read_and_trimmed_and_their_errors_name_no_secret() {
        let dir = std::env::temp_dir().join(format!("mailroom-imap-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        assert_eq!(
            read_secret(&Secret::PasswordFile(file.clone())).unwrap(),
            "s3cret-value"
        );
        std::fs::write(&file, "\n").unwrap();
        let e = read_secret(&Secret::PasswordFile(file.clone())).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = read_secret(&Secret::PasswordEnv(
            "MAILROOM_TEST_SURELY_UNSET_VARIABLE".into(),
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("MAILROOM_TEST_SURELY_UNSET_VARIABLE is not set"),
            "{e}"
        );
        let e = read_secret(&Secret::Xoauth2TokenFile(dir.join("absent"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the xoauth2_token_file"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
