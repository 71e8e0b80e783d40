//! A subscription (`subscribe` on the control socket, `ward changes --follow`): the changes the
//! manifest records after the subscriber's sequence number, pushed down its connection as they
//! are committed. Not here: the feed it reads (`feed`), or the connection (`control`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::control::Emit;
use crate::feed::{Feed, Wake};
use crate::protocol::{self, ChangeLine, Reply, Request, Resync, Subscribed};

/// Changes read from the manifest at a time.
const PAGE: usize = 1000;

/// How far behind the committed sequence number a subscriber may be before it is told that
/// what follows is read from the manifest, coalesced ([`Resync`]).
pub(super) const RESYNC_LAG: u64 = 10_000;

/// How often a quiet subscription looks whether its client is still there.
const LIVENESS: Duration = Duration::from_millis(500);

/// Serves `request` (a [`Request::Subscribe`]) on `out` until the client goes, the server stops
/// or the manifest cannot be read (said in an error line).
pub(super) fn serve(request: Request, feed: &Feed, roots: &[PathBuf], out: &mut dyn Emit) {
    let Request::Subscribe { since, globs } = request else {
        return;
    };
    let globs = match compile(&globs) {
        Ok(globs) => globs,
        Err(e) => {
            let _ = out.line(&protocol::refusal_line(e));
            return;
        }
    };
    // Commits come sooner while this lives.
    let _watching = feed.watch();
    let mut since = since.unwrap_or(0);
    let start = Reply::Subscribed(Subscribed {
        subscribed: feed.seq(),
    });
    if out.line(&protocol::reply_line(&Ok(start))).is_err() {
        return;
    }
    // Whether the subscriber has been told it fell behind, until it has caught up.
    let mut behind = false;
    loop {
        let committed = match feed.wait(since, LIVENESS) {
            Wake::Stopping => return,
            Wake::Quiet => {
                if out.gone() {
                    return;
                }
                continue;
            }
            Wake::Changes(committed) => committed,
        };
        if !behind && committed.saturating_sub(since) > RESYNC_LAG {
            behind = true;
            if emit(out, &Resync { resync_from: since }).is_err() {
                return;
            }
        }
        let page = match feed.page(since, PAGE) {
            Ok(page) => page,
            Err(e) => {
                log::error!("a subscription cannot read the manifest: {e}; it is closed");
                let _ = out.line(&protocol::refusal_line(format!(
                    "the manifest cannot be read: {e}"
                )));
                return;
            }
        };
        if page.is_empty() {
            // Every change up to `committed` was replaced by a later one, delivered already.
            since = committed;
            behind = false;
            continue;
        }
        for change in &page {
            since = change.seq;
            if matches(globs.as_ref(), roots, &change.path)
                && emit(out, &ChangeLine::of(change)).is_err()
            {
                return;
            }
        }
        if out.gone() {
            return;
        }
    }
}

fn emit(out: &mut dyn Emit, value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.line(&line)
}

fn compile(globs: &[String]) -> Result<Option<GlobSet>, String> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(Glob::new(glob).map_err(|e| format!("glob {glob:?}: {e}"))?);
    }
    builder.build().map(Some).map_err(|e| e.to_string())
}

/// Whether `path` (absolute) is one the subscriber asked for: relative to its watch root, as a
/// trigger's globs match (a glob without a slash matches the file name anywhere).
fn matches(globs: Option<&GlobSet>, roots: &[PathBuf], path: &Path) -> bool {
    let Some(globs) = globs else { return true };
    let relative = roots
        .iter()
        .find_map(|root| path.strip_prefix(root).ok())
        .unwrap_or(path);
    globs.is_match(relative) || relative.file_name().is_some_and(|n| globs.is_match(n))
}
