//! The tokio runtime the blocking facade runs on, and the thread that drives it.

use std::future::Future;
use std::thread::JoinHandle;

use crate::Error;

/// A current-thread tokio runtime driven by a thread it owns: the thread runs the client's
/// connection tasks, callers block on their own futures through [`Runtime::block_on`]. Dropping
/// it stops the thread and joins it.
#[derive(Debug)]
pub struct Runtime {
    handle: tokio::runtime::Handle,
    // Dropped (sent) first by `drop`: it ends the thread's `block_on`, then the thread is joined.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Starts the runtime and its thread.
    ///
    /// # Errors
    /// [`Error::Runtime`] if the runtime or its thread cannot be made.
    pub fn start() -> Result<Runtime, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ward-nats".into())
            .spawn(move || {
                // Drives the IO and timers of every caller's `block_on` until told to stop.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_background();
            })
            .map_err(Error::Runtime)?;
        Ok(Runtime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `future` to completion on the calling thread, its IO driven by the runtime's thread.
    ///
    /// # Panics
    /// If called from inside an async context (a tokio runtime's thread).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
