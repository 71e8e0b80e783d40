//! Publishes under way, their acknowledgements taken as they come: a window that slides.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use crate::{Ack, Error, Outgoing, Publisher};

/// A publish's answer, with its caller's tag.
type Answer<T> = Pin<Box<dyn Future<Output = (T, Result<Ack, Error>)> + Send>>;

/// The publishes a caller sent ([`Publisher::send`]) and has not had the answer of, each with
/// the caller's tag; [`Publisher::acknowledged`] takes those answered. A caller that sends one
/// more as each is answered keeps as many unacknowledged at all times, where a window of as many
/// would fall to none before the next one is sent.
pub struct InFlight<T> {
    answers: FuturesUnordered<Answer<T>>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            answers: FuturesUnordered::new(),
        }
    }
}

impl<T> std::fmt::Debug for InFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("unanswered", &self.len())
            .finish()
    }
}

impl<T> InFlight<T> {
    /// How many publishes are not answered yet.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether every publish sent has been answered (and taken).
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

impl Publisher {
    /// Sends `messages` in their order, each with the caller's tag, without waiting for their
    /// acknowledgements: `in_flight` holds them until [`Publisher::acknowledged`] takes them.
    /// Each is answered within `timeout` from now, by an ack, a refusal or
    /// [`Error::Unanswered`].
    pub fn send<T: Send + 'static>(
        &self,
        in_flight: &mut InFlight<T>,
        messages: impl IntoIterator<Item = (T, Outgoing)>,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.runtime.block_on(async {
            for (tag, message) in messages {
                let publish = jetstream::context::Publish::build()
                    .message_id(message.id)
                    .payload(Bytes::from(message.payload));
                let sent = tokio::time::timeout_at(
                    deadline,
                    self.context.send_publish(message.subject.clone(), publish),
                )
                .await;
                let subject = message.subject;
                in_flight.answers.push(Box::pin(async move {
                    (tag, answer(sent, deadline, timeout, subject).await)
                }));
            }
        });
    }

    /// Waits at most `wait` for a publish of `in_flight` to be answered, and takes every one
    /// answered by then, with its tag: none if `wait` passed first or none is in flight.
    ///
    /// # Errors
    /// Per publish, [`Error::Publish`] if it was refused, [`Error::Unanswered`] if it was not
    /// acknowledged in time or the connection is down.
    pub fn acknowledged<T>(
        &self,
        in_flight: &mut InFlight<T>,
        wait: Duration,
    ) -> Vec<(T, Result<Ack, Error>)> {
        if in_flight.is_empty() {
            return Vec::new();
        }
        self.runtime.block_on(async {
            let mut answered = Vec::new();
            if let Ok(Some(first)) = tokio::time::timeout(wait, in_flight.answers.next()).await {
                answered.push(first);
                while let Some(Some(next)) = in_flight.answers.next().now_or_never() {
                    answered.push(next);
                }
            }
            answered
        })
    }
}

/// What became of a message sent (`sent`: what sending it gave, or that `deadline` passed
/// first): its ack awaited until `deadline`.
async fn answer(
    sent: Result<Result<PublishAckFuture, PublishError>, tokio::time::error::Elapsed>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    subject: String,
) -> Result<Ack, Error> {
    // A connection down or an ack too slow is no refusal.
    let failed = |e: PublishError| match e.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Error::Unanswered {
            subject: subject.clone(),
            reason: e.to_string(),
        },
        _ => Error::Publish {
            subject: subject.clone(),
            reason: e.to_string(),
        },
    };
    let late = || Error::Unanswered {
        subject: subject.clone(),
        reason: format!("no acknowledgement within {timeout:?}"),
    };
    let ack = match sent {
        Ok(Ok(ack)) => tokio::time::timeout_at(deadline, ack).await,
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => return Err(late()),
    };
    match ack {
        Ok(Ok(ack)) => Ok(Ack {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(late()),
    }
}
