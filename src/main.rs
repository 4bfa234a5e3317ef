//! `qrelay`: run the relay (`serve`) or mint a login token (`token`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use qrelay::auth::{TokenKey, generate_secret, read_secret};
use qrelay::certs::{CertPaths, DevPki, OLD_CA_KEY, exposed_mode, load_certs, load_key};
use qrelay::server::{Identity, RateLimits, Server, ServerConfig};
use qrelay::webtransport::WebTransportCert;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "qrelay", version, about = "A QUIC relay for real-time room messaging")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (defaults: UDP 127.0.0.1:4433, development certificates under certs/).
    Serve(ServeArgs),
    /// Print a login token (JWT) signed with the relay's secret.
    Token(TokenArgs),
    /// Print the default configuration as TOML (a starting point for --config).
    DefaultConfig,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, env = "QRELAY_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on [default: 127.0.0.1:4433].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of the development CA, certificate and token secret [default: certs].
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// Frequency-limit profile: the SDK defaults, or none at all for benchmarks.
    #[arg(long, value_enum)]
    limits: Option<LimitProfile>,
    /// Accept any token (or none). Local experiments only: anyone can log in as anyone.
    /// Refused on a listen address that is not loopback, unless the next flag is given too.
    #[arg(long)]
    insecure_dev_auth: bool,
    /// Allow --insecure-dev-auth (or its config setting) on a listen address that is not
    /// loopback.
    #[arg(long)]
    insecure_dev_auth_on_public_address: bool,
    /// Runtime worker threads; 1 runs everything on one thread [default: 1].
    #[arg(long)]
    threads: Option<usize>,
    /// Turn UDP segmentation offload (GSO) off.
    #[arg(long)]
    no_gso: bool,
    /// UDP sockets on the one address (SO_REUSEPORT), each endpoint after the first on a
    /// thread of its own [default: 1].
    #[arg(long)]
    endpoints: Option<usize>,
    /// TCP address of the HTTP listener (server API, /metrics, /healthz, /readyz)
    /// [default: 127.0.0.1:4480].
    #[arg(long, conflicts_with = "no_http")]
    http: Option<SocketAddr>,
    /// No HTTP listener.
    #[arg(long)]
    no_http: bool,
    /// TCP address of the live-comment demo page (and the JavaScript client) for browsers
    /// [default: 127.0.0.1:8080].
    #[arg(long, conflicts_with = "no_web")]
    web: Option<SocketAddr>,
    /// No demo page listener.
    #[arg(long)]
    no_web: bool,
    /// Accept no WebTransport (browser) sessions on the UDP port.
    #[arg(long)]
    no_webtransport: bool,
    /// A webhook URL for room events (repeat for several); adds to the config file's.
    #[arg(long = "webhook")]
    webhooks: Vec<String>,
    /// Once every listener is bound, write {"quic": ADDR, "http": ADDR or null, "web": ADDR or
    /// null} to this file
    /// (for scripts; the same as the banner's last line, `qrelay ready ...`).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Join a cluster through these NATS servers (with JetStream; comma-separated URLs, e.g.
    /// nats://127.0.0.1:4222): relays sharing NATS and the certs directory share their rooms
    /// (docs/CLUSTER.md). Other settings go in the config file's [cluster] table.
    #[arg(long)]
    nats: Option<String>,
    /// This node's name in the cluster [default: the host name].
    #[arg(long, requires = "nats")]
    node: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LimitProfile {
    /// broadcast 10/s per room and 2/s per user, barrage 20/s per room, commands 200/s to one
    /// user and 10/s to several, logins 200/s per room.
    Default,
    /// No frequency limits.
    Benchmark,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user ID the token is issued to.
    #[arg(long)]
    user: String,
    /// A room the token grants (repeat for several); none means every room.
    #[arg(long = "room")]
    rooms: Vec<String>,
    /// How long the token is valid, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Issue a listen-only token (no sending).
    #[arg(long)]
    listen_only: bool,
    /// The token secret file.
    #[arg(long, default_value = "certs/token.secret")]
    secret: PathBuf,
}

/// Runs the command; a failure is one `error: ...` line on stderr and exit code 1 (printed
/// here: returning it from `main` would add a stack trace when `RUST_BACKTRACE` is set).
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::DefaultConfig => default_config(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_config() -> anyhow::Result<()> {
    print!("{}", toml::to_string_pretty(&ServerConfig::default())?);
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written is dropped. By default tracing-subscriber reports
        // the failure with `eprintln!`, which panics when stderr is a closed pipe: Ctrl-C on
        // `qrelay serve 2>&1 | tee log` kills tee too, and the relay died on its "shutting
        // down" line without closing its clients.
        .log_internal_errors(false)
        .with_env_filter(
            // async-nats logs each retry to reach NATS at info: the relay says it once.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .init();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<ServerConfig>(&text)
                .with_context(|| format!("invalid configuration in {}", path.display()))?
        }
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.certs_dir {
        config.tls.certs_dir = dir;
    }
    match args.limits {
        Some(LimitProfile::Default) => config.limits = RateLimits::default(),
        Some(LimitProfile::Benchmark) => config.limits = RateLimits::unlimited(),
        None => {}
    }
    config.insecure_dev_auth |= args.insecure_dev_auth;
    config.insecure_dev_auth_on_public_address |= args.insecure_dev_auth_on_public_address;
    if args.no_gso {
        config.segmentation_offload = false;
    }
    if let Some(endpoints) = args.endpoints {
        config.endpoints = endpoints;
    }
    if let Some(http) = args.http {
        config.http = Some(http);
    }
    if args.no_http {
        config.http = None;
    }
    if let Some(web) = args.web {
        config.web = Some(web);
    }
    if args.no_web {
        config.web = None;
    }
    if args.no_webtransport {
        config.webtransport = false;
    }
    let default_web = ServerConfig::default().web;
    if args.web.is_none()
        && config.web.is_some()
        && config.web == default_web
        && let Some(addr) = config.web
        && std::net::TcpListener::bind(addr).is_err()
    {
        // The page is a convenience: a default port taken by another program must not stop
        // the relay. A port asked for (--web, or `web` in the file set elsewhere) must bind.
        warn!(%addr, "the demo page's default address is taken: page off (--web ADDR picks another)");
        config.web = None;
    }
    config.webhooks.extend(args.webhooks);
    if let Some(nats) = args.nats {
        config.cluster.get_or_insert_with(Default::default).nats = nats;
    }
    if let Some(node) = args.node
        && let Some(cluster) = &mut config.cluster
    {
        cluster.node = node;
    }
    let threads = args.threads.unwrap_or(1);
    // Before any file is created for a relay that will not start.
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let identity = load_identity(&config)?;
    let warnings = private_file_warnings(&config);
    for warning in &warnings {
        warn!("{warning}");
    }
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    runtime.block_on(run(config, identity, warnings, args.ready_file))
}

/// Runs the relay until SIGINT or SIGTERM; the banner repeats `warnings`, and says when tokens
/// are not checked.
async fn run(
    config: ServerConfig,
    identity: Identity,
    warnings: Vec<String>,
    ready_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let certs_dir = config.tls.certs_dir.clone();
    let own_certificate = config.tls.cert.is_some();
    let secret = config.tls.token_secret.clone().unwrap_or_else(|| certs_dir.join("token.secret"));
    let listen = config.listen;
    let insecure_dev_auth = config.insecure_dev_auth;
    let api_key_path = api_key_path(&config);
    let http = config.http;
    let webhooks = config.webhooks.clone();
    let web = config.web;
    let cluster = config.cluster.clone();
    let server = Server::bind(config, identity).with_context(|| {
        let tcp: Vec<String> = [http, web].into_iter().flatten().map(|a| a.to_string()).collect();
        match tcp.is_empty() {
            false => format!("cannot start the relay on UDP {listen} and TCP {}", tcp.join(", ")),
            true => format!("cannot start the relay on UDP {listen}"),
        }
    })?;
    let addr = server.local_addr()?;
    let http = server.http_addr();
    let web = server.web_addr();
    let handle = server.handle();
    let signal = shutdown_signal();
    // The banner is a courtesy: a closed stdout (e.g. `qrelay serve | head -1`) must not stop
    // the relay, so write errors are ignored rather than panicking as `println!` would.
    let mut banner = format!("qrelay listening on UDP {addr}\n");
    // Said whatever RUST_LOG lets through: a config file can switch this on silently.
    if insecure_dev_auth {
        banner.push_str(
            "  WARNING: INSECURE DEV AUTH: tokens are not checked; anyone can log in as anyone\n",
        );
    }
    for warning in &warnings {
        banner.push_str(&format!("  WARNING: {warning}\n"));
    }
    // With the operator's certificate there is no development CA: clients trust the
    // certificate's own CA (the system roots by default).
    let ca = match own_certificate {
        false => format!(" --ca {}", certs_dir.join("ca.pem").display()),
        true => String::new(),
    };
    banner.push_str(&format!(
        "  try:  cargo run --release -p qrelay-cli -- --server {addr}{ca} --secret {secret} listen --room lobby\n  a token for another program:  cargo run --release -- token --secret {secret} --user alice\n",
        secret = secret.display()
    ));
    if let Some(http) = http {
        banner.push_str(&format!(
            "  HTTP on http://{http} (on by default, loopback only; --no-http turns it off): server API /v1 (Authorization: Bearer $(cat {})), /metrics, /healthz, /readyz\n",
            api_key_path.display()
        ));
    }
    if let Some(web) = web {
        banner.push_str(&format!(
            "  page on http://{web}/?room=lobby&user=alice (on by default, loopback only; --no-web turns it off): live comments in a browser, over WebTransport\n"
        ));
    }
    if let Some(cluster) = &cluster {
        banner.push_str(&format!(
            "  cluster: node {} through NATS {} (rooms are shared with every relay there; /readyz says when this node has caught up)\n",
            cluster.node, cluster.nats
        ));
    }
    if !webhooks.is_empty() {
        banner.push_str(&format!(
            "  webhooks: room events go to {} (signed with the API key)\n",
            webhooks.join(", ")
        ));
    }
    let http_text = http.map_or("off".to_string(), |http| http.to_string());
    // The documented machine-readable line: always the banner's last.
    let web_text = web.map_or("off".to_string(), |web| web.to_string());
    banner.push_str(&format!("qrelay ready quic={addr} http={http_text} web={web_text}\n"));
    if let Some(path) = &ready_file {
        let ready = serde_json::json!({
            "quic": addr.to_string(),
            "http": http.map(|h| h.to_string()),
            "web": web.map(|w| w.to_string()),
        });
        std::fs::write(path, format!("{ready}\n"))
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
    }
    let running = tokio::spawn(server.run());
    signal.await;
    info!("shutting down");
    handle.shutdown().await;
    let _ = running.await;
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now (before the banner tells anyone the relay is
/// up: a signal that came before them would kill the relay without closing its clients) and
/// returns what completes at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The certificate, key and token secret: configured files, or the development PKI under
/// `certs_dir`, created on first start.
fn load_identity(config: &ServerConfig) -> anyhow::Result<Identity> {
    let dev = CertPaths::in_dir(&config.tls.certs_dir);
    let (chain, key) = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => (load_certs(cert)?, load_key(key)?),
        (None, None) => {
            if !dev.server_cert.exists() || !dev.server_key.exists() {
                DevPki::generate()
                    .context("cannot generate development certificates")?
                    .write(&dev)
                    .with_context(|| format!("cannot write {}", config.tls.certs_dir.display()))?;
                warn!(
                    dir = %config.tls.certs_dir.display(),
                    "created a development CA and server certificate (valid for localhost, 127.0.0.1, ::1); clients trust {}",
                    dev.ca_cert.display()
                );
            }
            (load_certs(&dev.server_cert)?, load_key(&dev.server_key)?)
        }
        _ => bail!("set both tls.cert and tls.key, or neither"),
    };
    let secret = config.tls.token_secret.clone().unwrap_or(dev.token_secret);
    let secret = load_or_create_secret(&secret)?;
    // The endpoint keys come from the persistent secret too, so a restarted relay resets the
    // connections of the process before it.
    let mut identity = Identity::new(chain, key, &secret);
    if config.tls.cert.is_some() {
        // The operator's certificate, which browsers trust: no short-lived one, no hashes.
        identity = identity.with_webtransport_cert(WebTransportCert::Server);
    }
    if config.tls.cert.is_none() && config.tls.token_secret.is_none() {
        // The development secret of certs_dir: the page may mint tokens (on loopback only).
        identity = identity.with_dev_tokens();
    }
    if config.http.is_none() && config.webhooks.is_empty() {
        return Ok(identity);
    }
    let path = api_key_path(config);
    let api_key = if path.exists() {
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the API key {}", path.display()))?
            .trim()
            .to_owned()
    } else {
        let key = hex::encode(
            generate_secret(&path)
                .with_context(|| format!("cannot write the API key {}", path.display()))?,
        );
        warn!(path = %path.display(), "created a new server API key");
        key
    };
    anyhow::ensure!(!api_key.is_empty(), "the API key file {} is empty", path.display());
    Ok(identity.with_api_key(api_key))
}

/// Where the server API key lives.
fn api_key_path(config: &ServerConfig) -> PathBuf {
    config.tls.api_key.clone().unwrap_or_else(|| config.tls.certs_dir.join("api.key"))
}

/// A warning for each private file (server key, token secret) that group or others can read or
/// write, and for a CA key an earlier version left in the certificate directory.
fn private_file_warnings(config: &ServerConfig) -> Vec<String> {
    let dev = CertPaths::in_dir(&config.tls.certs_dir);
    let key = config.tls.key.clone().unwrap_or(dev.server_key);
    let secret = config.tls.token_secret.clone().unwrap_or(dev.token_secret);
    let mut warnings = Vec::new();
    for path in [key, secret, api_key_path(config)] {
        // A file that cannot be read was refused when loading it.
        if let Ok(Some(mode)) = exposed_mode(&path) {
            let path = path.display();
            warnings.push(format!(
                "{path} can be read or written by group or others (mode {mode:o}): chmod 600 {path}"
            ));
        }
    }
    let old_ca_key = config.tls.certs_dir.join(OLD_CA_KEY);
    if old_ca_key.exists() {
        warnings.push(format!(
            "{} is not used any more (the CA key is no longer kept; with it anyone can issue \
             certificates that clients trusting ca.pem accept): delete it",
            old_ca_key.display()
        ));
    }
    warnings
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.exists() {
        return read_secret(path)
            .with_context(|| format!("cannot read the token secret {}", path.display()));
    }
    let secret = generate_secret(path)
        .with_context(|| format!("cannot write the token secret {}", path.display()))?;
    warn!(path = %path.display(), "created a new token-signing secret");
    Ok(secret)
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    use qrelay::protocol::{ID_PUNCTUATION, MAX_ROOM_ID, MAX_USER_ID};
    qrelay::protocol::check_user_id(&args.user).map_err(|_| {
        anyhow::anyhow!(
            "{:?} is not a valid user ID (1-{MAX_USER_ID} bytes of letters, digits and \
             {ID_PUNCTUATION})",
            args.user,
        )
    })?;
    for room in &args.rooms {
        qrelay::protocol::check_room_id(room).map_err(|_| {
            anyhow::anyhow!(
                "{room:?} is not a valid room ID (1-{MAX_ROOM_ID} bytes of letters, digits and \
                 {ID_PUNCTUATION})"
            )
        })?;
    }
    let key = TokenKey::from_file(&args.secret).with_context(|| {
        format!(
            "cannot read the token secret {} (start the relay once with `qrelay serve` to create it)",
            args.secret.display()
        )
    })?;
    let rooms = (!args.rooms.is_empty()).then_some(args.rooms);
    anyhow::ensure!(
        args.ttl.as_secs() >= 1,
        "--ttl must be at least 1s (a token is valid for whole seconds)"
    );
    println!("{}", key.mint(&args.user, rooms, !args.listen_only, args.ttl)?);
    Ok(())
}
