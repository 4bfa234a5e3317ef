//! [`Pending`]: the result of a send that has gone out, to be awaited later (pipelining).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::protocol::Outcome;

use super::connection::Exchange;
use super::error::ClientError;

/// The result of a request that was sent when the call returned, to await when the
/// application wants it: what [`super::Client::start_broadcast_message`] and the other
/// `start_*` methods return.
///
/// - **Order.** The request went out before the `start_*` call returned, so requests go out
///   in call order, and the relay handles them in that order: broadcasts started one after
///   another get increasing message IDs in call order. (Barrage travels as datagrams, which
///   the network may lose or reorder.)
/// - **Timeout.** The result is [`ClientError::Timeout`] once
///   [`super::ClientConfig::request_timeout`] has passed since the call without a reply, or
///   the error of the call (an invalid payload, [`ClientError::Disconnected`]…) at once.
/// - **Dropping** a `Pending` does not take the request back: the message is sent all the
///   same; its result is discarded ([`super::ClientStats::late_replies`] counts it).
///
/// It costs a request ID and a map entry until the reply, the timeout or the drop, and,
/// while QUIC flow control holds the control stream back, the request's frame (at most
/// about 1.2 KiB): an application that starts sends faster than the relay answers should
/// bound how many it keeps in flight.
///
/// ```no_run
/// # async fn demo(client: qrelay::client::Client) -> Result<(), qrelay::client::ClientError> {
/// // Three broadcasts in flight at once; their IDs follow the call order.
/// let first = client.start_broadcast_message("lobby", "one");
/// let second = client.start_broadcast_message("lobby", "two");
/// let third = client.start_broadcast_message("lobby", "three");
/// let (a, b, c) = (first.await?, second.await?, third.await?);
/// assert!(a < b && b < c);
/// # Ok(())
/// # }
/// ```
pub struct Pending<T> {
    /// The request on its way, or why it could not be sent (taken when polled).
    state: State,
    /// Turns the reply into the caller's result.
    result: fn(Outcome) -> Result<T, ClientError>,
}

/// Where a [`Pending`] stands.
#[derive(Debug)]
enum State {
    /// Sent; waiting for the reply.
    Sent(Exchange),
    /// Not sent: this error is the result.
    Failed(Option<ClientError>),
}

impl<T> Pending<T> {
    /// A pending result of `sent`, mapped by `result` when its reply arrives.
    pub(crate) fn new(
        sent: Result<Exchange, ClientError>,
        result: fn(Outcome) -> Result<T, ClientError>,
    ) -> Self {
        let state = match sent {
            Ok(exchange) => State::Sent(exchange),
            Err(error) => State::Failed(Some(error)),
        };
        Pending { state, result }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = self.result;
        match &mut self.state {
            State::Sent(exchange) => {
                Pin::new(exchange).poll(cx).map(|reply| reply.and_then(result))
            }
            State::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| ClientError::Protocol("result already taken".into())))),
        }
    }
}

impl<T> fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("state", &self.state).finish_non_exhaustive()
    }
}
