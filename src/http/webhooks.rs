//! The webhook sender: takes the room events the room core queued ([`RoomEvent`]) and POSTs
//! each, as JSON, to every configured URL, one at a time, in the order they happened (so in
//! order per room). A delivery that fails (no answer within [`TIMEOUT`], or a status that is
//! not 2xx) is retried with backoff ([`RETRIES`] times, from [`FIRST_BACKOFF`] doubling), then
//! given up and counted (`webhooks_failed`). The relay never waits on it: the room core's queue
//! is bounded and drops (and counts) what does not fit.
//!
//! Each request carries `X-Qrelay-Signature: sha256=HEX`, the HMAC-SHA256 of the exact body
//! under the relay's API key, and `X-Qrelay-Event: NAME`.

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::server::Shared;
use crate::server::hooks::RoomEvent;
use crate::server::stats::Counters;

/// The header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "x-qrelay-signature";
/// The header that names the event.
pub const EVENT_HEADER: &str = "x-qrelay-event";
/// How long one delivery may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a failed delivery before it is given up.
pub const RETRIES: u32 = 4;
/// The wait before the first retry; it doubles for each next one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// `sha256=HEX` of `body` under `key`: what [`SIGNATURE_HEADER`] carries.
pub fn signature(key: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Delivers `events` until the relay drops its end of the queue.
pub(crate) async fn run(shared: Arc<Shared>, mut events: mpsc::Receiver<RoomEvent>) {
    let urls = shared.config.webhooks.clone();
    let client = match client(&urls) {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "webhooks off: cannot build the HTTP client");
            return;
        }
    };
    while let Some(event) = events.recv().await {
        let Ok(body) = serde_json::to_vec(&event) else { continue };
        let name = event_name(&event);
        let signed = shared.api_key.as_deref().map(|key| signature(key, &body));
        for url in &urls {
            let delivered = deliver(&client, url, name, &body, signed.as_deref()).await;
            let counter = if delivered {
                &shared.counters.webhooks_sent
            } else {
                warn!(url, event = name, room = event.room(), "webhook given up after its retries");
                &shared.counters.webhooks_failed
            };
            Counters::bump(counter);
        }
    }
}

/// POSTs one event to one URL, retrying; whether it got a 2xx answer.
async fn deliver(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    body: &[u8],
    signature: Option<&str>,
) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=RETRIES {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, name)
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => debug!(url, status = %response.status(), attempt, "webhook refused"),
            Err(e) => debug!(url, error = %e, attempt, "webhook failed"),
        }
    }
    false
}

/// The HTTP client for `urls`: rustls with the ring provider and the platform's roots, a
/// timeout per delivery. A host without CA certificates (a minimal container image) still
/// delivers to `http://` URLs; `https://` ones then fail and are counted.
fn client(urls: &[String]) -> Result<reqwest::Client, Box<dyn std::error::Error + Send + Sync>> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let tls = match builder.clone().with_platform_verifier() {
        Ok(builder) => builder.with_no_client_auth(),
        Err(e) => {
            if urls.iter().any(|url| url.starts_with("https:")) {
                warn!(error = %e, "https webhooks will fail: no CA certificates to verify them");
            }
            builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
        }
    };
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls).timeout(TIMEOUT).build()?)
}

/// The `event` field of `event`.
fn event_name(event: &RoomEvent) -> &'static str {
    match event {
        RoomEvent::RoomCreated { .. } => "room_created",
        RoomEvent::RoomClosed { .. } => "room_closed",
        RoomEvent::UserJoined { .. } => "user_joined",
        RoomEvent::UserLeft { .. } => "user_left",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
