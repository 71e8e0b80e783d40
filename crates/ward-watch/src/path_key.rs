//! Paths as ordered-map keys compared by their bytes, with `/` before every other byte. Not the
//! maps themselves (`pending.rs`).
//!
//! std orders paths component by component, parsing both paths at each comparison. A burst's
//! events look their paths up in the pending set several times each (and an ancestor at a time
//! while a rescan is pending), so those comparisons were most of the watcher thread's own time
//! in a `perf record` of the server during `cargo xtask bench --only nats`. Compared as bytes
//! with `/` ranked first, the order is the same for the paths the watcher makes (absolute, no
//! `.`, no repeated or trailing `/`): a name that ends first, like a separator, sorts before any
//! longer one. So a directory's descendants still follow it, contiguous, before its next
//! sibling.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A borrowed path as a key: what a map of [`KeyBuf`] is searched with.
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct Key(Path);

impl Key {
    pub(crate) fn new(path: &Path) -> &Key {
        // SAFETY: `Key` is `repr(transparent)` over `Path`, so both references have the same
        // layout and metadata, and the lifetime is kept.
        unsafe { &*(path as *const Path as *const Key) }
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_os_str().as_bytes()
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.bytes(), other.bytes());
        // No path holds a NUL, so ranking `/` as 0 makes it sort first and ties with nothing.
        let rank = |byte: u8| if byte == b'/' { 0 } else { byte };
        match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(at) => rank(a[at]).cmp(&rank(b[at])),
            None => a.len().cmp(&b.len()),
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Key {}

/// An owned path as a key, ordered as its [`Key`].
#[derive(Debug, Clone)]
pub(crate) struct KeyBuf(PathBuf);

impl KeyBuf {
    pub(crate) fn new(path: PathBuf) -> KeyBuf {
        KeyBuf(path)
    }

    pub(crate) fn as_path(&self) -> &Path {
        &self.0
    }
}

impl Borrow<Key> for KeyBuf {
    fn borrow(&self) -> &Key {
        Key::new(&self.0)
    }
}

impl Ord for KeyBuf {
    fn cmp(&self, other: &Self) -> Ordering {
        Key::new(&self.0).cmp(Key::new(&other.0))
    }
}

impl PartialOrd for KeyBuf {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for KeyBuf {
    fn eq(&self, other: &Self) -> bool {
        Key::new(&self.0) == Key::new(&other.0)
    }
}

impl Eq for KeyBuf {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of a set of paths made to trip a byte order (`-`, `.` and `0` sort before `/`
    /// as bytes; names that are prefixes of others) compares as std's component order does.
    #[test]
    fn keys_sort_as_their_paths_components_do() {
        let names = ["a", "a-b", "a.b", "a0", "ab", "b", "\u{e9}"];
        let mut paths: Vec<PathBuf> = vec![PathBuf::from("/"), PathBuf::from("/r")];
        for x in names {
            paths.push(Path::new("/r").join(x));
            for y in names {
                paths.push(Path::new("/r").join(x).join(y));
                paths.push(Path::new("/r").join(x).join(y).join("z"));
            }
        }
        for a in &paths {
            for b in &paths {
                assert_eq!(
                    Key::new(a).cmp(Key::new(b)),
                    a.cmp(b),
                    "{} against {}",
                    a.display(),
                    b.display()
                );
            }
        }
    }

    #[test]
    fn a_directorys_subtree_follows_it_before_its_next_sibling() {
        let mut keys: Vec<KeyBuf> = ["/r/a.b", "/r/a/z", "/r/a", "/r/a-b", "/r/a/b/c", "/r/b"]
            .into_iter()
            .map(|p| KeyBuf::new(p.into()))
            .collect();
        keys.sort();
        let sorted: Vec<&Path> = keys.iter().map(KeyBuf::as_path).collect();
        assert_eq!(
            sorted,
            ["/r/a", "/r/a/b/c", "/r/a/z", "/r/a-b", "/r/a.b", "/r/b"].map(Path::new)
        );
    }
}
