//! The far side of the `nats` trigger: a `nats-server -js` of the run's own (file storage in the
//! run's directory, on a free port) and one `ward work` that runs the jobs ward publishes there
//! with the stress worker, into the same ledger as ward's own jobs. The `kill-nats` fault kills
//! and restarts the server, the `kill-work` fault `ward work`; the run's end stops both and says
//! how `ward work` ended.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream;

use super::daemon::{signal, wait_until};

/// The stream and durable consumer of the run.
pub const STREAM: &str = "WARD";
const CONSUMER: &str = "stress";

/// The nats-server binary, if the machine has one.
pub fn server_binary() -> Option<PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// What the run's consumer owes (see [`NatsSide::owed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    /// Messages the consumer has not delivered yet.
    pub undelivered: u64,
    /// Deliveries not yet acked, nak-ed or terminated.
    pub unsettled: u64,
    /// Messages the stream holds. More than the two above are messages a work queue should
    /// have deleted at their ack: a nats-server SIGKILLed soon after an ack can bring them
    /// back at its restart with the consumer already past them (its file storage writes the
    /// consumer's state before the stream's deletions). They were run; nothing owes them.
    pub in_stream: u64,
}

impl Owed {
    /// Nothing left to run.
    pub fn none(&self) -> bool {
        self.undelivered == 0 && self.unsettled == 0
    }
}

impl std::fmt::Display for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} undelivered, {} unsettled ({} in the stream)",
            self.undelivered, self.unsettled, self.in_stream
        )
    }
}

/// The server and the worker, both killed on drop.
#[derive(Debug)]
pub struct NatsSide {
    program: PathBuf,
    storage: PathBuf,
    port: u16,
    server: Option<Child>,
    work: Option<Child>,
    /// `ward work`'s command line after the program, for its restarts.
    work_args: Vec<std::ffi::OsString>,
    /// `ward work`'s stderr.
    pub work_log: PathBuf,
}

impl NatsSide {
    /// Starts nats-server with its storage under `dir`, waiting until it listens.
    ///
    /// # Errors
    /// No nats-server, no free port, or a server that does not listen within 10 s.
    pub fn start_server(dir: &Path) -> Result<NatsSide> {
        let program = server_binary().context("no nats-server: apt-get install nats-server")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut side = NatsSide {
            program,
            storage: dir.join("nats"),
            port,
            server: None,
            work: None,
            work_args: Vec::new(),
            work_log: dir.join("out/work.log"),
        };
        side.restart()?;
        Ok(side)
    }

    /// Its address.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts `ward work` with `config` (its trigger named as ward's publish trigger), its
    /// state in `state`, on the files under `tree`.
    ///
    /// # Errors
    /// If it cannot be spawned.
    pub fn start_work(
        &mut self,
        ward: &Path,
        config: &Path,
        state: &Path,
        tree: &Path,
    ) -> Result<()> {
        let mut args: Vec<std::ffi::OsString> = vec![ward.into(), "--config".into()];
        args.extend([config.into(), "--state-dir".into(), state.into()]);
        args.extend(
            ["work", "--nats", &self.url(), "--stream", STREAM]
                .into_iter()
                // A delivery whose ack a killed server lost, or whose worker was killed, comes
                // again after this, inside the settling the run allows (its jobs take at most
                // their 3 s timeout).
                .chain(["--consumer", CONSUMER, "--ack-wait", "5", "--root"])
                .map(Into::into),
        );
        args.push(tree.into());
        self.work_args = args;
        self.spawn_work()
    }

    /// Spawns `ward work` with the arguments `start_work` kept, its stderr appended to the log.
    fn spawn_work(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.work_log)?;
        let (program, args) = self
            .work_args
            .split_first()
            .context("ward work never started")?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting ward work")?;
        self.work = Some(child);
        Ok(())
    }

    /// `ward work`'s pid, while it runs.
    pub fn work_pid(&self) -> Option<u32> {
        self.work.as_ref().map(Child::id)
    }

    /// SIGKILLs `ward work`, reaps it, and starts it again as it was started.
    ///
    /// # Errors
    /// If it cannot be spawned again.
    pub fn restart_work(&mut self) -> Result<()> {
        if let Some(mut work) = self.work.take() {
            let _ = work.kill();
            let _ = work.wait();
        }
        self.spawn_work()
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Sends the server `signal` (SIGSTOP, SIGCONT): stopped, it keeps its connections and
    /// answers nothing, as a server that lost a consumer's way to its clients does.
    ///
    /// # Errors
    /// No server running, or kill(2) failed.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.server.as_ref().context("no nats-server running")?.id();
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!(
                "signal {signal} to nats-server {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Starts the server (again) on its port and storage, waiting until it listens.
    ///
    /// # Errors
    /// If it cannot be spawned or does not listen within 10 s.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let child = Command::new(&self.program)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.storage)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        self.server = Some(child);
        if !wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        }) {
            bail!("nats-server did not listen on {} within 10 s", self.port);
        }
        Ok(())
    }

    /// What the consumer still owes: messages not yet delivered and deliveries not yet
    /// settled, with the stream's own count beside them. `None` if the server cannot tell (it is
    /// down, or there is no stream or consumer yet).
    pub fn owed(&self) -> Option<Owed> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let asked = async {
                let client = async_nats::connect(self.url()).await.ok()?;
                let stream = jetstream::new(client).get_stream(STREAM).await.ok()?;
                let consumer: jetstream::consumer::PullConsumer =
                    stream.get_consumer(CONSUMER).await.ok()?;
                let info = consumer.cached_info();
                Some(Owed {
                    undelivered: info.num_pending,
                    unsettled: info.num_ack_pending as u64,
                    in_stream: stream.cached_info().state.messages,
                })
            };
            tokio::time::timeout(Duration::from_secs(5), asked)
                .await
                .ok()
                .flatten()
        })
    }

    /// SIGTERMs `ward work` (it settles the jobs in hand) and kills the server; what went wrong
    /// with the worker's end, if anything.
    pub fn stop(&mut self) -> Option<String> {
        let problem = self.work.take().and_then(|mut work| {
            signal(work.id(), libc::SIGTERM);
            let mut status = None;
            wait_until(Duration::from_secs(30), || {
                status = work.try_wait().ok().flatten();
                status.is_some()
            });
            if status.is_none() {
                let _ = work.kill();
                let _ = work.wait();
            }
            match status {
                Some(s) if s.success() => None,
                Some(s) => Some(format!("ward work ended with {s} after SIGTERM")),
                None => Some("ward work did not end within 30 s of SIGTERM".into()),
            }
        });
        self.kill();
        problem
    }
}

impl Drop for NatsSide {
    fn drop(&mut self) {
        if let Some(mut work) = self.work.take() {
            let _ = work.kill();
            let _ = work.wait();
        }
        self.kill();
    }
}
