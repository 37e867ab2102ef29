//! The tokio driver: listeners, connection limit, one task per session, STARTTLS, timeouts
//! and graceful shutdown.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailroom_spool::Spool;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use crate::config::SmtpConfig;
use crate::memory::MessageMemory;
use crate::session::{Action, Delivery, Session};

/// Size of each session's read buffer.
const READ_BUF_SIZE: usize = 16 * 1024;

/// The most time spent writing a last reply (`421`, `221`) and closing.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause after an accept error that is not about one connection (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the server is in its life; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ServerState {
    Running,
    /// Shutdown began: sessions outside a mail transaction get `421 4.3.2` at once, the others
    /// may finish theirs.
    Draining,
    /// The grace period is over: every session gets `421 4.3.2` and is closed.
    Force,
}

/// Serve SMTP on `listeners` until `shutdown` resolves, handing accepted mail to `spool`.
///
/// Each new session takes a snapshot of the current `config`, so a reload affects new
/// sessions only (`max_connections` and `max_message_memory` are adjusted on reload too; an
/// invalid reloaded value is ignored with a warning). Connections beyond `max_connections` get
/// `421 4.3.2` and are closed.
///
/// On shutdown: stop accepting (the listeners are dropped), close idle sessions with
/// `421 4.3.2`, let sessions in a mail transaction finish for up to `shutdown_grace`, then
/// close the rest with `421 4.3.2` (a spool write still pending then is abandoned without a
/// `250`, so the sender retries). Returns once every session has ended.
///
/// Fails only if the initial configuration is invalid.
pub async fn run<S: Spool>(
    listeners: Vec<TcpListener>,
    mut config: watch::Receiver<Arc<SmtpConfig>>,
    spool: Arc<S>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut current = config.borrow_and_update().clone();
    current
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut limiter = Limiter::new(current.max_connections);
    let memory = MessageMemory::new(current.max_message_memory);
    let (state_tx, state_rx) = watch::channel(ServerState::Running);
    let mut sessions = JoinSet::new();
    let mut next_id = id_seed();
    let mut turn = 0;
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(err) = joined {
                    if err.is_panic() {
                        warn!("SMTP session task panicked");
                    }
                }
            }
            accepted = accept_any(&listeners, &mut turn) => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!(error = %err, "accept failed");
                        if !is_connection_error(&err) {
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                        continue;
                    }
                };
                if config.has_changed().unwrap_or(false) {
                    let reloaded = config.borrow_and_update().clone();
                    match reloaded.validate() {
                        Ok(()) => current = reloaded,
                        Err(err) => warn!(error = %err, "ignoring invalid SMTP configuration"),
                    }
                }
                limiter.resize(current.max_connections);
                memory.set_cap(current.max_message_memory);
                next_id = next_id.wrapping_add(1);
                match limiter.semaphore.clone().try_acquire_owned() {
                    Ok(permit) => {
                        metrics::gauge!(crate::metric_names::SESSIONS).increment(1.0);
                        let span = tracing::info_span!(
                            "smtp_session",
                            id = %format_args!("{next_id:016x}")
                        );
                        let session = Session::with_memory(
                            current.clone(),
                            memory.clone(),
                            peer,
                            next_id,
                        );
                        let task = serve(
                            stream,
                            session,
                            current.clone(),
                            spool.clone(),
                            state_rx.clone(),
                            permit,
                        );
                        sessions.spawn(task.instrument(span));
                    }
                    Err(_) => {
                        debug!("connection limit reached, refusing a connection");
                        tokio::spawn(refuse(stream, current.hostname.clone()));
                    }
                }
            }
        }
    }

    drop(listeners);
    let grace = config.borrow().shutdown_grace;
    info!(sessions = sessions.len(), "SMTP server shutting down");
    let _ = state_tx.send(ServerState::Draining);
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        let _ = state_tx.send(ServerState::Force);
        while sessions.join_next().await.is_some() {}
    }
    Ok(())
}

/// The connection semaphore, resizable on reload.
struct Limiter {
    semaphore: Arc<Semaphore>,
    limit: usize,
    /// Permits still to be forgotten after a decrease (they were in use).
    debt: usize,
}

impl Limiter {
    fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Limiter {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
            debt: 0,
        }
    }

    fn resize(&mut self, limit: usize) {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        if limit > self.limit {
            let increase = limit - self.limit;
            let cancelled = increase.min(self.debt);
            self.debt -= cancelled;
            self.semaphore.add_permits(increase - cancelled);
        } else {
            self.debt += self.limit - limit;
        }
        self.limit = limit;
        if self.debt > 0 {
            self.debt -= self.semaphore.forget_permits(self.debt);
        }
    }
}

/// Accept from whichever listener is ready, taking them in turn for fairness.
async fn accept_any(
    listeners: &[TcpListener],
    turn: &mut usize,
) -> io::Result<(TcpStream, SocketAddr)> {
    poll_fn(|cx| {
        let n = listeners.len();
        for i in 0..n {
            let index = (*turn + i) % n;
            if let Poll::Ready(result) = listeners[index].poll_accept(cx) {
                *turn = index + 1;
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    })
    .await
}

/// Errors that concern one connection only, after which accepting can go on at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn id_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Tell a connection over the limit to come back later.
async fn refuse(mut stream: TcpStream, hostname: String) {
    metrics::counter!(crate::metric_names::REJECTED, "reason" => "421 4.3.2").increment(1);
    let reply = format!("421 4.3.2 {hostname} Too many connections, try again later\r\n");
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Decrements the open-sessions gauge when a session ends, however it ends.
struct SessionGauge;

impl Drop for SessionGauge {
    fn drop(&mut self) {
        metrics::gauge!(crate::metric_names::SESSIONS).decrement(1.0);
    }
}

/// One connection, from greeting to close; `session` is new, for this connection.
async fn serve<S: Spool>(
    mut tcp: TcpStream,
    mut session: Session,
    config: Arc<SmtpConfig>,
    spool: Arc<S>,
    mut state: watch::Receiver<ServerState>,
    _permit: OwnedSemaphorePermit,
) {
    // Counted up when the permit was taken; down here on every way out.
    let _open = SessionGauge;
    debug!("session started");
    let _ = tcp.set_nodelay(true);
    let mut buf = ReadBuf::new();
    let outcome = drive(&mut tcp, &mut session, &mut buf, &*spool, &mut state).await;
    if let Outcome::StartTls = outcome {
        let Some(tls) = config.tls.clone() else {
            return;
        };
        let handshake =
            tokio::time::timeout(config.idle_timeout, TlsAcceptor::from(tls).accept(tcp));
        let mut stream = tokio::select! {
            result = handshake => match result {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    debug!(error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    return;
                }
            },
            () = wait_state(&mut state, ServerState::Force) => return,
        };
        debug!("TLS established");
        session.tls_started();
        buf.clear();
        // STARTTLS is refused once TLS is active, so this drive ends with a close.
        drive(&mut stream, &mut session, &mut buf, &*spool, &mut state).await;
    }
    debug!("session ended");
}

enum Outcome {
    Closed,
    StartTls,
}

/// Run the session over `io` until it closes or asks for TLS.
async fn drive<IO, S>(
    io: &mut IO,
    session: &mut Session,
    buf: &mut ReadBuf,
    spool: &S,
    state: &mut watch::Receiver<ServerState>,
) -> Outcome
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Spool,
{
    let mut deadline = tokio::time::Instant::now() + session.read_timeout();
    // While message content arrives: when that started and how many bytes came since.
    let mut data: Option<(tokio::time::Instant, u64)> = None;
    loop {
        let mut input = buf.data();
        let available = input.len();
        let action = session.feed(&mut input);
        let consumed = available - input.len();
        buf.consume(consumed);

        if !session.output().is_empty() {
            // All replies produced by one batch of input go out in one write.
            let limit = if session.is_closed() {
                FINAL_WRITE_TIMEOUT
            } else {
                session.read_timeout().max(FINAL_WRITE_TIMEOUT)
            };
            let written = tokio::time::timeout(limit, async {
                io.write_all(session.output()).await?;
                io.flush().await
            })
            .await;
            session.clear_output();
            if !matches!(written, Ok(Ok(()))) {
                debug!("write failed or timed out");
                return Outcome::Closed;
            }
        }

        match action {
            Action::Read => {
                if !buf.is_empty() {
                    continue;
                }
                let closing_at = if session.in_transaction() {
                    ServerState::Force
                } else {
                    ServerState::Draining
                };
                if *state.borrow() >= closing_at {
                    session.shutting_down();
                    continue;
                }
                // A partial command line does not restart the idle timeout: the whole line
                // must arrive within it (slowloris).
                if !session.mid_command_line() {
                    deadline = tokio::time::Instant::now() + session.read_timeout();
                }
                if session.receiving_data() {
                    let (since, bytes) = *data.get_or_insert((tokio::time::Instant::now(), 0));
                    // Every byte restarts the data timeout, but the content as a whole must
                    // keep up the minimum rate after the first data timeout.
                    if let Some(at) = rate_deadline(since, bytes, session) {
                        deadline = deadline.min(at);
                    }
                } else {
                    data = None;
                }
                tokio::select! {
                    () = wait_state(state, closing_at) => session.shutting_down(),
                    read = tokio::time::timeout_at(deadline, buf.read_from(io)) => match read {
                        Ok(Ok(0)) => {
                            debug!("client closed the connection");
                            return Outcome::Closed;
                        }
                        Ok(Ok(n)) => {
                            if let Some((_, bytes)) = data.as_mut() {
                                *bytes += n as u64;
                            }
                        }
                        Ok(Err(err)) => {
                            debug!(error = %err, "read failed");
                            return Outcome::Closed;
                        }
                        Err(_) => {
                            debug!("client timed out");
                            session.timed_out();
                        }
                    },
                }
            }
            Action::Deliver(delivery) => {
                // `_hold` keeps the message's bytes counted until the spool has stored it.
                let Delivery {
                    envelope,
                    raw,
                    hold: _hold,
                } = *delivery;
                let size = raw.len();
                let result = tokio::select! {
                    result = spool.append(envelope, raw) => result,
                    () = wait_state(state, ServerState::Force) => {
                        session.shutting_down();
                        continue;
                    }
                };
                match &result {
                    Ok(spool_id) => {
                        metrics::counter!(crate::metric_names::ACCEPTED).increment(1);
                        info!(%spool_id, size, "message accepted")
                    }
                    Err(err) => warn!(error = %err, "spool refused a message"),
                }
                session.delivered(result);
            }
            Action::StartTls => return Outcome::StartTls,
            Action::Close => {
                let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, io.shutdown()).await;
                return Outcome::Closed;
            }
        }
    }
}

/// Resolve once the server reaches `at_least` (or is gone).
async fn wait_state(state: &mut watch::Receiver<ServerState>, at_least: ServerState) {
    let _ = state.wait_for(|s| *s >= at_least).await;
}

/// A fixed read buffer; the session consumes what it can, the rest waits for the next feed.
struct ReadBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new() -> Self {
        ReadBuf {
            buf: vec![0; READ_BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    async fn read_from<IO: AsyncRead + Unpin>(&mut self, io: &mut IO) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// When a DATA/BDAT phase that began at `since` and has brought `bytes` must have brought more
/// to keep up the session's minimum data rate: the data timeout, plus one second per
/// `min_data_rate` bytes received. `None` when there is no minimum.
fn rate_deadline(
    since: tokio::time::Instant,
    bytes: u64,
    session: &Session,
) -> Option<tokio::time::Instant> {
    let rate = session.min_data_rate();
    if rate == 0 {
        return None;
    }
    let earned = std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
    Some(since + session.read_timeout() + earned)
}
