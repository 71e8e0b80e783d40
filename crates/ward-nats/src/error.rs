//! The errors of the transport.

/// Why a NATS call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The runtime's thread could not be started.
    #[error("cannot start the NATS runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The server could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The server's address.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// The stream could not be had or made.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What the server said.
        reason: String,
    },
    /// The consumer could not be had or made.
    #[error("consumer {consumer}: {reason}")]
    Consumer {
        /// The consumer's name.
        consumer: String,
        /// What the server said.
        reason: String,
    },
    /// A publish was refused: the server answered with an error.
    #[error("publish on {subject}: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A publish got no answer: the connection is down, or the acknowledgement did not come in
    /// time. Nothing says the message was refused (it may even be stored).
    #[error("publish on {subject}: no answer from the server: {reason}")]
    Unanswered {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A pull request failed.
    #[error("pull from {consumer}: {reason}")]
    Pull {
        /// The consumer's name.
        consumer: String,
        /// Why.
        reason: String,
    },
    /// An acknowledgement could not be sent.
    #[error("{what}: {reason}")]
    Settle {
        /// Which: ack, nak, progress or term.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether the server did not answer (it could not be reached, or was too slow), rather than
    /// refused: the same call may succeed once it is back.
    pub fn is_unanswered(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Unanswered { .. })
    }
}
