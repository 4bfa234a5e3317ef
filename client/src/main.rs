//! `qrelay-cli`: log in to qrelay rooms and send or watch messages from a terminal or a
//! script. One-shot commands and `listen` print one JSON object per line on stdout; `chat`
//! is interactive (`chat.rs`). Diagnostics go to stderr (`RUST_LOG`, default `warn`).

mod bench;
mod chat;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use qrelay::auth::TokenKey;
use qrelay::certs::load_certs;
use qrelay::client::{
    Client, ClientConfig, ClientError, ConnectionState, Event, Events, ServerList,
    validate_payload, validate_room, validate_targets, validate_user,
};
use qrelay::protocol::{ErrorCode, User};
use serde::Serialize;

/// How long a token minted from the secret file is valid.
const MINTED_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The longest `--timeout` or `--reconnect-for` (a day; far beyond any use, and well within
/// what a `Duration` holds).
const MAX_SECONDS: f64 = 86_400.0;

/// Command-line client for the qrelay room relay.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    action: Action,
}

/// The help heading of the options that say how to reach the relay.
const CONNECTION_OPTIONS: &str = "Connection options";
/// The help heading of the options that say who logs in.
const LOGIN_OPTIONS: &str = "Login options";
/// The shared options `bench` has no use for (it names its own users and never reconnects):
/// its help leaves them out.
const NOT_FOR_BENCH: [&str; 4] = ["user", "name", "no_reconnect", "reconnect_for"];

/// Options every subcommand takes, before or after its name.
#[derive(Debug, Args)]
struct Common {
    /// The relay's UDP address, HOST:PORT or IP:PORT; several, separated by commas, are
    /// tried in order.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:4433",
        value_name = "ADDR[,ADDR...]",
        help_heading = CONNECTION_OPTIONS
    )]
    server: ServerList,
    /// The name the server certificate must be valid for.
    #[arg(
        long,
        global = true,
        default_value = "localhost",
        value_name = "NAME",
        help_heading = CONNECTION_OPTIONS
    )]
    server_name: String,
    /// CA certificate (PEM) to trust.
    #[arg(
        long,
        global = true,
        default_value = "certs/ca.pem",
        value_name = "FILE",
        help_heading = CONNECTION_OPTIONS
    )]
    ca: PathBuf,
    /// Seconds to wait for each reply (a lost barrage fails after this), and for each
    /// connection attempt.
    #[arg(
        long,
        global = true,
        default_value_t = 5.0,
        value_parser = positive_seconds,
        value_name = "SECONDS",
        help_heading = CONNECTION_OPTIONS
    )]
    timeout: f64,
    /// Do not reconnect after a lost connection: the first loss ends the command.
    #[arg(long, global = true, help_heading = CONNECTION_OPTIONS)]
    no_reconnect: bool,
    /// Seconds to keep trying to reconnect after a lost connection before giving up.
    #[arg(
        long,
        global = true,
        default_value_t = 120.0,
        value_parser = seconds,
        value_name = "SECONDS",
        help_heading = CONNECTION_OPTIONS
    )]
    reconnect_for: f64,
    /// User ID [default: the --token's user (its `sub`), else cli- and 4 random hex digits]
    #[arg(long, global = true, value_name = "ID", help_heading = LOGIN_OPTIONS)]
    user: Option<String>,
    /// User name [default: the user ID]
    #[arg(long, global = true, help_heading = LOGIN_OPTIONS)]
    name: Option<String>,
    /// Login token (JWT); without it one is minted from --secret if that file exists.
    #[arg(
        long,
        global = true,
        env = "QRELAY_TOKEN",
        hide_env_values = true,
        value_name = "JWT",
        help_heading = LOGIN_OPTIONS
    )]
    token: Option<String>,
    /// Token-signing secret to mint a 1-hour token from when --token is absent.
    #[arg(
        long,
        global = true,
        default_value = "certs/token.secret",
        value_name = "FILE",
        help_heading = LOGIN_OPTIONS
    )]
    secret: PathBuf,
}

/// The command line's grammar: [`Cli`] with the shared options `bench` does not use hidden
/// from its help (it still accepts them, as every subcommand takes the shared options).
fn command() -> clap::Command {
    let mut command = Cli::command();
    // Building copies the shared (global) options into every subcommand.
    command.build();
    command.mut_subcommands(|subcommand| match subcommand.get_name() {
        "bench" => {
            subcommand.mut_args(|arg| match NOT_FOR_BENCH.contains(&arg.get_id().as_str()) {
                true => arg.hide(true),
                false => arg,
            })
        }
        _ => subcommand,
    })
}

/// A number of seconds, 0 or more.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs >= 0.0 && secs.is_finite() && secs < MAX_SECONDS => Ok(secs),
        _ => Err(format!("not a number of seconds from 0 to {MAX_SECONDS}")),
    }
}

/// A positive number of seconds.
fn positive_seconds(text: &str) -> Result<f64, String> {
    seconds(text).and_then(|secs| match secs > 0.0 {
        true => Ok(secs),
        false => Err("must be more than 0 seconds".into()),
    })
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Log in to rooms and print every event as a JSON line until Ctrl-C or SIGTERM. Keeps
    /// running through reconnects; exits non-zero when reconnecting gives up or no room is
    /// left.
    Listen {
        /// A room to log in to (repeat for several).
        #[arg(long = "room", required = true, value_name = "ROOM")]
        rooms: Vec<String>,
    },
    /// Send one broadcast (reliable, to everyone else in the room).
    Broadcast {
        /// The room.
        #[arg(long)]
        room: String,
        /// The message.
        text: String,
    },
    /// Send one barrage message (best effort, as a datagram).
    Barrage {
        /// The room.
        #[arg(long)]
        room: String,
        /// The message.
        text: String,
    },
    /// Send one custom command to some users (or everyone else) in the room.
    Command {
        /// The room.
        #[arg(long)]
        room: String,
        /// Target user IDs, comma-separated; none means everyone else in the room.
        #[arg(long, value_delimiter = ',', value_name = "USER,...")]
        to: Vec<String>,
        /// The command payload.
        text: String,
    },
    /// List a room's members page by page (one JSON line per page, in session order), as a
    /// member: the listing includes this client's own login. The last line's `next` is 0, or
    /// the cursor to go on from with --cursor when --pages stopped the walk.
    Members {
        /// The room.
        #[arg(long)]
        room: String,
        /// Members per page (1 to 200).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=200), value_name = "N")]
        limit: u32,
        /// Start at this cursor (the `next` of an earlier page) instead of the first page.
        #[arg(long, default_value_t = 0, value_name = "CURSOR")]
        cursor: u64,
        /// Stop after this many pages (0: every page).
        #[arg(long, default_value_t = 0, value_name = "N")]
        pages: u64,
    },
    /// Chat interactively: each line is a broadcast; /barrage TEXT, /cmd USER[,USER] TEXT,
    /// /quit. Exits non-zero when the connection is lost for good or the room closes.
    Chat {
        /// The room.
        #[arg(long)]
        room: String,
    },
    /// Load test: open many connections in rooms, send at a target rate for a bounded time,
    /// report deliveries/s, latency percentiles, losses and the relay's CPU and memory. Exits
    /// non-zero if a reliable message was lost or duplicated.
    Bench(bench::BenchArgs),
    /// The same load against Redis pub/sub or NATS core pub/sub (one channel or subject for
    /// the room; evenly paced publishers, the other connections subscribe), for figures side
    /// by side with the relay's. Exits non-zero if a delivery was lost.
    PeerBench(bench::peer::PeerArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // One thread unless a load run asks for more: a hop between threads costs tens of
    // microseconds on a small machine, more than handling a message.
    let threads = match &cli.action {
        Action::Bench(args) => usize::from(args.threads),
        _ => 1,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let common = &cli.common;
    match cli.action {
        Action::Bench(args) => bench::main(common, args).await.unwrap_or_else(|error| {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }),
        Action::PeerBench(args) => bench::peer::main(args).await.unwrap_or_else(|error| {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }),
        Action::Listen { rooms } => listen(common, rooms).await,
        Action::Chat { room } => chat::run(common, room).await,
        Action::Members { room, limit, cursor, pages } => {
            members(common, &room, limit, cursor, pages).await
        }
        Action::Broadcast { room, text } => one_shot(common, Kind::Broadcast, &room, text).await,
        Action::Barrage { room, text } => one_shot(common, Kind::Barrage, &room, text).await,
        Action::Command { room, to, text } => {
            one_shot(common, Kind::Command { to }, &room, text).await
        }
    }
}

/// Why a command failed: the client library's error (a refusal, a local check, a lost
/// connection), or a problem with this machine's setup that never got as far as the relay.
#[derive(Debug)]
pub enum Failure {
    /// The client library's error; its code is the documented result code.
    Client(ClientError),
    /// A file the CLI needs cannot be read (`--ca`, `--secret`) or the process cannot be set
    /// up (signal handlers): [`render::LOCAL_SETUP`], with no result code.
    Setup(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure::Client(error)
    }
}

/// The login token, and the key it was minted with (a minted token can be renewed).
struct Token {
    token: String,
    key: Option<TokenKey>,
}

impl Token {
    fn current(&self) -> &str {
        &self.token
    }
}

/// A connected client with its events and token.
struct Session {
    client: Client,
    events: Events,
    token: Token,
}

/// Checks the user, reads the CA, settles the token, and connects. Every failure is a
/// [`Failure`], so the one-shot commands and `listen` print it as a JSON line.
async fn connect(common: &Common) -> Result<Session, Failure> {
    let id = user_id(common);
    let name = common.name.clone().unwrap_or_else(|| id.clone());
    let user = User { id, name };
    validate_user(&user)?;
    let roots = load_certs(&common.ca).map_err(|error| {
        Failure::Setup(format!(
            "no CA certificate to trust: {error:#} (`qrelay serve` writes certs/ca.pem on first \
             start; run from the checkout, or pass --ca)"
        ))
    })?;
    let token = token(common, &user.id)?;
    let mut config = ClientConfig::new(common.server.clone(), &common.server_name, roots, user);
    config.request_timeout = Duration::from_secs_f64(common.timeout);
    config.connect_timeout = config.request_timeout;
    config.reconnect.enabled = !common.no_reconnect;
    config.reconnect.max_elapsed = Duration::from_secs_f64(common.reconnect_for);
    let (client, events) = Client::connect(config).await.map_err(|e| explain(e, common))?;
    Ok(Session { client, events, token })
}

/// The user ID: --user, else the user a given token was issued to, else a random `cli-XXXX`
/// (a relay run with --insecure-dev-auth takes any token, and a token that is no JWT too).
fn user_id(common: &Common) -> String {
    common
        .user
        .clone()
        .or_else(|| common.token.as_deref().and_then(token_subject))
        .unwrap_or_else(|| format!("cli-{:04x}", rand::random::<u16>()))
}

/// The `sub` claim of a JWT (the user ID it was issued to), read without checking the
/// signature: the relay checks it. `None` when the token is not a JWT with a string `sub`.
fn token_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    /// The one claim read here.
    #[derive(serde::Deserialize)]
    struct Subject {
        sub: String,
    }
    let payload = token.split('.').nth(1)?;
    // JWTs use base64url without padding (RFC 7515); padding is tolerated.
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Subject>(&json).ok().map(|claims| claims.sub)
}

/// The token given with --token, or one minted from --secret (code `TOKEN_INVALID`, "missing
/// or malformed", when there is neither; a secret that cannot be read is a setup failure).
fn token(common: &Common, user: &str) -> Result<Token, Failure> {
    if let Some(token) = &common.token {
        return Ok(Token { token: token.clone(), key: None });
    }
    if !common.secret.exists() {
        return Err(Failure::Client(ClientError::Invalid {
            code: ErrorCode::TOKEN_INVALID,
            detail: format!(
                "no login token: pass --token TOKEN or set QRELAY_TOKEN (get one with `qrelay \
                 token --user {user}`), or point --secret at the relay's token secret (not \
                 found: {}); a relay run with --insecure-dev-auth takes any --token",
                common.secret.display()
            ),
        }));
    }
    let key = TokenKey::from_file(&common.secret).map_err(|error| {
        Failure::Setup(format!("cannot read the token secret {}: {error}", common.secret.display()))
    })?;
    let token = key
        .mint(user, None, true, MINTED_TOKEN_TTL)
        .map_err(|error| Failure::Setup(format!("cannot mint a token: {error}")))?;
    Ok(Token { token, key: Some(key) })
}

/// Says what to do about the two connect failures a new user meets first.
fn explain(error: ClientError, common: &Common) -> ClientError {
    match error {
        ClientError::NoAnswer { server, waited } => ClientError::Connect(format!(
            "no relay answered at {server} within {}: is it running? Start one with \
             `cargo run --release -- serve` (or pass --server ADDR)",
            render::duration(waited)
        )),
        ClientError::UntrustedCertificate(reason) => ClientError::Connect(format!(
            "the relay's certificate is not signed by the CA in --ca {} ({reason}): was certs/ \
             regenerated? Is the relay using another certs dir?",
            common.ca.display()
        )),
        other => other,
    }
}

/// Prints one JSON line on stdout.
fn print_json<T: Serialize>(value: &T) {
    println!("{}", render::line(value));
}

/// What a one-shot command sends.
enum Kind {
    Broadcast,
    Barrage,
    /// A custom command to these user IDs (none: everyone else).
    Command {
        to: Vec<String>,
    },
}

impl Kind {
    /// The name in the JSON line.
    fn name(&self) -> &'static str {
        match self {
            Kind::Broadcast => "broadcast",
            Kind::Barrage => "barrage",
            Kind::Command { .. } => "command",
        }
    }
}

/// Connects, logs in, sends one message, closes; prints the result, or any failure on the
/// way, as one JSON line.
async fn one_shot(common: &Common, kind: Kind, room: &str, text: String) -> ExitCode {
    let result = send_once(common, &kind, room, text).await;
    print_json(&render::sent_json(kind.name(), room, &result));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn send_once(common: &Common, kind: &Kind, room: &str, text: String) -> Result<u64, Failure> {
    // Everything that can be checked here is, before connecting.
    let to: Vec<&str> = match kind {
        Kind::Command { to } => to.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    validate_room(room)?;
    validate_payload(text.as_bytes())?;
    validate_targets(&to)?;
    let Session { client, events: _events, token } = connect(common).await?;
    let result = async {
        client.login_room(room, token.current()).await?;
        match kind {
            Kind::Broadcast => client.send_broadcast_message(room, text).await,
            Kind::Barrage => client.send_barrage_message(room, text).await,
            Kind::Command { .. } => client.send_custom_command(room, text, &to).await,
        }
    }
    .await;
    client.close().await;
    Ok(result?)
}

/// Connects, logs in, prints the member pages asked for (or the failure) as JSON lines,
/// closes.
async fn members(common: &Common, room: &str, limit: u32, cursor: u64, pages: u64) -> ExitCode {
    let result = async {
        validate_room(room)?;
        let Session { client, events: _events, token } = connect(common).await?;
        let walked = async {
            client.login_room(room, token.current()).await?;
            let mut cursor = cursor;
            let mut printed = 0;
            loop {
                let page = client.fetch_members(room, cursor, limit).await?;
                print_json(&render::members_json(room, &page));
                printed += 1;
                cursor = page.next;
                if cursor == 0 || printed == pages {
                    return Ok::<(), ClientError>(());
                }
            }
        }
        .await;
        client.close().await;
        Ok::<(), Failure>(walked?)
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            print_json(&render::members_failed_json(room, &failure));
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM: `listen` and `chat` leave cleanly on either, closing the
/// client so that the relay removes the member at once. Created before connecting, so that a
/// signal during the login is not the default (an abrupt exit) either.
struct Stop {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> std::io::Result<Stop> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Stop {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Stop {})
    }

    /// Waits for the next signal.
    async fn signalled(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sets up the signals to leave on and connects, for `listen` and `chat`.
async fn start(common: &Common) -> Result<(Session, Stop), Failure> {
    let stop = Stop::new().map_err(|error| {
        Failure::Setup(format!("cannot set up the Ctrl-C and SIGTERM handlers: {error}"))
    })?;
    Ok((connect(common).await?, stop))
}

/// Logs in to every room and prints events until Ctrl-C or SIGTERM, the client ends
/// (connection lost and not reconnected), or no room is left. Every outcome is a JSON line:
/// a failure before the first connection (`connect`), each login, each event, and, when
/// reconnecting gives up, a last `disconnected` line that says so.
async fn listen(common: &Common, rooms: Vec<String>) -> ExitCode {
    // Bad room names fail before connecting, in the same JSON line a refused login gets.
    for room in &rooms {
        if let Err(e) = qrelay::client::validate_room(room) {
            print_json(&render::login_json(room, &Err(e)));
            return ExitCode::FAILURE;
        }
    }
    let (session, mut stop) = match start(common).await {
        Ok(started) => started,
        Err(failure) => {
            print_json(&render::connect_json(&failure));
            return ExitCode::FAILURE;
        }
    };
    let Session { client, mut events, token } = session;
    let mut open = Vec::new();
    for room in &rooms {
        let result = client.login_room(room, token.current()).await;
        print_json(&render::login_json(room, &result));
        if result.is_err() {
            client.close().await;
            return ExitCode::FAILURE;
        }
        open.push(room.clone());
    }
    // Why reconnecting gave up, once it has: the `disconnected` line after it says so.
    let mut gave_up: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.signalled() => {
                client.close().await;
                return ExitCode::SUCCESS;
            }
            event = events.next() => {
                let Some(event) = event else { return ExitCode::FAILURE };
                match (&event, &gave_up) {
                    (Event::Disconnected { .. }, Some(reason)) => {
                        print_json(&render::gave_up_json(reason, &event));
                    }
                    _ => print_json(&render::event_json(&event)),
                }
                match &event {
                    Event::ConnectionState(ConnectionState::Failed { reason }) => {
                        gave_up = Some(reason.clone());
                    }
                    Event::Disconnected { .. } => return ExitCode::FAILURE,
                    Event::RoomClosed { room, code, .. } => {
                        open.retain(|r| r != room);
                        // After a shutdown notice (only with --no-reconnect; otherwise the room
                        // is logged in to again) the `disconnected` event follows: wait for it.
                        if open.is_empty() && *code != ErrorCode::SERVER_SHUTTING_DOWN {
                            eprintln!("no room left; exiting");
                            client.close().await;
                            return ExitCode::FAILURE;
                        }
                    }
                    Event::TokenWillExpire { .. } => {
                        if let Some(result) = renew(&client, &token).await {
                            print_json(&render::renewal_json(&result));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Renews a minted token (a given one cannot be); `None` when there is nothing to do.
async fn renew(client: &Client, token: &Token) -> Option<Result<(), ClientError>> {
    let key = token.key.as_ref()?;
    let fresh = match key.mint(&client.user().id, None, true, MINTED_TOKEN_TTL) {
        Ok(fresh) => fresh,
        Err(error) => {
            eprintln!("error: cannot mint a new token: {error}");
            return None;
        }
    };
    Some(client.renew_token(&fresh).await)
}
