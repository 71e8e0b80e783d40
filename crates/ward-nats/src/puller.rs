//! The pull side: a durable consumer's messages for any number of threads ([`Puller`]), and
//! their settlement ([`Delivery`]). Not the publishing side (`lib.rs`, `in_flight.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;

use crate::{ConsumerSpec, Error, Runtime, SETTLE_TIMEOUT, StreamSpec, connect, ensure_stream};

/// How long past a fetch's expiry its answer may be late before the fetch counts as unanswered:
/// a server answers every pull request by its expiry, with messages or a status, though a busy
/// one may be seconds late. Under the five seconds after which the client ends the batch by
/// itself, as if it had been answered.
const ANSWER_GRACE: Duration = Duration::from_secs(4);

/// Fetches in a row the server leaves unanswered, on a connection that is up, before the
/// consumer is made anew (see [`Puller::next`]).
const REMAKE_AFTER: u32 = 2;

/// One connection that pulls from a durable consumer, for any number of threads at once.
///
/// One fetch asks for as many messages as threads wait in [`Puller::next`] (one fetch at a
/// time; the others wait for what it brings): a round trip per batch, not per message, and no
/// message waits in a buffer for a thread that is busy, its ack wait running. A thread counted
/// into a fetch may leave `next` just before it (its own fetch came back empty): the message
/// fetched for it goes to the next thread that calls, and one still there when the puller is
/// dropped is handed back at once.
///
/// A server that leaves its pull requests unanswered, on a connection that is up, has lost the
/// consumer's way to its clients: nats-server 2.9.10 was seen to count messages delivered to
/// pull requests while none reached any client, and to answer no pull of that consumer after,
/// from any connection, until it was restarted. The consumer is then made anew (see
/// `REMAKE_AFTER`): a new one on the server, with the same name.
#[derive(Debug)]
pub struct Puller {
    client: async_nats::Client,
    /// The consumer's stream, and what the consumer is made with: to make it anew.
    stream: stream::Stream,
    config: pull::Config,
    /// Messages fetched for the threads waiting, oldest first.
    fetched: parking_lot::Mutex<VecDeque<jetstream::Message>>,
    /// The threads in [`Puller::next`].
    waiting: AtomicUsize,
    /// Held by the thread that fetches, with what it fetches from.
    fetching: parking_lot::Mutex<Fetching>,
    /// Fetches made.
    fetches: AtomicU64,
    /// Times the consumer was made anew.
    remade: AtomicU64,
    // Last: the consumer and the client are dropped while the runtime still runs.
    runtime: Arc<Runtime>,
}

/// The fetching thread's own: the consumer, and the fetches in a row the server left
/// unanswered.
#[derive(Debug)]
struct Fetching {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    unanswered: u32,
}

impl Puller {
    /// Connects to `url`, makes `stream` if it is missing and the durable consumer `consumer`
    /// of it if that is missing.
    ///
    /// # Errors
    /// [`Error::Runtime`], [`Error::Connect`], [`Error::Stream`], [`Error::Consumer`].
    pub fn connect(
        url: &str,
        stream: &StreamSpec,
        consumer: &ConsumerSpec,
    ) -> Result<Puller, Error> {
        let runtime = Runtime::start()?;
        let (client, stream, config, made) = runtime.block_on(async {
            let client = connect(url).await?;
            let context = jetstream::new(client.clone());
            let stream = ensure_stream(&context, stream).await?;
            let config = pull::Config {
                durable_name: Some(consumer.name.clone()),
                filter_subject: consumer.filter.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_deliver: consumer.max_deliver,
                ack_wait: consumer.ack_wait,
                ..Default::default()
            };
            let failed = |reason: String| Error::Consumer {
                consumer: consumer.name.clone(),
                reason,
            };
            // As for the stream: another worker may make the consumer between the look and the
            // make.
            let mut made = match stream
                .get_or_create_consumer(&consumer.name, config.clone())
                .await
            {
                Ok(made) => made,
                Err(e) => stream
                    .get_consumer(&consumer.name)
                    .await
                    .map_err(|_| failed(e.to_string()))?,
            };
            // A consumer made earlier with other limits (an older ward, other flags) gets
            // these: the limits are the worker's to say, and the same for all its workers.
            let had = &made.cached_info().config;
            if had.max_deliver != config.max_deliver || had.ack_wait != config.ack_wait {
                made = stream.update_consumer(config.clone()).await.map_err(|e| {
                    failed(format!(
                        "it exists with other limits, and updating them failed: {e}"
                    ))
                })?;
            }
            Ok::<_, Error>((client, stream, config, made))
        })?;
        Ok(Puller {
            client,
            stream,
            config,
            fetched: parking_lot::Mutex::default(),
            waiting: AtomicUsize::new(0),
            fetching: parking_lot::Mutex::new(Fetching {
                consumer: made,
                unanswered: 0,
            }),
            fetches: AtomicU64::new(0),
            remade: AtomicU64::new(0),
            runtime: Arc::new(runtime),
        })
    }

    /// The next message, waiting at most `wait` for one; `None` if none came. Threads may call
    /// it at once: each gets its own message.
    ///
    /// A fetch the server leaves unanswered past its expiry, on a connection that is up, is an
    /// error; after two of them in a row the consumer is deleted and made again,
    /// with the same name and settings, before the next fetch (said in the log). Nothing is
    /// lost: a work queue keeps its messages until they are acknowledged, and the new consumer
    /// delivers those not acknowledged yet, some of them a second time.
    ///
    /// # Errors
    /// [`Error::Pull`] if the request failed (the connection is down, the consumer is gone) or
    /// went unanswered; [`Error::Consumer`] if the consumer could not be made anew.
    pub fn next(&self, wait: Duration) -> Result<Option<Delivery>, Error> {
        let started = std::time::Instant::now();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _left = Left(&self.waiting);
        // Its own statement: the buffer's lock is released before a fetch.
        let fetched = self.fetched.lock().pop_front();
        let message = match fetched {
            Some(message) => Some(message),
            None => self.fetch_or_take(started, wait)?,
        };
        Ok(message.map(|message| Delivery {
            delivered: message.info().map_or(1, |i| i.delivered.max(1) as u64),
            message,
            client: self.client.clone(),
            runtime: self.runtime.clone(),
        }))
    }

    /// Under the fetch lock: a message the fetch this thread waited for brought, else the first
    /// of a fetch of its own for every thread waiting (the rest left for them), within what is
    /// left of `wait` since `started`.
    fn fetch_or_take(
        &self,
        started: std::time::Instant,
        wait: Duration,
    ) -> Result<Option<jetstream::Message>, Error> {
        let mut turn = self.fetching.lock();
        if let Some(message) = self.fetched.lock().pop_front() {
            return Ok(Some(message));
        }
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        if turn.unanswered >= REMAKE_AFTER {
            self.remake(&mut turn)?;
        }
        let want = self.waiting.load(Ordering::SeqCst).max(1);
        // The server wants an expiry of at least a millisecond; a short one for a thread that
        // waited its turn out.
        let mut batch = self
            .fetch(&mut turn, want, left.max(Duration::from_millis(10)))?
            .into_iter();
        let first = batch.next();
        self.fetched.lock().extend(batch);
        Ok(first)
    }

    /// The threads in [`Puller::next`] now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The fetches (round trips for messages) made so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// How many times the consumer was made anew because the server answered none of its pulls.
    pub fn remade(&self) -> u64 {
        self.remade.load(Ordering::Relaxed)
    }

    /// Up to `max` messages: those there at once, else the first to come within `wait`.
    fn fetch(
        &self,
        turn: &mut Fetching,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<jetstream::Message>, Error> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let failed = |reason: String| Error::Pull {
            consumer: turn.consumer.cached_info().name.clone(),
            reason,
        };
        let answered = self.runtime.block_on(async {
            let mut batch = turn
                .consumer
                .fetch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let mut messages = Vec::with_capacity(max);
            // The client's own end of a batch the server never ends comes five seconds past
            // its expiry; this says sooner that it did not.
            let gathered = tokio::time::timeout(wait + ANSWER_GRACE, async {
                while let Some(message) = batch.next().await {
                    match message {
                        Ok(message) => messages.push(message),
                        // What came before the error is delivered all the same; the error shows
                        // at the next fetch if it lasts.
                        Err(_) if !messages.is_empty() => break,
                        Err(e) => return Err(failed(e.to_string())),
                    }
                }
                Ok(())
            })
            .await;
            match gathered {
                Ok(ended) => ended.map(|()| Some(messages)),
                Err(_) if messages.is_empty() => Ok(None),
                Err(_) => Ok(Some(messages)),
            }
        })?;
        if let Some(messages) = answered {
            turn.unanswered = 0;
            return Ok(messages);
        }
        // A connection that went down meanwhile explains the silence: the client reconnects,
        // and the consumer is not the matter.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(failed(format!(
                "no answer within {:?}: the connection is down",
                wait + ANSWER_GRACE
            )));
        }
        turn.unanswered += 1;
        Err(failed(format!(
            "the server answered no pull request within {:?}, {} time(s) in a row on a \
             connection that is up; after {REMAKE_AFTER} the consumer is made anew",
            wait + ANSWER_GRACE,
            turn.unanswered
        )))
    }

    /// Deletes the consumer and makes it again with the same name and settings: a new consumer
    /// on the server, whose pulls are answered. Another worker of it may do the same at about
    /// the same time; each ends with a consumer of that name, and at worst a delivery is made
    /// twice.
    fn remake(&self, turn: &mut Fetching) -> Result<(), Error> {
        let name = turn.consumer.cached_info().name.clone();
        let (deleted, made) = self.runtime.block_on(async {
            let deleted = self.stream.delete_consumer(&name).await;
            let made = self
                .stream
                .get_or_create_consumer(&name, self.config.clone())
                .await;
            (deleted, made)
        });
        let made = made.map_err(|e| Error::Consumer {
            consumer: name.clone(),
            reason: format!("making it anew after its pulls went unanswered: {e}"),
        })?;
        turn.consumer = made;
        turn.unanswered = 0;
        self.remade.fetch_add(1, Ordering::Relaxed);
        // Said whether the delete succeeded or not (another worker may have deleted it first).
        log::warn!(
            "consumer {name}: the server answered none of its last {REMAKE_AFTER} pull requests on \
             a connection that is up; made anew ({}), its unacknowledged messages are delivered \
             again",
            match deleted {
                Ok(_) => "deleted first".to_owned(),
                Err(e) => format!("its delete said: {e}"),
            }
        );
        Ok(())
    }
}

/// Counts a thread out of [`Puller::next`] however it leaves.
struct Left<'a>(&'a AtomicUsize);

impl Drop for Left<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Puller {
    /// Messages fetched that no thread took are handed back for redelivery at once, not after
    /// their ack wait.
    fn drop(&mut self) {
        for message in self.fetched.get_mut().drain(..) {
            let nak = message.ack_with(jetstream::AckKind::Nak(None));
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(SETTLE_TIMEOUT, nak).await });
        }
    }
}

/// One message pulled from a consumer, to be settled: acked, nak-ed, or terminated.
#[derive(Debug)]
pub struct Delivery {
    message: jetstream::Message,
    delivered: u64,
    client: async_nats::Client,
    runtime: Arc<Runtime>,
}

impl Delivery {
    /// The subject it was published on.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// Its body.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// How many times it has been delivered, this time included (1 the first time).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    fn settle(&self, kind: jetstream::AckKind, what: &'static str) -> Result<(), Error> {
        let failed = |reason: String| Error::Settle { what, reason };
        self.runtime.block_on(async {
            let sent = async {
                self.message
                    .ack_with(kind)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                self.client.flush().await.map_err(|e| failed(e.to_string()))
            };
            tokio::time::timeout(SETTLE_TIMEOUT, sent)
                .await
                .map_err(|_| failed(format!("not flushed within {SETTLE_TIMEOUT:?}")))?
        })
    }

    /// Done: the stream may forget it.
    ///
    /// # Errors
    /// [`Error::Settle`] if it could not be sent (it will then be redelivered after the ack wait).
    pub fn ack(&self) -> Result<(), Error> {
        self.settle(jetstream::AckKind::Ack, "ack")
    }

    /// Failed: deliver it again after `delay`.
    ///
    /// # Errors
    /// [`Error::Settle`].
    pub fn nak(&self, delay: Duration) -> Result<(), Error> {
        self.settle(jetstream::AckKind::Nak(Some(delay)), "nak")
    }

    /// Still working on it: restart its ack wait.
    ///
    /// # Errors
    /// [`Error::Settle`].
    pub fn progress(&self) -> Result<(), Error> {
        self.settle(jetstream::AckKind::Progress, "progress")
    }

    /// Never deliver it again.
    ///
    /// # Errors
    /// [`Error::Settle`].
    pub fn term(&self) -> Result<(), Error> {
        self.settle(jetstream::AckKind::Term, "term")
    }
}
