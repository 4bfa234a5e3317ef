//! A cluster of relay processes joined through a real `nats-server` with JetStream, all on
//! loopback: the NATS server and every relay are child processes of the test, killed when
//! the harness is dropped (so a failing test leaves none behind), each logging to a file in
//! the harness's temporary directory (the last lines of every log are printed when a test
//! panics). Clients are made with the client library, trusting the cluster's development CA
//! and holding tokens signed with its token secret.
//!
//! `nats-server` must be installed (scripts/test installs it): the tests never skip without
//! it, they fail saying so.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qrelay::auth::{TokenKey, generate_secret};
use qrelay::certs::{CertPaths, DevPki, load_certs};
use qrelay::client::{Client, ClientConfig, Events, ServerList};
use qrelay::protocol::User;
use rustls::pki_types::CertificateDer;
use tempfile::TempDir;

use super::within;

const BIN: &str = env!("CARGO_BIN_EXE_qrelay");
/// How long a process (NATS or a relay) may take to come up.
const START: Duration = Duration::from_secs(15);
/// The server API key of every node (`Authorization: Bearer API_KEY`), in `certs/api.key`.
pub const API_KEY: &str = "cluster-test-api-key";
/// How many lines of each log a failing test prints.
const LOG_TAIL: usize = 40;

/// The `nats-server` program: on the PATH, or where Debian's package puts it (/usr/sbin,
/// which a user's PATH may lack).
pub fn nats_server_program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let fallback = ["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(fallback)
        .map(|dir| dir.join("nats-server"))
        .find(|program| program.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not installed (not on the PATH, nor in /usr/sbin): the cluster \
                 tests start a real one and never skip without it. Run the tests with \
                 scripts/test, which installs it (Debian package nats-server), or install it \
                 yourself (apt-get install nats-server)"
            )
        })
}

/// A TCP port free on 127.0.0.1 now (the port of a listener bound to port 0, then closed).
pub fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A log file to append a child's stdout and stderr to.
fn log_file(path: &Path) -> (File, File) {
    let file = OpenOptions::new().create(true).append(true).open(path).expect("open a log file");
    (file.try_clone().expect("clone a log file"), file)
}

/// The last [`LOG_TAIL`] lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}

/// Ends a child with SIGKILL, as `kill -9`, and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Fails the test when `child` has exited, with the end of its log.
fn assert_running(child: &mut Child, what: &str, log: &Path) {
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!("{what} exited ({status}) before it was ready; its log ends:\n{}", log_tail(log));
    }
}

/// A `nats-server -js` on 127.0.0.1, with its JetStream store in a directory of its own; it
/// can be stopped and started again on the same port with the same store.
pub struct Nats {
    child: Option<Child>,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    store: PathBuf,
    log: PathBuf,
}

impl Nats {
    /// Starts a NATS server with JetStream in `dir` (store and log), and waits until it accepts
    /// TCP connections.
    pub async fn start(dir: &Path) -> Nats {
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).expect("create the JetStream store directory");
        let log = dir.join("nats-server.log");
        let mut nats = Nats { child: None, port: free_tcp_port(), store, log };
        // A port found free can be taken before the server binds it (by another test): then
        // another port.
        for _ in 0..3 {
            match nats.run().await {
                Ok(()) => return nats,
                Err(_) => nats.port = free_tcp_port(),
            }
        }
        nats.resume().await;
        nats
    }

    /// The URL relays connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: it closes nothing) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts the server again on the same port with the same store (after [`Nats::stop`]),
    /// and waits until it accepts TCP connections.
    pub async fn resume(&mut self) {
        if let Err(status) = self.run().await {
            panic!(
                "nats-server exited ({status}) before it was ready; its log ends:\n{}",
                log_tail(&self.log)
            );
        }
    }

    /// Starts the server and waits until it accepts TCP connections; the exit status if it
    /// exits first.
    async fn run(&mut self) -> Result<(), std::process::ExitStatus> {
        assert!(self.child.is_none(), "nats-server is already running");
        let (stdout, stderr) = log_file(&self.log);
        let port = self.port.to_string();
        let mut child = Command::new(nats_server_program())
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("cannot start nats-server");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Err(status);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                kill(&mut child);
                panic!(
                    "nats-server did not accept connections on {addr} within {START:?}; its log \
                     ends:\n{}",
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the server is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `qrelay serve` process of the cluster.
struct Node {
    /// `None` once killed.
    child: Option<Child>,
    /// Its QUIC address, from its ready file.
    addr: SocketAddr,
    /// Its HTTP address (server API, /readyz), from its ready file.
    http: SocketAddr,
    /// The NATS URL it was started with (`--nats`).
    nats: String,
    log: PathBuf,
}

/// How the relays' frequency limits are set.
pub enum Limits {
    /// None at all (`--limits benchmark`).
    Unlimited,
    /// A configuration file with this TOML (`--config`); what it leaves out has its default.
    Config(String),
    /// A configuration file with this TOML (`--config`, e.g. a `[cluster]` table), and no
    /// frequency limits at all (`--limits benchmark`, which overrides the file's `[limits]`).
    UnlimitedWith(String),
}

/// N relays (`node0`, `node1`, …) sharing one certificate directory and one NATS server.
pub struct Cluster {
    nodes: Vec<Node>,
    /// The NATS server the relays share; stop and resume it through here.
    pub nats: Nats,
    roots: Vec<CertificateDer<'static>>,
    tokens: TokenKey,
    /// The certificate directory every node shares.
    certs: PathBuf,
    /// The nodes' limit arguments (`--limits`, `--config`).
    limit_args: Vec<String>,
    /// Last: removed after every process is gone.
    dir: TempDir,
}

impl Cluster {
    /// A NATS server and `n` relays without frequency limits.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, Limits::Unlimited).await
    }

    /// A NATS server and `n` relays with `limits`, each ready (its ready file written).
    pub async fn start_with(n: usize, limits: Limits) -> Cluster {
        Self::start_custom(n, limits, |_, nats| nats.url()).await
    }

    /// A NATS server and `n` relays with `limits`; node `k` connects to the NATS URL
    /// `nats_url(k, &nats)` (e.g. a proxy in front of it).
    pub async fn start_custom(
        n: usize,
        limits: Limits,
        nats_url: impl Fn(usize, &Nats) -> String,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        // The certificates and token secret every node shares, made before any node starts
        // (nodes starting together on an empty directory would each make their own).
        let certs = dir.path().join("certs");
        let paths = CertPaths::in_dir(&certs);
        DevPki::generate().expect("development PKI").write(&paths).expect("write certificates");
        let secret = generate_secret(&paths.token_secret).expect("write the token secret");
        // The server API key too (the nodes' HTTP listeners, for /readyz, would each make one).
        write_private(&certs.join("api.key"), API_KEY);
        let write_config = |toml: &str| {
            let path = dir.path().join("qrelay.toml");
            std::fs::write(&path, toml).expect("write the relay configuration");
            vec!["--config".to_owned(), path.display().to_string()]
        };
        let limit_args: Vec<String> = match limits {
            Limits::Unlimited => vec!["--limits".into(), "benchmark".into()],
            Limits::Config(toml) => write_config(&toml),
            Limits::UnlimitedWith(toml) => {
                let mut args = write_config(&toml);
                args.extend(["--limits".into(), "benchmark".into()]);
                args
            }
        };
        let nats = Nats::start(dir.path()).await;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            nats,
            roots: load_certs(&paths.ca_cert).expect("the development CA"),
            tokens: TokenKey::new(&secret),
            certs,
            limit_args,
            dir,
        };
        // Started together, then waited for (a node may wait for the others to come up); each
        // is in `nodes` at once, so that a failure kills those already started.
        let mut ready_files = Vec::new();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        for k in 0..n {
            let url = nats_url(k, &cluster.nats);
            let (node, ready) = cluster.spawn_node(k, &url, any);
            cluster.nodes.push(node);
            ready_files.push(ready);
        }
        for (k, ready) in ready_files.iter().enumerate() {
            wait_ready(&mut cluster.nodes[k], &format!("node{k}"), ready).await;
        }
        cluster
    }

    /// Spawns `qrelay serve` as node `k` on the QUIC address `listen`, connecting to NATS at
    /// `nats` (its addresses not yet known); returns it and its ready file.
    fn spawn_node(&self, k: usize, nats: &str, listen: SocketAddr) -> (Node, PathBuf) {
        let name = format!("node{k}");
        let ready = self.dir.path().join(format!("{name}.ready.json"));
        // A ready file of an earlier process of this node would be read as this one's.
        let _ = std::fs::remove_file(&ready);
        let log = self.dir.path().join(format!("{name}.log"));
        let (_, stderr) = log_file(&log);
        let child = Command::new(BIN)
            .args(["serve", "--listen", &listen.to_string(), "--http", "127.0.0.1:0", "--no-web"])
            .arg("--certs-dir")
            .arg(&self.certs)
            .args(["--nats", nats, "--node", &name, "--ready-file"])
            .arg(&ready)
            .args(&self.limit_args)
            // CLUSTER_TEST_LOG=qrelay=debug to see more of a failing test.
            .env("RUST_LOG", std::env::var("CLUSTER_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            // The banner (the ready file says the same).
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("cannot start qrelay serve");
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let node =
            Node { child: Some(child), addr: unknown, http: unknown, nats: nats.into(), log };
        (node, ready)
    }

    /// The QUIC address of node `k`.
    pub fn addr(&self, k: usize) -> SocketAddr {
        self.nodes[k].addr
    }

    /// The HTTP address (server API, /readyz) of node `k`'s current process.
    pub fn http(&self, k: usize) -> SocketAddr {
        self.nodes[k].http
    }

    /// Starts node `k` again after [`Cluster::kill`]: a new process (a new incarnation) with
    /// the same node name, QUIC address and NATS URL (its HTTP port is a new one), and waits
    /// until it is ready.
    pub async fn restart(&mut self, k: usize) {
        assert!(self.nodes[k].child.is_none(), "node{k} is still running: kill it first");
        let (addr, nats) = (self.nodes[k].addr, self.nodes[k].nats.clone());
        let (node, ready) = self.spawn_node(k, &nats, addr);
        self.nodes[k] = node;
        wait_ready(&mut self.nodes[k], &format!("node{k}"), &ready).await;
        assert_eq!(self.nodes[k].addr, addr, "node{k} came back on another QUIC address");
    }

    /// Kills node `k` with SIGKILL (as `kill -9`: it closes nothing, tells no one) and reaps
    /// it.
    pub fn kill(&mut self, k: usize) {
        if let Some(mut child) = self.nodes[k].child.take() {
            kill(&mut child);
        }
    }

    /// A one-hour token for `user` that grants only `rooms`, may publish.
    pub fn token_for(&self, user: &str, rooms: &[&str]) -> String {
        let rooms = Some(rooms.iter().map(|r| r.to_string()).collect());
        self.tokens.mint(user, rooms, true, Duration::from_secs(3600)).expect("mint a token")
    }

    /// A one-hour token for `user`, every room, may publish.
    pub fn token(&self, user: &str) -> String {
        self.tokens.mint(user, None, true, Duration::from_secs(3600)).expect("mint a token")
    }

    /// A client configuration as `user` for the server list of `nodes` (in that order), with
    /// short connect timeouts and reconnect backoff, so that a lost node is left soon.
    pub fn config(&self, nodes: &[usize], user: &str) -> ClientConfig {
        let list: Vec<String> = nodes.iter().map(|&k| self.addr(k).to_string()).collect();
        let servers: ServerList = list.join(",").parse().expect("a server list");
        let user = User { id: user.into(), name: user.to_uppercase() };
        let mut config = ClientConfig::new(servers, "localhost", self.roots.clone(), user);
        config.connect_timeout = Duration::from_secs(2);
        config.reconnect.initial_backoff = Duration::from_millis(50);
        config.reconnect.max_backoff = Duration::from_millis(300);
        config
    }

    /// Connects `config`'s client and logs it in to `rooms` with a token for its user.
    pub async fn connect(&self, config: ClientConfig, rooms: &[&str]) -> (Client, Events) {
        let user = config.user.id.clone();
        let (client, events) = within(Client::connect(config)).await.expect("connect");
        for room in rooms {
            let logged_in = within(client.login_room(room, &self.token(&user))).await;
            logged_in.unwrap_or_else(|e| panic!("{user} cannot log in to {room}: {e}"));
        }
        (client, events)
    }

    /// A client of node `k` alone as `user`, logged in to `rooms`.
    pub async fn client(&self, k: usize, user: &str, rooms: &[&str]) -> (Client, Events) {
        self.connect(self.config(&[k], user), rooms).await
    }
}

/// Waits until the node's ready file names its QUIC address, notes it, then until its
/// `/readyz` says it has caught up with the cluster.
async fn wait_ready(node: &mut Node, name: &str, ready: &Path) {
    let deadline = Instant::now() + START;
    let child = node.child.as_mut().expect("a running node");
    loop {
        assert_running(child, &format!("relay {name}"), &node.log);
        // Written in one go, but perhaps not yet whole when read: read again until it parses.
        let addr = std::fs::read_to_string(ready)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|json| {
                let quic = json["quic"].as_str()?.parse::<SocketAddr>().ok()?;
                Some((quic, json["http"].as_str()?.parse::<SocketAddr>().ok()?))
            });
        if let Some((addr, http)) = addr {
            node.addr = addr;
            node.http = http;
            while !readyz(http).await {
                assert_running(node.child.as_mut().expect("a running node"), name, &node.log);
                assert!(
                    Instant::now() < deadline,
                    "relay {name} did not catch up with the cluster within {START:?} (/readyz); its log ends:\n{}",
                    log_tail(&node.log)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay {name} was not ready within {START:?}; its log ends:\n{}",
            log_tail(&node.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                kill(&mut child);
            }
        }
        self.nats.stop();
        if std::thread::panicking() {
            for (k, node) in self.nodes.iter().enumerate() {
                eprintln!("--- node{k} ({}) log ends:\n{}", node.addr, log_tail(&node.log));
            }
            eprintln!("--- nats-server log ends:\n{}", log_tail(&self.nats.log));
        }
    }
}

/// Whether the node's `/readyz` answers 200 (a plain HTTP/1.0 request over loopback).
async fn readyz(http: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let asked = async {
        let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), asked).await.ok().flatten().unwrap_or(false)
}

/// Writes a file only its owner may read (as the relay wants its keys).
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("write a private file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write a private file");
}

/// A TCP proxy on 127.0.0.1 in front of the NATS server, for one node: cutting it closes
/// every connection through it and stops accepting (connections are refused), as a network
/// that fails between that node and NATS alone; restoring it accepts on the same port again.
pub struct NatsProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it forwards to (set by [`NatsProxy::url_to`]).
    target: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// Whether it passes traffic.
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl NatsProxy {
    /// A proxy on a free port, up, forwarding nowhere until [`NatsProxy::url_to`].
    pub fn start() -> NatsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("local address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let target = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (up, _) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(Self::serve(listener, port, target.clone(), up.subscribe()));
        NatsProxy { port, target, up, task }
    }

    /// The URL a node connects to, forwarding to `nats`.
    pub fn url_to(&self, nats: &Nats) -> String {
        *self.target.lock().unwrap() = Some(SocketAddr::from(([127, 0, 0, 1], nats.port)));
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Accepts connections again, on the same port.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    async fn serve(
        mut listener: tokio::net::TcpListener,
        port: u16,
        target: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
        mut up: tokio::sync::watch::Receiver<bool>,
    ) {
        let pipes = up.clone();
        loop {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let Some(to) = *target.lock().unwrap() else { continue };
                        tokio::spawn(Self::pipe(client, to, pipes.clone()));
                    }
                    changed = up.wait_for(|up| !*up) => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
            // Cut: no listener, so connecting is refused.
            drop(listener);
            if up.wait_for(|up| *up).await.is_err() {
                return;
            }
            listener = loop {
                match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(listener) => break listener,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
        }
    }

    async fn pipe(
        mut client: tokio::net::TcpStream,
        to: SocketAddr,
        mut up: tokio::sync::watch::Receiver<bool>,
    ) {
        let Ok(mut server) = tokio::net::TcpStream::connect(to).await else { return };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            _ = up.wait_for(|up| !*up) => {}
        }
        // Both sockets are closed here.
    }
}

impl Drop for NatsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
