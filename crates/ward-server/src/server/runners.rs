//! The threads that take one kind of job off the loop instead of the pool (batch triggers'
//! runners, publish triggers' publishers): how each is started, woken, stopped and joined. What a
//! thread does, and the state it shares with the loop, are its module's.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// The part of a runner's shared state this module reads and writes.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Life {
    /// ward is stopping: nothing new starts, and what runs ends by this instant.
    pub stop_at: Option<Instant>,
    /// The thread has ended (or is ending): an offer makes a new runner.
    pub ended: bool,
}

/// What a runner's thread shares with the loop, as far as this module needs it.
pub(super) trait RunnerState: Default + Send + 'static {
    fn life(&mut self) -> &mut Life;
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
                    shared.state.lock().life().ended = true;
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
        if !self.shared.state.lock().life().ended {
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

/// The runners of one kind. Dropping it stops them at once and joins their threads;
/// [`Runners::stop_at`] and [`Runners::join`] drain first.
#[derive(Debug)]
pub(super) struct Runners<K, S: RunnerState>(Vec<Runner<K, S>>);

impl<K, S: RunnerState> Default for Runners<K, S> {
    fn default() -> Self {
        Runners(Vec::new())
    }
}

impl<K, S: RunnerState> std::ops::Deref for Runners<K, S> {
    type Target = [Runner<K, S>];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K, S: RunnerState> Runners<K, S> {
    pub(super) fn push(&mut self, runner: Runner<K, S>) {
        self.0.push(runner);
    }

    /// Joins and forgets the runners whose threads have ended.
    pub(super) fn reap_ended(&mut self) {
        self.0.retain_mut(|r| !r.reap());
    }

    /// Wakes every thread (something they all read changed, such as a hold).
    pub(super) fn wake_all(&self) {
        for runner in &self.0 {
            runner.wake();
        }
    }

    /// ward is stopping: each thread starts nothing new and ends what runs by `at`.
    pub(super) fn stop_at(&self, at: Instant) {
        for runner in &self.0 {
            runner.shared.state.lock().life().stop_at = Some(at);
            runner.shared.wake.notify_one();
        }
    }

    /// Waits for every thread to end (after [`Runners::stop_at`]).
    pub(super) fn join(&mut self) {
        for mut runner in self.0.drain(..) {
            runner.join();
        }
    }
}

impl<K, S: RunnerState> Drop for Runners<K, S> {
    fn drop(&mut self) {
        self.stop_at(Instant::now());
        self.join();
    }
}
