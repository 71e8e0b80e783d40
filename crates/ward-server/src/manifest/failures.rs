//! The paths that gave up: the `failures` table, path → what failed, on which version, and how.
//!
//! A job that fails its last attempt gives up on the version of its file it ran on (or on the
//! file's absence, for a removal). A later start does not run it again for that same version:
//! the comparison with the disk skips a path whose current state is the one it gave up on, so a
//! job that can never succeed stops failing at every start. A change to the file (or
//! `ward retry`) runs it again; a success removes the entry. At least once stands for every
//! version that changed.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::record::path_of;
use super::{FileMeta, Manifest};
use crate::Error;
use crate::jobs::{Event, Job};

pub(super) const FAILURES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("failures");

/// What is known of a path that gave up (serialized as JSON in the table: it is written once
/// per give-up, read by `ward failures`, and small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The trigger whose job gave up.
    pub trigger: String,
    /// The change it was processing.
    pub event: Event,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// When it gave up, in seconds since the epoch.
    pub at: u64,
    /// The crash report of the last attempt, when its process died.
    pub report: Option<PathBuf>,
    /// The version it gave up on; `None`: the file was gone.
    pub version: Option<FileMeta>,
}

impl Failure {
    /// What `job` giving up after `attempts` records: its last `error` (cut past 2000 bytes:
    /// the table keeps one per path), its crash report, and the version it gave up on, the file
    /// as it is now (a change since has a job of its own).
    pub fn of(job: &Job, attempts: u32, mut error: String, report: Option<PathBuf>) -> Failure {
        const ERROR_MAX: usize = 2000;
        if error.len() > ERROR_MAX {
            let cut = (0..=ERROR_MAX)
                .rev()
                .find(|&i| error.is_char_boundary(i))
                .unwrap_or(0);
            error.truncate(cut);
            error.push('…');
        }
        Failure {
            trigger: job.trigger.name().to_owned(),
            event: job.event,
            attempts,
            error,
            at: crate::state::unix_now(),
            report,
            version: if job.event == Event::Removed {
                None
            } else {
                FileMeta::read(&job.path)
            },
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and paths always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Failure> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The version `key` gave up on, if it gave up (`Some(None)`: on the file's absence). A failure
/// that cannot be read counts as none: the path is then processed again, which at-least-once
/// allows and a silent skip would not.
pub(super) fn gave_up_on(
    failures: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Option<Option<FileMeta>> {
    let value = failures.get(key).ok()??;
    Failure::decode(value.value()).map(|f| f.version)
}

/// Whether the stored path `key` is `under` or lies below it.
fn is_under(key: &[u8], under: &[u8]) -> bool {
    key.strip_prefix(under)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/' || under.ends_with(b"/"))
}

/// Forgets the give-ups of `under` and every path below it.
pub(super) fn forget_under(
    failures: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    under: &Path,
) -> Result<(), redb::StorageError> {
    let under = under.as_os_str().as_bytes();
    // Paths sort by their bytes: a subtree is contiguous from its root, `/a/b c` aside.
    let mut keys = Vec::new();
    for entry in failures.range::<&[u8]>(under..)? {
        let (key, _) = entry?;
        if !key.value().starts_with(under) {
            break;
        }
        if is_under(key.value(), under) {
            keys.push(key.value().to_vec());
        }
    }
    for key in keys {
        failures.remove(key.as_slice())?;
    }
    Ok(())
}

impl Manifest {
    /// How many of `under` and the paths below it gave up.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn gave_up_under(&self, under: &Path) -> Result<u64, Error> {
        let under = under.as_os_str().as_bytes();
        self.read(|txn| {
            let mut n = 0;
            for entry in txn.open_table(FAILURES)?.range::<&[u8]>(under..)? {
                let (key, _) = entry?;
                if !key.value().starts_with(under) {
                    break;
                }
                n += u64::from(is_under(key.value(), under));
            }
            Ok(n)
        })
    }

    /// Up to `limit` paths that gave up, from the first after `after`, in path order.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn failures(
        &self,
        after: Option<&Path>,
        limit: usize,
    ) -> Result<Vec<(PathBuf, Failure)>, Error> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |a| {
            Bound::Excluded(a.as_os_str().as_bytes())
        });
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn
                .open_table(FAILURES)?
                .range::<&[u8]>((start, Bound::Unbounded))?
            {
                if out.len() >= limit {
                    break;
                }
                let (key, value) = entry?;
                if let Some(failure) = Failure::decode(value.value()) {
                    out.push((path_of(key.value()), failure));
                }
            }
            Ok(out)
        })
    }

    /// How many paths gave up.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn gave_up(&self) -> Result<u64, Error> {
        self.read(|txn| Ok(txn.open_table(FAILURES)?.len()?))
    }

    /// What is known of `path`'s give-up, if it gave up.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn failure(&self, path: &Path) -> Result<Option<Failure>, Error> {
        self.read(|txn| {
            Ok(txn
                .open_table(FAILURES)?
                .get(path.as_os_str().as_bytes())?
                .and_then(|v| Failure::decode(v.value())))
        })
    }
}

#[cfg(test)]
mod tests {
    use ward_watch::IgnoreRules;

    use super::*;
    use crate::manifest::Update;
    use crate::manifest::fixtures::queued;

    fn gave_up(path: &Path, event: Event) -> [Update; 2] {
        let failure = Failure {
            trigger: "t".into(),
            event,
            attempts: 2,
            error: "exit status 1".into(),
            at: 1,
            report: None,
            version: FileMeta::read(path),
        };
        [
            Update::GaveUp {
                path: path.to_path_buf(),
                failure: Box::new(failure),
            },
            Update::Finished {
                path: path.to_path_buf(),
                event,
                ok: false,
                processed: None,
                old_path: None,
                seq: None,
            },
        ]
    }

    /// Regression: a job that could never succeed (here, one per file and one for a removal)
    /// failed again at every start, writing crash reports each time. It is owed again only when
    /// its file changes, or when asked.
    #[test]
    fn a_path_that_gave_up_is_owed_again_only_when_it_changes_or_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let rules = IgnoreRules::new(vec![root.clone()], &[], None).unwrap();
        let (mut m, _) = Manifest::open(&dir.path().join("m.redb")).unwrap();
        let (a, b, gone) = (root.join("a"), root.join("sub/b"), root.join("gone"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        for (path, event) in [(&a, Event::Created), (&b, Event::Created)] {
            m.apply(&[queued(path.to_str().unwrap(), event)]).unwrap();
            m.apply(&gave_up(path, event)).unwrap();
        }
        // `gone` was processed once, then removed, and its removal's job gave up.
        let version = FileMeta {
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
            dev: 1,
        };
        m.apply(&[
            queued(gone.to_str().unwrap(), Event::Created),
            Update::Finished {
                path: gone.clone(),
                event: Event::Created,
                ok: true,
                processed: Some(version),
                old_path: None,
                seq: None,
            },
            queued(gone.to_str().unwrap(), Event::Removed),
        ])
        .unwrap();
        m.apply(&gave_up(&gone, Event::Removed)).unwrap();
        let owed = |m: &Manifest| {
            let mut paths: Vec<PathBuf> = m
                .reconcile(&rules, &root, |_| true)
                .unwrap()
                .into_iter()
                .map(|r| r.path)
                .collect();
            paths.sort();
            paths
        };
        assert_eq!(owed(&m), Vec::<PathBuf>::new(), "a give-up was owed again");
        assert_eq!(m.gave_up().unwrap(), 3);
        let listed: Vec<PathBuf> = m
            .failures(None, 10)
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(listed, [a.clone(), gone.clone(), b.clone()]);

        // A change to the file owes its job again.
        std::fs::write(&a, "22").unwrap();
        assert_eq!(owed(&m), std::slice::from_ref(&a));
        // A retry of a directory forgets what gave up below it.
        assert_eq!(m.gave_up_under(&root.join("sub")).unwrap(), 1);
        m.apply(&[Update::Retried {
            path: root.join("sub"),
        }])
        .unwrap();
        assert_eq!(owed(&m), [a.clone(), b.clone()]);
        // A success forgets the give-up.
        m.apply(&[Update::Finished {
            path: gone.clone(),
            event: Event::Removed,
            ok: true,
            processed: None,
            old_path: None,
            seq: None,
        }])
        .unwrap();
        assert_eq!(m.gave_up().unwrap(), 1, "{:?}", m.failures(None, 10));
        assert_eq!(m.failure(&a).unwrap().map(|f| f.attempts), Some(2));
    }

    /// A publish succeeded here and its job gave up on a remote worker: it is listed, not owed
    /// again for the version it gave up on, and owed again when retried.
    #[test]
    fn a_job_that_gave_up_remotely_is_listed_and_owed_again_when_retried() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(&root).unwrap();
        let rules = IgnoreRules::new(vec![root.clone()], &[], None).unwrap();
        let (mut m, _) = Manifest::open(&dir.path().join("m.redb")).unwrap();
        let a = root.join("a");
        std::fs::write(&a, "1").unwrap();
        let version = FileMeta::read(&a);
        m.apply(&[
            queued(a.to_str().unwrap(), Event::Created),
            Update::Finished {
                path: a.clone(),
                event: Event::Created,
                ok: true,
                processed: version,
                old_path: None,
                seq: None,
            },
        ])
        .unwrap();
        let owed = |m: &Manifest| m.reconcile(&rules, &root, |_| true).unwrap().len();
        assert_eq!(owed(&m), 0);
        m.apply(&[Update::GaveUpRemotely {
            path: a.clone(),
            failure: Box::new(Failure {
                trigger: "t".into(),
                event: Event::Created,
                attempts: 3,
                error: "on worker w: exit status 1".into(),
                at: 1,
                report: None,
                version,
            }),
        }])
        .unwrap();
        assert_eq!(m.record(&a).unwrap().unwrap().processed, None);
        assert_eq!(m.failure(&a).unwrap().map(|f| f.attempts), Some(3));
        assert_eq!(owed(&m), 0, "a remote give-up was owed again unchanged");
        m.apply(&[Update::Retried { path: a.clone() }]).unwrap();
        assert_eq!(owed(&m), 1, "a retried remote give-up is not owed");
    }
}
