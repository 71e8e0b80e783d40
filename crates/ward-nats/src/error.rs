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
    /// A publish was refused or not acknowledged.
    #[error("publish on {subject}: {reason}")]
    Publish {
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
