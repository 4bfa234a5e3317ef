//! The relay as an operating-system process, with a member logged in over real QUIC: stopped by
//! SIGINT after its stdout and stderr pipes were closed, and killed (SIGKILL) then started again
//! on the same port with the same certificate directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qrelay::auth::TokenKey;
use qrelay::certs::{CertPaths, load_certs};
use qrelay::client::DEFAULT_IDLE_TIMEOUT;
use qrelay::protocol::{
    ControlFrame, MAX_SERVER_FRAME, Outcome, Request, RequestFrame, User, close, encode_frame,
};
use qrelay::transport::{FrameReader, client_config};

const BIN: &str = env!("CARGO_BIN_EXE_qrelay");
/// Every wait in this file is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);
/// How soon a member must learn that the relay stopped: far below the 30 s idle timeout, which
/// is how it learns when nothing tells it.
const NOTICED_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sigint_closes_every_client_although_stdout_and_stderr_are_closed_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    // `qrelay serve 2>&1 | tee log` and Ctrl-C: the pipe's reader dies with the relay's
    // signal, so every line the relay writes while it shuts down meets a closed pipe.
    let mut relay = start(&certs, "127.0.0.1:0", "info").await;
    let member = Member::log_in(&certs, relay.addr).await;
    relay.close_output();
    let status = Command::new("kill").args(["-INT", &relay.id().to_string()]).status().unwrap();
    assert!(status.success());
    let closed = tokio::time::timeout(NOTICED_WITHIN, member.conn.closed())
        .await
        .expect("the member was not closed: the relay died without closing its connections");
    match closed {
        quinn::ConnectionError::ApplicationClosed(frame) => {
            assert_eq!(frame.error_code.into_inner(), u64::from(close::SHUTDOWN));
        }
        other => panic!("expected the SHUTDOWN close, got {other:?}"),
    }
    let exit = tokio::task::spawn_blocking(move || relay.wait()).await.unwrap();
    assert!(exit.success(), "the relay did not exit cleanly: {exit:?}");
}

#[tokio::test]
async fn a_member_of_a_killed_relay_is_reset_when_the_relay_restarts_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let relay = start(&certs, "127.0.0.1:0", "warn").await;
    let addr = relay.addr;
    let member = Member::log_in(&certs, addr).await;
    // As `kill -9` or a crash: the old process closes nothing.
    relay.kill();
    let restarted = Instant::now();
    let _relay = start(&certs, &addr.to_string(), "warn").await;
    // The new process answers the member's next packet (a keep-alive at the latest, 38 bytes:
    // quinn answers datagrams over 21) with a stateless reset; with per-process keys it would
    // drop it, and the member would wait for its idle timeout.
    let lost = tokio::time::timeout(NOTICED_WITHIN, member.conn.closed())
        .await
        .expect("the member was not reset: it would wait for its 30 s idle timeout");
    assert!(matches!(lost, quinn::ConnectionError::Reset), "expected a stateless reset: {lost:?}");
    eprintln!("reset {:?} after the restart", restarted.elapsed());
}

/// A `qrelay serve` process; killed when dropped, so a failing test leaves none behind.
struct RelayProcess {
    child: Child,
    /// The address from its banner.
    addr: SocketAddr,
}

impl RelayProcess {
    /// Starts `qrelay serve` on `listen` with its certificates in `certs` (created on the first
    /// start), stdout and stderr piped, and waits for the banner. Blocking.
    fn new(certs: &Path, listen: &str, log: &str) -> RelayProcess {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--no-http", "--no-web", "--certs-dir"])
            .arg(certs)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).unwrap();
        let addr = banner
            .strip_prefix("qrelay listening on UDP ")
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("not a banner: {banner:?}"));
        // Keep the pipe open: the relay writes the rest of its banner after the first line.
        child.stdout = Some(stdout.into_inner());
        RelayProcess { child, addr }
    }

    fn id(&self) -> u32 {
        self.child.id()
    }

    /// Ends the process with SIGKILL, as `kill -9`, and reaps it. Blocking, briefly.
    fn kill(self) {
        drop(self);
    }

    /// Closes the reading ends of the relay's stdout and stderr: its next write gets EPIPE.
    fn close_output(&mut self) {
        drop(self.child.stdout.take());
        drop(self.child.stderr.take());
    }

    /// Waits for the process to exit, at most [`LIMIT`]. Blocking.
    fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(Instant::now() < deadline, "the relay did not exit within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`RelayProcess::new`] off the runtime, so connections already open keep being driven
/// meanwhile.
async fn start(certs: &Path, listen: &str, log: &str) -> RelayProcess {
    let (certs, listen, log) = (certs.to_owned(), listen.to_owned(), log.to_owned());
    let make = move || RelayProcess::new(&certs, &listen, &log);
    tokio::time::timeout(LIMIT, tokio::task::spawn_blocking(make))
        .await
        .expect("the relay did not start in time")
        .unwrap()
}

/// A member of room "lobby" over a plain QUIC connection, as default clients are: 30 s idle
/// timeout, keep-alives every 5 s.
struct Member {
    conn: quinn::Connection,
    /// Kept open: finishing the control stream would close the connection.
    _control: (quinn::SendStream, FrameReader),
    _endpoint: quinn::Endpoint,
}

impl Member {
    async fn log_in(certs: &Path, addr: SocketAddr) -> Member {
        let paths = CertPaths::in_dir(certs);
        let roots = load_certs(&paths.ca_cert).unwrap();
        let tokens = TokenKey::from_file(&paths.token_secret).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client_config(&roots, DEFAULT_IDLE_TIMEOUT).unwrap());
        tokio::time::timeout(LIMIT, async {
            let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let token = tokens.mint("alice", None, true, Duration::from_secs(600)).unwrap();
            let user = User { id: "alice".into(), name: "Alice".into() };
            let body = Request::Login { room: "lobby".into(), user, token, recover: None };
            let mut frame = BytesMut::new();
            encode_frame(&RequestFrame { request: 1, body }, &mut frame).unwrap();
            send.write_all(&frame).await.unwrap();
            let mut control = FrameReader::new(recv, MAX_SERVER_FRAME);
            match control.next::<ControlFrame>().await.unwrap() {
                Some(ControlFrame::Reply(reply)) => {
                    assert!(matches!(reply.outcome, Outcome::LoggedIn { .. }), "{reply:?}");
                }
                other => panic!("expected the login reply, got {other:?}"),
            }
            Member { conn, _control: (send, control), _endpoint: endpoint }
        })
        .await
        .expect("no login within the limit")
    }
}
