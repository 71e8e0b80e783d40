//! The records of a subtree in the byte order of their paths, the order the comparison with the
//! disk reads them in. With each directory stored once (`keys`), one directory's files sort by
//! name under its number; the order of whole paths, where a directory's files and its
//! subdirectories' come between one another, is rebuilt here from the sorted directories and a
//! stack of those open. Not the comparison itself (`reconcile`).

use std::iter::Peekable;
use std::ops::Bound;

use redb::{AccessGuard, ReadOnlyTable, StorageError};

use super::keys::{self, DIRS, split};
use super::store::RECORDS;

type Entry = (
    AccessGuard<'static, &'static [u8]>,
    AccessGuard<'static, &'static [u8]>,
);

/// A stored path and its record's bytes.
pub(super) type Stored = (Vec<u8>, Vec<u8>);
/// What the records are read as, in the byte order of the paths.
pub(super) type Item = Result<Stored, StorageError>;

/// The records of one subtree: the subtree's root itself, if it is a file the manifest knows,
/// then those below it, after a given path if one is.
pub(super) struct Ordered {
    records: ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// The subtree's directory key: its root and a `/`.
    under: Vec<u8>,
    /// The subtree's directories not opened yet, in key order; `None` once they are all read.
    dirs: Option<redb::Range<'static, &'static [u8], u64>>,
    /// The next of them, read ahead.
    next_dir: Option<(Vec<u8>, u64)>,
    /// The directories whose files are being read, each below the one before it.
    open: Vec<Open>,
    /// The root's own record, given first.
    root: Option<Stored>,
}

/// A directory whose files are being read.
struct Open {
    /// Its key: its path and a `/`.
    dir: Vec<u8>,
    /// The keys of its files start with this (its number).
    number: Vec<u8>,
    files: Peekable<redb::Range<'static, &'static [u8], &'static [u8]>>,
}

impl Ordered {
    /// The records of `root`'s subtree, itself included, whose paths sort after `after` (a path
    /// of the subtree), or all of them.
    pub(super) fn new(
        txn: &redb::ReadTransaction,
        root: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Ordered, redb::Error> {
        let records = txn.open_table(RECORDS)?;
        let dirs = txn.open_table(DIRS)?;
        let under = keys::dir_key(root);
        let mut ordered = Ordered {
            records,
            under,
            dirs: None,
            next_dir: None,
            open: Vec::new(),
            root: None,
        };
        let (_, name) = split(root);
        if !name.is_empty()
            && after.is_none_or(|after| root > after)
            && let Some(key) = keys::existing(&dirs, root)?
            && let Some(value) = ordered.records.get(key.as_slice())?
        {
            ordered.root = Some((root.to_vec(), value.value().to_vec()));
        }
        let start = match after {
            // The directories that hold `after` have files after it: they are open from the
            // start, each read from past it. The others before it hold nothing after it.
            Some(after) => {
                for (i, _) in after.iter().enumerate().filter(|&(_, &b)| b == b'/') {
                    let dir = &after[..=i];
                    if !dir.starts_with(&ordered.under) {
                        continue;
                    }
                    if let Some(number) = dirs.get(dir)? {
                        ordered.open(dir.to_vec(), number.value(), Some(&after[i + 1..]))?;
                    }
                }
                // `after` is the root itself or a path below it; the directories below the
                // root start at `under`, after `/a/b c/` and the like.
                if after > ordered.under.as_slice() {
                    Bound::Excluded(after.to_vec())
                } else {
                    Bound::Included(ordered.under.clone())
                }
            }
            None => Bound::Included(ordered.under.clone()),
        };
        ordered.dirs =
            Some(dirs.range::<&[u8]>((start.as_ref().map(Vec::as_slice), Bound::Unbounded))?);
        Ok(ordered)
    }

    /// Starts reading the files of the directory `dir` numbered `number`, those named after
    /// `after` if it is given.
    fn open(
        &mut self,
        dir: Vec<u8>,
        number: u64,
        after: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let number_key = keys::file_key(number, b"");
        let start = match after {
            Some(name) => Bound::Excluded(keys::file_key(number, name)),
            None => Bound::Included(number_key.clone()),
        };
        let files = self
            .records
            .range::<&[u8]>((start.as_ref().map(Vec::as_slice), Bound::Unbounded))?
            .peekable();
        self.open.push(Open {
            dir,
            number: number_key,
            files,
        });
        Ok(())
    }

    /// Reads the next directory of the subtree ahead, if there is none read ahead.
    fn read_dir_ahead(&mut self) -> Result<(), StorageError> {
        if self.next_dir.is_some() {
            return Ok(());
        }
        let Some(dirs) = &mut self.dirs else {
            return Ok(());
        };
        match dirs.next().transpose()? {
            Some((dir, number)) if dir.value().starts_with(&self.under) => {
                self.next_dir = Some((dir.value().to_vec(), number.value()));
            }
            _ => self.dirs = None,
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Stored>, StorageError> {
        if let Some(root) = self.root.take() {
            return Ok(Some(root));
        }
        loop {
            self.read_dir_ahead()?;
            let Some(top) = self.open.last_mut() else {
                match self.next_dir.take() {
                    Some((dir, number)) => {
                        self.open(dir, number, None)?;
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            // The path of the top directory's next file, if it has one left.
            let file = match top.files.peek() {
                Some(Ok((key, _))) => key.value().strip_prefix(top.number.as_slice()).map(|name| {
                    let mut path = top.dir.clone();
                    path.extend_from_slice(name);
                    path
                }),
                Some(Err(_)) => {
                    let Some(Err(e)) = top.files.next() else {
                        unreachable!("peeked an error");
                    };
                    return Err(e);
                }
                None => None,
            };
            // A directory below the top one comes among its files; one elsewhere, after them.
            let dir_first = self.next_dir.as_ref().is_some_and(|(dir, _)| {
                dir.starts_with(&top.dir) && file.as_ref().is_none_or(|file| dir < file)
            });
            if dir_first {
                let (dir, number) = self.next_dir.take().expect("read ahead");
                self.open(dir, number, None)?;
                continue;
            }
            let Some(path) = file else {
                self.open.pop();
                continue;
            };
            let (_, value): Entry = top.files.next().expect("peeked")?;
            return Ok(Some((path, value.value().to_vec())));
        }
    }
}

impl Iterator for Ordered {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let item = self.step();
        if item.is_err() {
            // What was read is no longer a whole subtree: nothing more is given.
            self.dirs = None;
            self.next_dir = None;
            self.open.clear();
        }
        item.transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::jobs::Event;
    use crate::manifest::Manifest;
    use crate::manifest::fixtures::queued;

    /// Names whose byte order differs from the order of their components (' ' < '-' < '.' <
    /// '/' < '0'), so that directories' files come between one another.
    const NAMES: [&str; 6] = ["a", "a b", "a-b", "a.b", "a0", "b"];

    /// Every path of up to three components of `NAMES` under `/r`, a file at each (so that a
    /// path is both a file's, as a tombstone would be, and a directory's).
    fn paths() -> Vec<String> {
        let mut out = Vec::new();
        for a in NAMES {
            out.push(format!("/r/{a}"));
            for b in NAMES {
                out.push(format!("/r/{a}/{b}"));
                for c in NAMES.iter().take(3) {
                    out.push(format!("/r/{a}/{b}/{c}"));
                }
            }
        }
        out.push("/r0".into());
        out.push("/r b/x".into());
        out
    }

    fn read(m: &Manifest, root: &str, after: Option<&str>) -> Vec<String> {
        m.read(|txn| {
            super::Ordered::new(txn, root.as_bytes(), after.map(str::as_bytes))?
                .map(|item| {
                    let (path, _) = item?;
                    Ok(String::from_utf8(path).expect("the test's paths are UTF-8"))
                })
                .collect::<Result<Vec<_>, redb::Error>>()
        })
        .unwrap()
    }

    /// The records of any subtree, from any point, come in the byte order of their paths, and
    /// are exactly the subtree's.
    #[test]
    fn a_subtree_is_read_in_the_byte_order_of_its_paths_from_any_point() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = Manifest::open(&dir.path().join("m.redb")).unwrap();
        let mut all = paths();
        // Queued in an order of their own: directories are numbered as they come.
        all.reverse();
        let updates: Vec<_> = all.iter().map(|p| queued(p, Event::Created)).collect();
        m.apply(&updates).unwrap();
        all.sort();
        for root in ["/r", "/r/a", "/r/a/a b", "/r/a.b/a", "/r/b/a0/a", "/r/none"] {
            let subtree: Vec<String> = all
                .iter()
                .filter(|p| Path::new(p).starts_with(root))
                .cloned()
                .collect();
            assert_eq!(read(&m, root, None), subtree, "the subtree of {root}");
            for after in &subtree {
                let rest: Vec<String> = subtree.iter().filter(|p| *p > after).cloned().collect();
                assert_eq!(read(&m, root, Some(after)), rest, "{root} after {after}");
            }
        }
    }
}
