//! The facade against a real `nats-server` (skipped when it is not installed, unless
//! `WARD_TEST_REQUIRE_TOOLS` is set).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ward_nats::{ConsumerSpec, InFlight, Outgoing, Publisher, Puller, StreamSpec};

struct Server {
    child: Child,
    url: String,
    /// Reads the server's log until it ends with the server.
    log: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = self.log.take() {
            let _ = log.join();
        }
    }
}

fn server() -> Option<Server> {
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("WARD_TEST_REQUIRE_TOOLS").is_none(),
            "nats-server is not installed (the nats-server package)"
        );
        eprintln!("skipped: nats-server is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // On a port it picks itself (`-p -1`) and names on stderr: a port picked here and released
    // could be taken by a concurrent test's server before this one binds it.
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says on stderr where it listens and when it is ready: waited for, not guessed with a
    // connect loop.
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut port = None;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let Some((_, at)) = line.split_once("Listening for client connections on ") {
                port = at
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
            }
            if line.contains("Server is ready") {
                let _ = ready_tx.send(port);
            }
        }
    });
    let mut server = Server {
        child,
        url: String::new(),
        log: Some(log),
        _dir: dir,
    };
    // A panic here drops the server: killed, its log's reader joined.
    let port = ready
        .recv_timeout(Duration::from_secs(10))
        .expect("nats-server did not say it was ready within 10 s")
        .expect("nats-server did not say where it listens");
    server.url = format!("nats://127.0.0.1:{port}");
    Some(server)
}

#[test]
fn a_republish_with_the_same_id_is_dropped_and_a_delivery_is_settled() {
    let Some(server) = server() else { return };
    let stream = StreamSpec::work_queue("T", "t.>");
    let publisher = Publisher::connect(&server.url, &stream).unwrap();
    let first = publisher.publish("t.a", "id-1", b"one".to_vec()).unwrap();
    let again = publisher.publish("t.a", "id-1", b"one".to_vec()).unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "{again:?}");
    publisher.publish("t.b", "id-2", b"two".to_vec()).unwrap();

    let mut consumer = ConsumerSpec::new("c", "t.>");
    consumer.max_deliver = 2;
    let puller = Puller::connect(&server.url, &stream, &consumer).unwrap();
    let one = puller.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((one.subject(), one.payload()), ("t.a", &b"one"[..]));
    assert_eq!(one.delivered(), 1);
    one.ack().unwrap();
    let two = puller.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(two.payload(), b"two");
    two.nak(Duration::ZERO).unwrap();
    let two = puller.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(two.delivered(), 2);
    two.progress().unwrap();
    two.term().unwrap();
    assert!(puller.next(Duration::from_millis(300)).unwrap().is_none());
}

#[test]
fn an_existing_consumer_takes_the_limits_of_the_puller_that_connects() {
    let Some(server) = server() else { return };
    let stream = StreamSpec::work_queue("T", "t.>");
    let publisher = Publisher::connect(&server.url, &stream).unwrap();
    publisher.publish("t.a", "id-1", b"one".to_vec()).unwrap();
    let mut consumer = ConsumerSpec::new("c", "t.>");
    consumer.max_deliver = 1;
    consumer.ack_wait = Duration::from_millis(300);
    let first = Puller::connect(&server.url, &stream, &consumer).unwrap();
    let held = first.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(held.delivered(), 1);
    // Never settled; with one delivery at most, the server would keep it from everyone.
    drop((held, first));
    consumer.max_deliver = -1;
    let second = Puller::connect(&server.url, &stream, &consumer).unwrap();
    let again = second.next(Duration::from_secs(5)).unwrap();
    let again = again.expect("the consumer kept its first limit: no second delivery");
    assert_eq!((again.payload(), again.delivered()), (&b"one"[..], 2));
    again.ack().unwrap();
}

#[test]
fn threads_waiting_at_once_are_served_by_one_fetch_each_its_own_message() {
    let Some(server) = server() else { return };
    let stream = StreamSpec::work_queue("T", "t.>");
    let publisher = Publisher::connect(&server.url, &stream).unwrap();
    let puller = Puller::connect(&server.url, &stream, &ConsumerSpec::new("c", "t.>")).unwrap();
    let got = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let delivery = puller.next(Duration::from_secs(20)).unwrap().unwrap();
                    delivery.ack().unwrap();
                    delivery.payload().to_vec()
                })
            })
            .collect();
        // All four wait before any message is there: the first fetch asks for what one thread
        // wanted then, the next for those still waiting.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while puller.waiting() < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "the threads did not all wait"
            );
            std::thread::yield_now();
        }
        // Sent together: the first one answers the first fetch, and the others are there
        // for the next.
        let mut in_flight = InFlight::default();
        let message = |i: u8| Outgoing {
            subject: "t.a".into(),
            id: format!("id-{i}"),
            payload: vec![b'0' + i],
        };
        publisher.send(
            &mut in_flight,
            (0..4).map(|i| (i, message(i))),
            Duration::from_secs(10),
        );
        while !in_flight.is_empty() {
            for (_, ack) in publisher.acknowledged(&mut in_flight, Duration::from_secs(10)) {
                ack.unwrap();
            }
        }
        let mut got: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort();
        got
    });
    assert_eq!(got, [b"0", b"1", b"2", b"3"]);
    // One fetch a message would be four.
    assert!(
        puller.fetches() < 4,
        "{} fetches for four messages",
        puller.fetches()
    );
    assert!(puller.next(Duration::from_millis(300)).unwrap().is_none());
}

#[test]
fn sent_publishes_are_answered_with_their_tags_as_their_acks_come() {
    let Some(server) = server() else { return };
    let publisher = Publisher::connect(&server.url, &StreamSpec::work_queue("S", "s.>")).unwrap();
    let mut in_flight = InFlight::default();
    assert!(
        publisher
            .acknowledged(&mut in_flight, Duration::ZERO)
            .is_empty()
    );
    let message = |i: usize| Outgoing {
        subject: "s.a".into(),
        // The last one repeats the first one's id.
        id: format!("id-{}", i % 9),
        payload: format!("{i}").into_bytes(),
    };
    publisher.send(
        &mut in_flight,
        (0..5).map(|i| (i, message(i))),
        Duration::from_secs(10),
    );
    publisher.send(
        &mut in_flight,
        (5..10).map(|i| (i, message(i))),
        Duration::from_secs(10),
    );
    assert_eq!(in_flight.len(), 10);
    let mut answered = Vec::new();
    while !in_flight.is_empty() {
        answered.extend(publisher.acknowledged(&mut in_flight, Duration::from_secs(10)));
    }
    answered.sort_by_key(|(i, _)| *i);
    let duplicates: Vec<(usize, bool)> = answered
        .into_iter()
        .map(|(i, ack)| (i, ack.unwrap().duplicate))
        .collect();
    assert_eq!(
        duplicates,
        (0..10).map(|i| (i, i == 9)).collect::<Vec<_>>(),
        "each tag answered once, the repeated id as a duplicate"
    );
}

#[test]
fn a_publish_without_a_server_fails_instead_of_waiting() {
    // Nobody listens on the first port (bound, then closed); the second accepts connections
    // (its backlog does) and never says a word, as a port taken by something else would.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    for port in [closed, mute_port] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Publisher::connect(
                &format!("nats://127.0.0.1:{port}"),
                &StreamSpec::work_queue("T", "t.>"),
            ));
        });
        let err = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("connecting to port {port} did not end within 30 s"))
            .unwrap_err();
        assert!(matches!(err, ward_nats::Error::Connect { .. }), "{err}");
    }
    drop(mute);
}

/// Sends `signal` (`STOP`, `CONT`) to the server with the `kill` program.
fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}: {status}");
}

/// A server that answers none of a consumer's pulls while the connection stays up (nats-server
/// 2.9 was seen to, for good; a stopped one does for as long as it is stopped): each such fetch
/// is an error, and after two in a row the consumer is made anew before the next fetch, which
/// then gets the message published meanwhile.
#[test]
fn pulls_left_unanswered_are_errors_and_after_two_the_consumer_is_made_anew() {
    let Some(server) = server() else { return };
    let stream = StreamSpec::work_queue("T", "t.>");
    let publisher = Publisher::connect(&server.url, &stream).unwrap();
    let puller = Puller::connect(&server.url, &stream, &ConsumerSpec::new("c", "t.>")).unwrap();
    assert!(puller.next(Duration::from_millis(200)).unwrap().is_none());
    signal(&server, "STOP");
    for _ in 0..2 {
        let unanswered = puller
            .next(Duration::from_millis(200))
            .expect_err("a fetch the stopped server did not answer");
        assert!(
            unanswered.to_string().contains("answered no pull request"),
            "{unanswered}"
        );
    }
    assert_eq!(
        puller.remade(),
        0,
        "made anew before the next fetch, not sooner"
    );
    signal(&server, "CONT");
    publisher.publish("t.a", "id-1", b"one".to_vec()).unwrap();
    let one = puller
        .next(Duration::from_secs(5))
        .unwrap()
        .expect("the message, from the consumer made anew");
    assert_eq!(one.payload(), b"one");
    assert_eq!(puller.remade(), 1);
    one.ack().unwrap();
    // Answered fetches, empty or not, start the count again.
    assert!(puller.next(Duration::from_millis(300)).unwrap().is_none());
    assert_eq!(puller.remade(), 1);
}
