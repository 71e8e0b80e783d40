//! SIGHUP: the configuration read again and applied to what can change while the server runs.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::handover::Handover;
use crate::state::StateDir;

/// Reads the configuration again from the launch in `handover`; on success records it there (a
/// server restarted after a crash then runs it) and returns it, else keeps `old`. `backstop` is
/// the pool's timeout, which only a restart changes.
pub(super) fn reload(
    handover: &mut Handover,
    state: &StateDir,
    old: Config,
    dispatcher: &RwLock<Arc<Dispatcher>>,
    backstop: Duration,
) -> Config {
    log::info!("received SIGHUP: reloading the configuration");
    let new = match handover.launch.config_with_missing_roots() {
        Ok(new) => new,
        Err(e) => {
            log::error!("reload refused, keeping the running configuration: {e}");
            return old;
        }
    };
    let fresh = match Dispatcher::reloaded(new.clone(), state.clone(), Some(&dispatcher.read())) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            log::error!("reload refused, keeping the running configuration: {e}");
            return old;
        }
    };
    if new.roots != old.roots
        || new.ignore != old.ignore
        || new.debounce != old.debounce
        || new.workers != old.workers
    {
        log::warn!(
            "reload: watch roots, ignores, debounce and worker count apply only after `ward restart`"
        );
    }
    let slow = super::job::past_backstop(&new, backstop);
    if !slow.is_empty() {
        log::warn!(
            "reload: the timeout_s (with stop_grace_s) of trigger(s) {} outlasts the job pool's \
             backstop of {backstop:?}, which follows only after `ward restart`: until then the \
             pool counts a job of theirs still running then as stuck, and starts another job \
             thread in its place",
            slow.join(", ")
        );
    }
    let previous = std::mem::replace(&mut *dispatcher.write(), fresh);
    handover.config = new.clone();
    handover.apply_umask();
    if let Err(e) = handover.record(state) {
        log::error!(
            "the reloaded configuration is not recorded; a restarted server would run the one before: {e}"
        );
    }
    previous.stop_workers();
    // Queued jobs keep the trigger that matched them: a removed or changed trigger still runs
    // its queued jobs as it was configured when they were queued.
    log::info!(
        "reload: {} trigger(s) now active; jobs already queued run with the trigger that matched them",
        new.triggers.len()
    );
    // Settings that need a restart stay as they run.
    Config {
        roots: old.roots,
        ignore: old.ignore,
        debounce: old.debounce,
        max_wait: old.max_wait,
        workers: old.workers,
        ..new
    }
}
