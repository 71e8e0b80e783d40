//! The records of a subtree in the byte order of their paths, the order the comparison with the
//! disk reads them in. A directory's files sort by name under its number, and its
//! subdirectories by name and `/` under it too (`keys`): each directory's entries are two sorted
//! ranges, merged here, and a subdirectory's entries come where its name does, read from a stack
//! of the directories open. Not the comparison itself (`reconcile`).

use std::iter::Peekable;
use std::ops::Bound;

use redb::{ReadOnlyTable, StorageError};

use super::keys::{self, DIRS, Numbers, dir_key, file_key, split};
use super::store::RECORDS;

/// A stored path and its record's bytes.
pub(super) type Stored = (Vec<u8>, Vec<u8>);
/// What the records are read as, in the byte order of the paths.
pub(super) type Item = Result<Stored, StorageError>;

type Entries<V> = Peekable<redb::Range<'static, &'static [u8], V>>;

/// The records of one subtree: the subtree's root itself, if it is a file the manifest knows,
/// then those below it, after a given path if one is.
pub(super) struct Ordered {
    records: ReadOnlyTable<&'static [u8], &'static [u8]>,
    dirs: ReadOnlyTable<&'static [u8], u64>,
    /// The directories whose entries are being read, each inside the one before it.
    open: Vec<Open>,
    /// The root's own record, given first.
    root: Option<Stored>,
}

/// A directory whose entries are being read.
struct Open {
    /// Its path and a `/`.
    path: Vec<u8>,
    /// Its number's encoding, which its entries' keys start with.
    number: Vec<u8>,
    files: Entries<&'static [u8]>,
    subdirs: Entries<u64>,
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
        let mut numbers = Numbers::default();
        let (_, name) = split(root);
        let mut root_record = None;
        if !name.is_empty()
            && after.is_none_or(|after| root > after)
            && let Some(key) = keys::existing(&dirs, &mut numbers, root)?
            && let Some(value) = records.get(key.as_slice())?
        {
            root_record = Some((root.to_vec(), value.value().to_vec()));
        }
        let mut ordered = Ordered {
            records,
            dirs,
            open: Vec::new(),
            root: root_record,
        };
        let under = dir_key(root);
        let Some(number) = numbers.existing(&ordered.dirs, &under)? else {
            return Ok(ordered);
        };
        // Below `under`, what follows `after`: in each directory that holds it, the entries
        // named after its part of `after` (the subdirectory holding it is opened in turn).
        let mut rest = after.and_then(|after| after.strip_prefix(under.as_slice()));
        let mut path = under;
        let mut number = number;
        loop {
            let entry = rest.map(|rest| match rest.iter().position(|&b| b == b'/') {
                Some(i) => &rest[..=i],
                None => rest,
            });
            ordered.open(path.clone(), number, rest, entry)?;
            let Some(entry) = entry.filter(|e| e.ends_with(b"/")) else {
                break;
            };
            let Some(child) = ordered.dirs.get(file_key(number, entry).as_slice())? else {
                break;
            };
            number = child.value();
            path.extend_from_slice(entry);
            rest = rest.map(|rest| &rest[entry.len()..]);
        }
        Ok(ordered)
    }

    /// Starts reading the entries of the directory at `path` numbered `number`: its files named
    /// after `files_after` and its subdirectories named after `dirs_after`, or all of them.
    fn open(
        &mut self,
        path: Vec<u8>,
        number: u64,
        files_after: Option<&[u8]>,
        dirs_after: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let prefix = file_key(number, b"");
        let from = |after: Option<&[u8]>| match after {
            Some(name) => Bound::Excluded(file_key(number, name)),
            None => Bound::Included(prefix.clone()),
        };
        let files_from = from(files_after);
        let dirs_from = from(dirs_after);
        let files = self
            .records
            .range::<&[u8]>((files_from.as_ref().map(Vec::as_slice), Bound::Unbounded))?
            .peekable();
        let subdirs = self
            .dirs
            .range::<&[u8]>((dirs_from.as_ref().map(Vec::as_slice), Bound::Unbounded))?
            .peekable();
        self.open.push(Open {
            path,
            number: prefix,
            files,
            subdirs,
        });
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Stored>, StorageError> {
        if let Some(root) = self.root.take() {
            return Ok(Some(root));
        }
        loop {
            let Some(top) = self.open.last_mut() else {
                return Ok(None);
            };
            let file = name_of(&mut top.files, &top.number)?;
            let subdir = name_of(&mut top.subdirs, &top.number)?;
            // A subdirectory's name ends in `/`, so it sorts among the files' names as its
            // entries' paths do.
            let descend = match (&file, &subdir) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(file), Some(subdir)) => subdir < file,
            };
            if descend {
                let subdir = subdir.expect("matched");
                let (_, child) = top.subdirs.next().expect("peeked")?;
                let mut path = top.path.clone();
                path.extend_from_slice(&subdir);
                self.open(path, child.value(), None, None)?;
                continue;
            }
            let Some(name) = file else {
                self.open.pop();
                continue;
            };
            let (_, value) = top.files.next().expect("peeked")?;
            let mut path = top.path.clone();
            path.extend_from_slice(&name);
            return Ok(Some((path, value.value().to_vec())));
        }
    }
}

/// The name of the next of `entries` if it is one of the directory whose keys start with
/// `number`; an error it meets is taken out and returned.
fn name_of<V: redb::Value + 'static>(
    entries: &mut Entries<V>,
    number: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    match entries.peek() {
        Some(Ok((key, _))) => Ok(key.value().strip_prefix(number).map(<[u8]>::to_vec)),
        Some(Err(_)) => match entries.next() {
            Some(Err(e)) => Err(e),
            _ => unreachable!("peeked an error"),
        },
        None => Ok(None),
    }
}

impl Iterator for Ordered {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let item = self.step();
        if item.is_err() {
            // What was read is no longer a whole subtree: nothing more is given.
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
