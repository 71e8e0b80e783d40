//! ward's NATS JetStream transport, behind a blocking facade.
//!
//! ward is threads and channels; the NATS client (`async-nats`) is async. This crate is where
//! the two meet: it owns a small tokio runtime on a thread of its own, and offers plain blocking
//! calls to publish a job ([`Publisher`]) and to pull, and settle, the jobs of a durable
//! consumer ([`Puller`], [`Delivery`]). No other ward crate depends on tokio or async-nats;
//! `ward-server` uses this one behind its `nats` feature.
//!
//! ```no_run
//! use std::time::Duration;
//! use ward_nats::{ConsumerSpec, Puller, Publisher, StreamSpec};
//!
//! # fn main() -> Result<(), ward_nats::Error> {
//! let stream = StreamSpec::work_queue("WARD", "ward.jobs.>");
//! let publisher = Publisher::connect("nats://127.0.0.1:4222", &stream)?;
//! let ack = publisher.publish("ward.jobs.build", "host:/src:a.rs:1:2:3", b"{}".to_vec())?;
//! assert!(!ack.duplicate);
//!
//! let puller = Puller::connect(
//!     "nats://127.0.0.1:4222",
//!     &stream,
//!     &ConsumerSpec::new("workers", "ward.jobs.>"),
//! )?;
//! if let Some(delivery) = puller.next(Duration::from_secs(1))? {
//!     assert_eq!(delivery.subject(), "ward.jobs.build");
//!     delivery.ack()?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Crate features
//!
//! None: the crate is the optional part. `ward-server`'s `nats` feature is what pulls it in.
//!
//! # Theory of operation
//!
//! Each [`Publisher`] and [`Puller`] holds one connection and one [`Runtime`]: a current-thread
//! tokio runtime driven by a thread the runtime owns (`ward-nats`), which runs the client's
//! connection task (and its reconnections). A caller's thread blocks on its own request through
//! the runtime's handle, so many ward threads may publish at once, each waiting for its own
//! acknowledgements. [`Publisher::send`] sends messages without awaiting their acknowledgements,
//! which an [`InFlight`] holds, and [`Publisher::acknowledged`] takes those that came: a caller
//! that sends one more as each comes keeps a sliding window of unacknowledged publishes, the
//! server never idle waiting for the caller nor the caller for a whole window's round trip.
//!
//! A publish carries a `Nats-Msg-Id`; the stream drops a second message with the same id inside
//! its duplicate window, which is how a republish of a job whose acknowledgement was lost (or
//! whose record was lost in a crash) stays one delivery.
//!
//! # Known problems
//!
//! - A publish while the server is away waits at most [`PUBLISH_TIMEOUT`] and fails; the caller
//!   (ward's retries and manifest) is what makes it happen again, not this crate.
//! - The stream is created with the spec given if it is missing; an existing stream's settings
//!   are not changed.
//! - A consumer whose pulls the server stops answering (nats-server 2.9.10 was seen to) is
//!   deleted and made again by the [`Puller`] that finds it so: a delivery in hand elsewhere
//!   comes a second time.

#![warn(missing_docs)]

mod error;
mod in_flight;
mod puller;
mod runtime;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;

pub use error::Error;
pub use in_flight::InFlight;
pub use puller::{Delivery, Puller};
pub use runtime::Runtime;

/// How long a stream made by [`StreamSpec::work_queue`] remembers a message id to drop its
/// republishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a publish waits for the stream's acknowledgement before it fails.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection's first attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an acknowledgement (ack, nak, progress, term) waits to be flushed to the server.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The stream jobs go to: made, if missing, as a work queue in file storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// The stream's name.
    pub name: String,
    /// The subjects it holds.
    pub subjects: Vec<String>,
    /// How long the stream remembers a message id to drop its republishes.
    pub duplicate_window: Duration,
    /// Work queue (a message is deleted once acknowledged), or limits (kept until the limits).
    pub work_queue: bool,
    /// How long a message is kept at most, acknowledged or not (zero: no limit).
    pub max_age: Duration,
}

impl StreamSpec {
    /// A work-queue stream `name` on `subject` with a two-minute duplicate window.
    pub fn work_queue(name: &str, subject: &str) -> StreamSpec {
        StreamSpec {
            name: name.into(),
            subjects: vec![subject.into()],
            duplicate_window: DUPLICATE_WINDOW,
            work_queue: true,
            max_age: Duration::ZERO,
        }
    }

    /// A stream that keeps what it gets (the dead letters: read, not consumed).
    pub fn kept(name: &str, subject: &str) -> StreamSpec {
        StreamSpec {
            work_queue: false,
            ..StreamSpec::work_queue(name, subject)
        }
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            retention: if self.work_queue {
                stream::RetentionPolicy::WorkQueue
            } else {
                stream::RetentionPolicy::Limits
            },
            storage: stream::StorageType::File,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            ..Default::default()
        }
    }
}

/// A durable pull consumer of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Its durable name: workers with the same name share its messages.
    pub name: String,
    /// The subjects it takes.
    pub filter: String,
    /// How many deliveries a message gets before the server stops redelivering it; -1 for no
    /// limit. A message the server stops redelivering without its being terminated stays in a
    /// work queue, delivered to no one and said by nothing but an advisory: a consumer that
    /// must dead-letter every job it gives up on sets -1 and counts deliveries itself, as
    /// `ward work` does.
    pub max_deliver: i64,
    /// How long a delivered message may go unacknowledged before it is redelivered.
    pub ack_wait: Duration,
}

impl ConsumerSpec {
    /// A consumer `name` of `filter` with five deliveries and a thirty-second ack wait.
    pub fn new(name: &str, filter: &str) -> ConsumerSpec {
        ConsumerSpec {
            name: name.into(),
            filter: filter.into(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// A message for [`Publisher::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id`: the stream drops a second message with the same id inside its
    /// duplicate window.
    pub id: String,
    /// Its body.
    pub payload: Vec<u8>,
}

/// What the stream said of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The message's sequence in the stream.
    pub sequence: u64,
    /// The stream had this message id already: this publish was dropped.
    pub duplicate: bool,
}

/// The first connection to `url`, within [`CONNECT_TIMEOUT`] in all: the client's own timeout
/// covers the TCP connect only, and a peer that accepts but never says INFO (a port taken by
/// something else, a server still starting) would hold it forever.
async fn connect(url: &str) -> Result<async_nats::Client, Error> {
    let failed = |reason: String| Error::Connect {
        url: url.into(),
        reason,
    };
    let connecting = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url);
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))
}

/// The stream `spec` names, made if missing. Several processes may start at once (two `ward
/// work`s, a worker and its origin): one that finds the stream missing and then fails to make it
/// ("subjects overlap") lost that race, and takes the stream the winner made.
async fn ensure_stream(
    context: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<stream::Stream, Error> {
    match context.get_or_create_stream(spec.config()).await {
        Ok(stream) => Ok(stream),
        Err(e) => context
            .get_stream(&spec.name)
            .await
            .map_err(|_| Error::Stream {
                stream: spec.name.clone(),
                reason: e.to_string(),
            }),
    }
}

/// One connection that publishes to a stream.
#[derive(Debug)]
pub struct Publisher {
    // Before the runtime: the client's handles are dropped while the runtime still runs.
    context: jetstream::Context,
    runtime: Runtime,
}

impl Publisher {
    /// Connects to `url` and makes `stream` if it is missing. The connection reconnects by
    /// itself after this first one succeeds.
    ///
    /// # Errors
    /// [`Error::Runtime`], [`Error::Connect`] if the server cannot be reached, [`Error::Stream`]
    /// if the stream cannot be made.
    pub fn connect(url: &str, stream: &StreamSpec) -> Result<Publisher, Error> {
        let runtime = Runtime::start()?;
        let context = runtime.block_on(async {
            let context = jetstream::new(connect(url).await?);
            ensure_stream(&context, stream).await?;
            Ok::<_, Error>(context)
        })?;
        Ok(Publisher { context, runtime })
    }

    /// Makes `stream` if it is missing (for a second stream on the same connection).
    ///
    /// # Errors
    /// [`Error::Stream`].
    pub fn ensure_stream(&self, stream: &StreamSpec) -> Result<(), Error> {
        self.runtime
            .block_on(ensure_stream(&self.context, stream))
            .map(drop)
    }

    /// Publishes `payload` on `subject` with the message id `id`, and waits (at most
    /// [`PUBLISH_TIMEOUT`]) for the stream's acknowledgement.
    ///
    /// # Errors
    /// [`Error::Publish`] if the publish was refused, [`Error::Unanswered`] if it was not
    /// acknowledged in time or the connection is down.
    pub fn publish(&self, subject: &str, id: &str, payload: Vec<u8>) -> Result<Ack, Error> {
        let message = Outgoing {
            subject: subject.into(),
            id: id.into(),
            payload,
        };
        let mut in_flight = InFlight::default();
        self.send(&mut in_flight, [((), message)], PUBLISH_TIMEOUT);
        // Each publish is answered by its deadline: an ack, a refusal or `Unanswered`.
        loop {
            if let Some(((), result)) = self.acknowledged(&mut in_flight, PUBLISH_TIMEOUT).pop() {
                return result;
            }
        }
    }

    /// The messages of `stream` from its first, at most `max`, waiting at most `wait` for each
    /// (an ephemeral consumer: a way to read what a kept stream holds, such as dead letters).
    ///
    /// # Errors
    /// [`Error::Stream`] if the stream or the consumer cannot be had.
    pub fn read_all(
        &self,
        stream: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let failed = |reason: String| Error::Stream {
            stream: stream.into(),
            reason,
        };
        self.runtime.block_on(async {
            let handle = self
                .context
                .get_stream(stream)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let consumer = handle
                .create_consumer(pull::Config {
                    ack_policy: jetstream::consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(e.to_string()))?;
            let mut out = Vec::new();
            let mut batch = consumer
                .fetch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| failed(e.to_string()))?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| failed(e.to_string()))?;
                out.push((message.subject.to_string(), message.payload.to_vec()));
            }
            Ok(out)
        })
    }
}
