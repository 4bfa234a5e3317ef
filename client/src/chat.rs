//! `qrelay-cli chat`: one room, interactively. A typed line is a broadcast; `/barrage TEXT`,
//! `/cmd USER[,USER] TEXT` and `/quit` do what they say (`//` starts a broadcast with `/`).
//! Events print as readable lines on stdout; the CLI's own notes go to stderr.

use std::process::ExitCode;

use qrelay::client::{Client, ConnectionState, Event};
use qrelay::protocol::ErrorCode;
use tokio::sync::mpsc;

use crate::{Common, Session, render, renew, start};

/// The usage line of `/barrage`.
const BARRAGE_USAGE: &str = "usage: /barrage TEXT";
/// The usage line of `/cmd`.
const COMMAND_USAGE: &str = "usage: /cmd USER[,USER] TEXT";
/// Lines read ahead of the chat loop (a paste of many lines waits in the pipe beyond this).
const STDIN_LINES: usize = 16;
/// The help line after the login and for an unknown command.
const HELP: &str = "lines are broadcasts; /barrage TEXT, /cmd USER[,USER] TEXT, /quit \
                    (// sends a line starting with /)";

/// Chats in `room` until `/quit`, end of input, Ctrl-C or SIGTERM (exit 0), or until the
/// connection is lost for good or the room closes (exit 1).
pub async fn run(common: &Common, room: String) -> ExitCode {
    let (session, mut stop) = match start(common).await {
        Ok(started) => started,
        Err(failure) => {
            eprintln!("{}", render::failure_line(&failure));
            return ExitCode::FAILURE;
        }
    };
    let Session { client, mut events, token } = session;
    if let Err(error) = client.login_room(&room, token.current()).await {
        eprintln!("cannot log in to {room}: {}", render::error_line(&error));
        client.close().await;
        return ExitCode::FAILURE;
    }
    let mut lines = match stdin_lines() {
        Ok(lines) => lines,
        Err(error) => {
            eprintln!("error: cannot read stdin: {error}");
            client.close().await;
            return ExitCode::FAILURE;
        }
    };
    eprintln!("logged in to {room} as {}. {HELP}", render::who(client.user()));
    // Why reconnecting gave up, once it has: said again when the chat ends.
    let mut gave_up: Option<String> = None;
    let code = loop {
        tokio::select! {
            () = stop.signalled() => {
                eprintln!("leaving {room}");
                break ExitCode::SUCCESS;
            }
            line = lines.recv() => match line {
                Some(Ok(line)) => match parse(line.trim_end()) {
                    Input::Quit => {
                        eprintln!("bye: leaving {room}");
                        break ExitCode::SUCCESS;
                    }
                    input => handle(&client, &room, input).await,
                },
                None => break ExitCode::SUCCESS,
                Some(Err(error)) => {
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
                    Event::ConnectionState(ConnectionState::Failed { reason }) => {
                        gave_up = Some(reason);
                    }
                    Event::Disconnected { .. } => {
                        match &gave_up {
                            Some(reason) => eprintln!(
                                "gave up reconnecting: {}; exiting",
                                render::round_durations(reason)
                            ),
                            None => eprintln!("the connection to the relay is lost for good; exiting"),
                        }
                        break ExitCode::FAILURE;
                    }
                    // A shutdown notice (only with --no-reconnect; otherwise the room is
                    // logged in to again): the `disconnected` event follows; wait for it.
                    Event::RoomClosed { code, .. } if code == ErrorCode::SERVER_SHUTTING_DOWN => {}
                    Event::RoomClosed { room, code, .. } => {
                        eprintln!("no longer in {room} ({code}); exiting");
                        break ExitCode::FAILURE;
                    }
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
    code
}

/// Lines typed on stdin, read on a thread of their own: tokio's stdin reads on the runtime's
/// blocking pool, where a read waiting for input would hold up the runtime's shutdown, and so
/// the exit, until the next line (this thread just ends with the process). The channel ends
/// at the end of input, after a read error.
fn stdin_lines() -> std::io::Result<mpsc::Receiver<std::io::Result<String>>> {
    let (tx, rx) = mpsc::channel(STDIN_LINES);
    std::thread::Builder::new().name("stdin".into()).spawn(move || {
        for line in std::io::stdin().lines() {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    })?;
    Ok(rx)
}

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input<'a> {
    /// An empty line: nothing.
    Nothing,
    /// `/quit`.
    Quit,
    /// A broadcast of this text.
    Broadcast(&'a str),
    /// `/barrage TEXT`.
    Barrage(&'a str),
    /// `/cmd USER[,USER] TEXT`; no users (`/cmd , TEXT`) means everyone else.
    Command {
        /// The target user IDs.
        to: Vec<&'a str>,
        /// The payload.
        text: &'a str,
    },
    /// A known command with its text missing: print this usage line.
    Usage(&'static str),
    /// A `/word` that is no command.
    Unknown,
}

/// Reads one typed line (its trailing whitespace already trimmed).
fn parse(line: &str) -> Input<'_> {
    if line.trim().is_empty() {
        return Input::Nothing;
    }
    if line.starts_with("//") {
        return Input::Broadcast(&line[1..]);
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Broadcast(line);
    };
    let (word, rest) = command.split_once(' ').unwrap_or((command, ""));
    match word {
        "quit" => Input::Quit,
        "barrage" if rest.trim().is_empty() => Input::Usage(BARRAGE_USAGE),
        "barrage" => Input::Barrage(rest),
        "cmd" => match rest.trim_start().split_once(' ') {
            Some((users, text)) if !text.trim().is_empty() => {
                Input::Command { to: users.split(',').filter(|u| !u.is_empty()).collect(), text }
            }
            _ => Input::Usage(COMMAND_USAGE),
        },
        _ => Input::Unknown,
    }
}

/// Sends what a line asks for and prints the result.
async fn handle(client: &Client, room: &str, input: Input<'_>) {
    let (result, kind, text) = match input {
        Input::Nothing | Input::Quit => return,
        Input::Usage(usage) => return eprintln!("{usage}"),
        Input::Unknown => return eprintln!("unknown command; {HELP}"),
        Input::Broadcast(text) => {
            (client.send_broadcast_message(room, text.to_owned()).await, String::new(), text)
        }
        Input::Barrage(text) => {
            let result = client.send_barrage_message(room, text.to_owned()).await;
            (result, " (barrage)".to_owned(), text)
        }
        Input::Command { to, text } => {
            let kind = match to.is_empty() {
                true => " (command)".to_owned(),
                false => format!(" (command to {})", to.join(",")),
            };
            (client.send_custom_command(room, text.to_owned(), &to).await, kind, text)
        }
    };
    match result {
        Ok(id) => println!("[{room}] {}{kind}: {text}  #{id}", render::who(client.user())),
        Err(error) => eprintln!("{}", render::error_line(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_broadcasts_commands_or_usage() {
        assert_eq!(parse(""), Input::Nothing);
        assert_eq!(parse("   "), Input::Nothing);
        assert_eq!(parse("hello, room"), Input::Broadcast("hello, room"));
        assert_eq!(parse("//slash"), Input::Broadcast("/slash"));
        assert_eq!(parse("/quit"), Input::Quit);
        assert_eq!(parse("/barrage first!"), Input::Barrage("first!"));
        assert_eq!(parse("/barrage"), Input::Usage(BARRAGE_USAGE));
        assert_eq!(parse("/barrage   "), Input::Usage(BARRAGE_USAGE));
        assert_eq!(
            parse("/cmd bob,carol mute your mic"),
            Input::Command { to: vec!["bob", "carol"], text: "mute your mic" }
        );
        assert_eq!(parse("/cmd , all"), Input::Command { to: vec![], text: "all" });
        assert_eq!(parse("/cmd"), Input::Usage(COMMAND_USAGE));
        assert_eq!(parse("/cmd bob"), Input::Usage(COMMAND_USAGE));
        assert_eq!(parse("/cmd bob  "), Input::Usage(COMMAND_USAGE));
        assert_eq!(parse("/shout x"), Input::Unknown);
        assert_eq!(parse("/barrages x"), Input::Unknown);
    }
}
