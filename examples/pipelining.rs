//! A sender with many messages in flight: starts a relay in this process (on 127.0.0.1, with
//! an in-memory development certificate), then alice starts 20 broadcasts without waiting for
//! any result, collects the message IDs afterwards (they follow the call order), and bob
//! prints what arrives.
//!
//! Run it with `cargo run --example pipelining`.

use std::time::Duration;

use anyhow::Context;
use qrelay::auth::TokenKey;
use qrelay::certs::DevPki;
use qrelay::client::{Client, ClientConfig, Event};
use qrelay::protocol::User;
use qrelay::server::{Identity, Server, ServerConfig};

/// How many broadcasts alice has in flight at once.
const IN_FLIGHT: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A relay on an ephemeral loopback port; the default limits allow 2 broadcasts per second
    // per user, so this example lifts them.
    let pki = DevPki::generate()?;
    let (chain, key) = pki.server_identity()?;
    let secret = b"example secret";
    let tokens = TokenKey::new(secret);
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        http: None,
        web: None,
        limits: qrelay::server::RateLimits::unlimited(),
        ..ServerConfig::default()
    };
    let server = Server::bind(config, Identity::new(chain, key, secret))?;
    let addr = server.local_addr()?;
    let relay = server.handle();
    tokio::spawn(server.run());

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

    // Each call returns at once: the request is on its way, in call order.
    let pending: Vec<_> = (1..=IN_FLIGHT)
        .map(|i| alice.start_broadcast_message("lobby", format!("message {i}")))
        .collect();
    println!("alice: {IN_FLIGHT} broadcasts sent, none awaited yet");
    // The results come later; the relay numbered the messages in call order.
    for (i, result) in pending.into_iter().enumerate() {
        println!("alice: message {} got ID {}", i + 1, result.await?);
    }

    let mut received = 0;
    while received < IN_FLIGHT {
        let event = tokio::time::timeout(Duration::from_secs(5), bob_events.next())
            .await
            .context("bob waited 5 s for an event")?
            .context("bob's connection ended")?;
        if let Event::Broadcasts { messages, .. } = event {
            for m in messages {
                println!("bob: #{} {}", m.id, String::from_utf8_lossy(&m.payload));
                received += 1;
            }
        }
    }
    alice.close().await;
    bob.close().await;
    relay.shutdown().await;
    Ok(())
}
