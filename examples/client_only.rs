//! An application that only talks to a relay: it needs the `client` feature alone, as an
//! application that depends on `qrelay = { default-features = false, features = ["client"] }`
//! does, so none of the relay's own dependencies are compiled for it.
//!
//! Start a relay, mint a token, then run it:
//!
//! ```sh
//! cargo run -- serve &
//! TOKEN=$(cargo run -- token --user alice)
//! cargo run --no-default-features --features client --example client_only -- \
//!     127.0.0.1:4433 certs/ca.pem alice "$TOKEN" lobby "hello, room"
//! ```
//!
//! It logs in to the room, sends the message (if one is given) as a broadcast, then prints every
//! event for 10 s and leaves.

use std::time::Duration;

use anyhow::{Context, bail};
use qrelay::client::{Client, ClientConfig, Event};
use qrelay::protocol::User;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How long the example listens before it leaves.
const LISTEN: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: client_only SERVER_ADDR CA_PEM USER_ID TOKEN ROOM [MESSAGE]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, ca, user, token, room, rest @ ..] = args.as_slice() else {
        bail!(USAGE);
    };
    let server: qrelay::client::ServerList =
        server.parse().with_context(|| format!("server address {server:?}"))?;
    let roots = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {ca}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM certificate in {ca}"))?;
    let user = User { id: user.clone(), name: user.clone() };

    let (client, mut events) =
        Client::connect(ClientConfig::new(server, "localhost", roots, user)).await?;
    client.login_room(room, token).await?;
    if let Some(message) = rest.first() {
        let id = client.send_broadcast_message(room, message.clone()).await?;
        println!("broadcast accepted with message ID {id}");
    }

    let listen = tokio::time::sleep(LISTEN);
    tokio::pin!(listen);
    loop {
        tokio::select! {
            _ = &mut listen => break,
            event = events.next() => match event {
                Some(Event::Disconnected { code, reason }) => {
                    println!("disconnected ({code:?}): {reason}");
                    return Ok(());
                }
                Some(event) => println!("{event:?}"),
                None => return Ok(()),
            },
        }
    }
    client.close().await;
    Ok(())
}
