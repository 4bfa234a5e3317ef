//! The client library in one file: starts a relay in this process (on 127.0.0.1, with an
//! in-memory development certificate), then alice and bob log in to a room; alice sends one
//! message of each kind and bob prints what arrives.
//!
//! Run it with `cargo run --example quickstart`. To talk to a relay started with
//! `qrelay serve` instead, use its address, `certs/ca.pem` and a token from `qrelay token`.

use std::time::Duration;

use anyhow::Context;
use qrelay::auth::TokenKey;
use qrelay::certs::DevPki;
use qrelay::client::{Client, ClientConfig, Event};
use qrelay::protocol::User;
use qrelay::server::{Identity, Server, ServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A relay on an ephemeral loopback port.
    let pki = DevPki::generate()?;
    let (chain, key) = pki.server_identity()?;
    let secret = b"example secret";
    let tokens = TokenKey::new(secret);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        http: None,
        web: None,
        ..ServerConfig::default()
    };
    let server = Server::bind(config, Identity::new(chain, key, secret))?;
    let addr = server.local_addr()?;
    let relay = server.handle();
    tokio::spawn(server.run());

    // Two clients, each with a token for its user.
    let connect = |id: &str, name: &str| {
        let user = User { id: id.into(), name: name.into() };
        let config = ClientConfig::new(addr, "localhost", vec![pki.ca().expect("CA")], user);
        Client::connect(config)
    };
    let ttl = Duration::from_secs(3600);
    let (bob, mut bob_events) = connect("bob", "Bob").await?;
    bob.login_room("lobby", &tokens.mint("bob", None, true, ttl)?).await?;
    let (alice, _alice_events) = connect("alice", "Alice").await?;
    alice.login_room("lobby", &tokens.mint("alice", None, true, ttl)?).await?;

    let id = alice.send_broadcast_message("lobby", "hello, room").await?;
    println!("alice: broadcast accepted with message ID {id}");
    let id = alice.send_barrage_message("lobby", "first!").await?;
    println!("alice: barrage accepted with message ID {id}");
    alice.send_custom_command("lobby", "mute your mic", &["bob"]).await?;
    println!("alice: command sent to bob");

    // bob receives: alice joining, then the broadcast list, the barrage list, the command.
    let mut seen = 0;
    while seen < 3 {
        let event = tokio::time::timeout(Duration::from_secs(5), bob_events.next())
            .await
            .context("bob waited 5 s for an event")?
            .context("bob's connection ended")?;
        match event {
            Event::UsersJoined { room, users } => {
                println!(
                    "bob: [{room}] joined: {:?}",
                    users.iter().map(|u| &u.name).collect::<Vec<_>>()
                )
            }
            Event::Broadcasts { room, messages } => {
                for m in messages {
                    let text = String::from_utf8_lossy(&m.payload);
                    println!(
                        "bob: [{room}] broadcast #{} from {} ({}): {text}",
                        m.id, m.from.name, m.from.id
                    );
                }
                seen += 1;
            }
            Event::Barrages { room, messages } => {
                for m in messages {
                    let text = String::from_utf8_lossy(&m.payload);
                    // Always named here: the client tracks members (the default).
                    let from = m.from.as_ref().map_or("?", |from| from.name.as_str());
                    println!("bob: [{room}] barrage #{} from {from}: {text}", m.id);
                }
                seen += 1;
            }
            Event::Command { room, message } => {
                let text = String::from_utf8_lossy(&message.payload);
                println!("bob: [{room}] command from {}: {text}", message.from.name);
                seen += 1;
            }
            other => println!("bob: {other:?}"),
        }
    }
    alice.close().await;
    bob.close().await;
    relay.shutdown().await;
    Ok(())
}
