//! The threads that take one kind of job off the loop instead of the pool (batch triggers'
//! runners, publish triggers' publishers): how each is started, woken, stopped and joined. What a
//! thread does, and the state it shares with the loop, are its module's.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// What a runner's thread shares with the loop, as far as this module needs it.
pub(super) trait RunnerState: Default + Send + 'static {
    /// ward is stopping: nothing new starts, and what runs ends by `at`.
    fn stop_at(&mut self, at: Instant);
    /// The thread has ended (or is ending): an offer makes a new runner.
    fn ended(&self) -> bool;
    fn set_ended(&mut self);
}

/// A runner's state under one lock, and the condvar its thread waits on.
#[derive(Debug, Default)]
pub(super) struct Shared<S> {
    pub state: Mutex<S>,
    pub wake: Condvar,
}

/// One runner: what it runs for (`key`), its shared state, its thread.
#[derive(Debug)]
pub(super) struct Runner<K, S> {
    pub key: K,
    pub shared: Arc<Shared<S>>,
    name: String,
    thread: Option<JoinHandle<()>>,
}

impl<K, S: RunnerState> Runner<K, S> {
    /// Starts the thread `name`, which runs `body`; a panic is logged and ends it, what it owed
    /// staying pending in the manifest for the next start.
    pub(super) fn start(
        key: K,
        name: String,
        body: impl FnOnce(&Shared<S>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::<S>::default());
        let thread = {
            let (shared, name) = (Arc::clone(&shared), name.clone());
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| body(&shared));
                    if std::panic::catch_unwind(run).is_err() {
                        log::error!("{name} panicked; what it owed runs at the next start");
                    }
                    shared.state.lock().set_ended();
                })?
        };
        Ok(Runner {
            key,
            shared,
            name,
            thread: Some(thread),
        })
    }

    /// Wakes the thread, under its lock: it has either seen what changed or is waiting for
    /// this.
    pub(super) fn wake(&self) {
        let _state = self.shared.state.lock();
        self.shared.wake.notify_one();
    }

    /// Joins the thread if it has ended; whether it had.
    pub(super) fn reap(&mut self) -> bool {
        if !self.shared.state.lock().ended() {
            return false;
        }
        self.join();
        true
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("{} panicked", self.name);
        }
    }
}

/// ward is stopping: tells each of `runners` (see [`RunnerState::stop_at`]).
pub(super) fn stop_all<K, S: RunnerState>(runners: &[Runner<K, S>], at: Instant) {
    for runner in runners {
        runner.shared.state.lock().stop_at(at);
        runner.shared.wake.notify_one();
    }
}

/// Waits for each of `runners`' threads to end (after [`stop_all`]).
pub(super) fn join_all<K, S: RunnerState>(runners: &mut Vec<Runner<K, S>>) {
    for mut runner in runners.drain(..) {
        runner.join();
    }
}
