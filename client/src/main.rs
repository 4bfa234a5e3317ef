//! `qrelay-cli`: log in to qrelay rooms and send or watch messages from a terminal or a
//! script. One-shot commands and `listen` print one JSON object per line on stdout; `chat`
//! is interactive. Diagnostics go to stderr (`RUST_LOG`, default `warn`).

mod bench;
mod render;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use qrelay::auth::TokenKey;
use qrelay::certs::load_certs;
use qrelay::client::{Client, ClientConfig, ClientError, Event, Events};
use qrelay::protocol::{ErrorCode, User};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

/// How long a token minted from the secret file is valid.
const MINTED_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Command-line client for the qrelay room relay.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    action: Action,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
struct Common {
    /// The relay's UDP address.
    #[arg(long, global = true, default_value = "127.0.0.1:4433")]
    server: SocketAddr,
    /// The name the server certificate must be valid for.
    #[arg(long, global = true, default_value = "localhost")]
    server_name: String,
    /// CA certificate (PEM) to trust.
    #[arg(long, global = true, default_value = "certs/ca.pem")]
    ca: PathBuf,
    /// User ID [default: cli- and 4 random hex digits].
    #[arg(long, global = true)]
    user: Option<String>,
    /// User name [default: the user ID].
    #[arg(long, global = true)]
    name: Option<String>,
    /// Login token; without it one is minted from --secret if that file exists.
    #[arg(long, global = true, env = "QRELAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Token-signing secret to mint a 1-hour token from when --token is absent.
    #[arg(long, global = true, default_value = "certs/token.secret")]
    secret: PathBuf,
    /// Seconds to wait for each reply (a lost barrage fails after this), and for each
    /// connection attempt.
    #[arg(long, global = true, default_value_t = 5.0)]
    timeout: f64,
    /// Do not reconnect after a lost connection: the first loss ends the command.
    #[arg(long, global = true)]
    no_reconnect: bool,
    /// Seconds to keep trying to reconnect after a lost connection before giving up.
    #[arg(long, global = true, default_value_t = 120.0)]
    reconnect_for: f64,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Log in to rooms and print every event as a JSON line until Ctrl-C. Keeps running
    /// through reconnects; exits non-zero when reconnecting gives up or no room is left.
    Listen {
        /// A room to log in to (repeat for several).
        #[arg(long = "room", required = true)]
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
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
        /// The command payload.
        text: String,
    },
    /// Chat interactively: each line is a broadcast; /barrage TEXT, /cmd USER[,USER] TEXT,
    /// /quit.
    Chat {
        /// The room.
        #[arg(long)]
        room: String,
    },
    /// Load test: open many connections in rooms, send at a target rate for a bounded time,
    /// report deliveries/s, latency percentiles, losses and the relay's CPU and memory. Exits
    /// non-zero if a reliable message was lost or duplicated.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Action::Bench(args) = cli.action {
        return bench::main(&cli.common, args).await;
    }
    let session = connect(&cli.common).await?;
    match cli.action {
        Action::Listen { rooms } => listen(session, rooms).await,
        Action::Broadcast { room, text } => {
            one_shot(session, "broadcast", room, |c, room| async move {
                c.send_broadcast_message(&room, text).await
            })
            .await
        }
        Action::Barrage { room, text } => {
            one_shot(session, "barrage", room, |c, room| async move {
                c.send_barrage_message(&room, text).await
            })
            .await
        }
        Action::Command { room, to, text } => {
            one_shot(session, "command", room, |c, room| async move {
                let to: Vec<&str> = to.iter().map(String::as_str).collect();
                c.send_custom_command(&room, text, &to).await
            })
            .await
        }
        Action::Chat { room } => chat(session, room).await,
        Action::Bench(_) => unreachable!("handled above"),
    }
}

/// Reads the CA, settles the user and token, and connects.
async fn connect(common: &Common) -> anyhow::Result<Session> {
    let roots = load_certs(&common.ca).context(
        "no CA certificate to trust (`qrelay serve` writes certs/ca.pem on first start; or pass --ca)",
    )?;
    let id = common.user.clone().unwrap_or_else(|| format!("cli-{:04x}", rand::random::<u16>()));
    let name = common.name.clone().unwrap_or_else(|| id.clone());
    let token = match &common.token {
        Some(token) => Token { token: token.clone(), key: None },
        None if common.secret.exists() => {
            let key = TokenKey::from_file(&common.secret).with_context(|| {
                format!("cannot read the token secret {}", common.secret.display())
            })?;
            let token =
                key.mint(&id, None, true, MINTED_TOKEN_TTL).context("cannot mint a token")?;
            Token { token, key: Some(key) }
        }
        None => bail!(
            "no login token: pass --token TOKEN or set QRELAY_TOKEN (get one with \
             `qrelay token --user {id}`), or point --secret at the relay's token secret \
             (not found: {}); a relay run with --insecure-dev-auth takes any --token",
            common.secret.display()
        ),
    };
    if !(common.timeout > 0.0 && common.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    if !(common.reconnect_for >= 0.0 && common.reconnect_for.is_finite()) {
        bail!("--reconnect-for must be a number of seconds, 0 or more");
    }
    let mut config =
        ClientConfig::new(common.server, &common.server_name, roots, User { id, name });
    config.request_timeout = Duration::from_secs_f64(common.timeout);
    config.reconnect.enabled = !common.no_reconnect;
    config.reconnect.max_elapsed = Duration::from_secs_f64(common.reconnect_for);
    let (client, events) = Client::connect(config).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Session { client, events, token })
}

/// Prints one JSON line on stdout.
fn print_json<T: Serialize>(value: &T) {
    println!("{}", render::line(value));
}

/// Logs in, sends one message, prints the result, closes.
async fn one_shot<F, Fut>(
    session: Session,
    kind: &str,
    room: String,
    send: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = Result<u64, ClientError>>,
{
    let Session { client, events: _events, token } = session;
    let login = client.login_room(&room, token.current()).await;
    let result = match login {
        Ok(()) => {
            let result = send(client.clone(), room.clone()).await;
            print_json(&render::sent_json(kind, &room, &result));
            result.map(drop)
        }
        Err(error) => {
            print_json(&render::login_json(&room, &Err(error.clone())));
            Err(error)
        }
    };
    client.close().await;
    Ok(if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Logs in to every room and prints events until Ctrl-C, the client ends (connection lost
/// and not reconnected), or no room is left. Reconnects and recoveries are printed as they
/// happen (`connection_state`, `recovered`).
async fn listen(session: Session, rooms: Vec<String>) -> anyhow::Result<ExitCode> {
    let Session { client, mut events, token } = session;
    let mut open = Vec::new();
    for room in &rooms {
        let result = client.login_room(room, token.current()).await;
        print_json(&render::login_json(room, &result));
        if result.is_err() {
            client.close().await;
            return Ok(ExitCode::FAILURE);
        }
        open.push(room.clone());
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            event = events.next() => {
                let Some(event) = event else { return Ok(ExitCode::FAILURE) };
                print_json(&render::event_json(&event));
                match &event {
                    Event::Disconnected { .. } => return Ok(ExitCode::FAILURE),
                    Event::RoomClosed { room, code, .. } => {
                        open.retain(|r| r != room);
                        // After a shutdown notice (only with --no-reconnect; otherwise the room
                        // is logged in to again) the `disconnected` event follows: wait for it.
                        if open.is_empty() && *code != ErrorCode::SERVER_SHUTTING_DOWN {
                            eprintln!("no room left; exiting");
                            client.close().await;
                            return Ok(ExitCode::FAILURE);
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

/// Interactive chat in one room.
async fn chat(session: Session, room: String) -> anyhow::Result<ExitCode> {
    let Session { client, mut events, token } = session;
    if let Err(error) = client.login_room(&room, token.current()).await {
        eprintln!("cannot log in to {room}: {}", render::error_line(&error));
        client.close().await;
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "logged in to {room} as {}. Lines are broadcasts; /barrage TEXT, /cmd USER[,USER] TEXT, /quit",
        render::who(client.user())
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let code = loop {
        tokio::select! {
            _ = &mut ctrl_c => break ExitCode::SUCCESS,
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if !chat_line(&client, &room, line.trim_end()).await {
                        break ExitCode::SUCCESS;
                    }
                }
                Ok(None) => break ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: cannot read stdin: {error}");
                    break ExitCode::FAILURE;
                }
            },
            event = events.next() => {
                let Some(event) = event else { break ExitCode::FAILURE };
                for line in render::event_lines(&event) {
                    println!("{line}");
                }
                match event {
                    Event::Disconnected { .. } => break ExitCode::FAILURE,
                    Event::RoomClosed { .. } => break ExitCode::FAILURE,
                    Event::TokenWillExpire { .. } => match renew(&client, &token).await {
                        Some(Ok(())) => eprintln!("token renewed"),
                        Some(Err(error)) => eprintln!("{}", render::error_line(&error)),
                        None => eprintln!("the token was given with --token: restart with a new one"),
                    },
                    _ => {}
                }
            }
        }
    };
    client.close().await;
    Ok(code)
}

/// Handles one line typed in `chat`; `false` ends the chat.
async fn chat_line(client: &Client, room: &str, line: &str) -> bool {
    let result = if line.is_empty() {
        return true;
    } else if line == "/quit" {
        return false;
    } else if let Some(text) = line.strip_prefix("/barrage ") {
        client
            .send_barrage_message(room, text.to_owned())
            .await
            .map(|id| (id, " (barrage)".to_owned(), text))
    } else if let Some(rest) = line.strip_prefix("/cmd ") {
        let Some((users, text)) = rest.split_once(' ') else {
            eprintln!("usage: /cmd USER[,USER] TEXT");
            return true;
        };
        let to: Vec<&str> = users.split(',').filter(|u| !u.is_empty()).collect();
        let kind = if to.is_empty() {
            " (command)".to_owned()
        } else {
            format!(" (command to {})", to.join(","))
        };
        client.send_custom_command(room, text.to_owned(), &to).await.map(|id| (id, kind, text))
    } else if line.starts_with('/') && !line.starts_with("//") {
        eprintln!(
            "unknown command; try /barrage TEXT, /cmd USER[,USER] TEXT, /quit (// sends a line starting with /)"
        );
        return true;
    } else {
        let text = line.strip_prefix('/').filter(|_| line.starts_with("//")).unwrap_or(line);
        client
            .send_broadcast_message(room, text.to_owned())
            .await
            .map(|id| (id, String::new(), text))
    };
    match result {
        Ok((id, kind, text)) => {
            println!("[{room}] {}{kind}: {text}  #{id}", render::who(client.user()))
        }
        Err(error) => eprintln!("{}", render::error_line(&error)),
    }
    true
}
