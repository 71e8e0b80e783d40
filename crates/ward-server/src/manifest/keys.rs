//! Where a path's record is kept. Each directory is one entry under its parent (`dirs`: the
//! parent's number and the directory's name → its number; `dir_paths`: back), and a file's key
//! in `records` is its directory's number and its name: no part of a path is stored twice,
//! however many files and directories share it. Not the records themselves (`record`), nor
//! reading them in path order (`ordered`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use redb::{ReadableTable, TableDefinition};

/// A directory's parent's number and its name with a `/` at its end (so that a directory's
/// entries sort as its files' paths do among its files' names) → its number. Number 0 is where
/// paths start: `/` is the entry named `/` under it.
pub(super) const DIRS: TableDefinition<&[u8], u64> = TableDefinition::new("dirs");
/// A directory's number → its entry's key in `dirs`.
pub(super) const DIR_PATHS: TableDefinition<u64, &[u8]> = TableDefinition::new("dir_paths");

/// `path` split into its directory, `/` included, and its name: `/a/b` → (`/a/`, `b`).
pub(super) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.split_at(i + 1),
        None => (&[], path),
    }
}

/// `dir` with one `/` at its end.
pub(super) fn dir_key(dir: &[u8]) -> Vec<u8> {
    let mut key = dir.to_vec();
    if !key.ends_with(b"/") {
        key.push(b'/');
    }
    key
}

/// The key of the entry named `name` (a file's name, or a directory's with its `/`) under the
/// directory numbered `dir`. A number's encoding is self-delimiting, so the keys of one
/// directory's entries are exactly those that start with its encoding, sorted by name; and it
/// sorts as the numbers do, so the entries of a directory numbered after every other one (a new
/// one) go to the end of the table.
pub(super) fn file_key(dir: u64, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + name.len());
    put_number(&mut key, dir);
    key.extend_from_slice(name);
    key
}

/// The entries of `dir` (a directory's path and a `/`) from the top: `/a/` → `/`, `a/`.
fn components(dir: &[u8]) -> impl Iterator<Item = &[u8]> {
    dir.split_inclusive(|&b| b == b'/')
}

/// The directories' numbers a group of writes (or reads) has looked up, so that a path's
/// ancestors are looked up once per group, not once per file.
#[derive(Default)]
pub(super) struct Numbers {
    known: HashMap<Vec<u8>, u64>,
}

impl Numbers {
    /// The number of `dir` (a path and a `/`, or empty: number 0), if it has one.
    pub(super) fn existing(
        &mut self,
        dirs: &impl ReadableTable<&'static [u8], u64>,
        dir: &[u8],
    ) -> Result<Option<u64>, redb::StorageError> {
        if let Some(&n) = self.known.get(dir) {
            return Ok(Some(n));
        }
        let mut n = 0;
        for entry in components(dir) {
            match dirs.get(file_key(n, entry).as_slice())? {
                Some(child) => n = child.value(),
                None => return Ok(None),
            }
        }
        self.known.insert(dir.to_vec(), n);
        Ok(Some(n))
    }

    /// The number of `dir`, numbering it and the ancestors it lacks.
    pub(super) fn make(
        &mut self,
        dirs: &mut redb::Table<'_, &'static [u8], u64>,
        dir_paths: &mut redb::Table<'_, u64, &'static [u8]>,
        dir: &[u8],
    ) -> Result<u64, redb::StorageError> {
        if let Some(&n) = self.known.get(dir) {
            return Ok(n);
        }
        let mut n = 0;
        for entry in components(dir) {
            let key = file_key(n, entry);
            let found = dirs.get(key.as_slice())?.map(|child| child.value());
            n = match found {
                Some(child) => child,
                None => {
                    let child = dir_paths.last()?.map_or(1, |(last, _)| last.value() + 1);
                    dirs.insert(key.as_slice(), child)?;
                    dir_paths.insert(child, key.as_slice())?;
                    child
                }
            };
        }
        self.known.insert(dir.to_vec(), n);
        Ok(n)
    }
}

/// The key of `path`'s record, if its directory has a number.
pub(super) fn existing(
    dirs: &impl ReadableTable<&'static [u8], u64>,
    numbers: &mut Numbers,
    path: &[u8],
) -> Result<Option<Vec<u8>>, redb::StorageError> {
    let (dir, name) = split(path);
    Ok(numbers.existing(dirs, dir)?.map(|n| file_key(n, name)))
}

/// The key of `path`'s record, numbering its directory if it has no number yet.
pub(super) fn make(
    dirs: &mut redb::Table<'_, &'static [u8], u64>,
    dir_paths: &mut redb::Table<'_, u64, &'static [u8]>,
    numbers: &mut Numbers,
    path: &[u8],
) -> Result<Vec<u8>, redb::StorageError> {
    let (dir, name) = split(path);
    Ok(file_key(numbers.make(dirs, dir_paths, dir)?, name))
}

/// The paths of directories by number, read from `dir_paths` once per group of reads.
#[derive(Default)]
pub(super) struct Paths {
    known: HashMap<u64, Vec<u8>>,
}

impl Paths {
    /// The path whose record `key` names; `None` if its directory has no path (a damaged store).
    pub(super) fn of(
        &mut self,
        dir_paths: &impl ReadableTable<u64, &'static [u8]>,
        key: &[u8],
    ) -> Result<Option<PathBuf>, redb::StorageError> {
        let Some((n, name)) = take_number(key) else {
            return Ok(None);
        };
        let Some(dir) = self.dir(dir_paths, n)? else {
            return Ok(None);
        };
        let mut path = dir.to_vec();
        path.extend_from_slice(name);
        Ok(Some(PathBuf::from(OsStr::from_bytes(&path))))
    }

    /// The path of the directory numbered `n`, with its `/`.
    fn dir(
        &mut self,
        dir_paths: &impl ReadableTable<u64, &'static [u8]>,
        n: u64,
    ) -> Result<Option<&[u8]>, redb::StorageError> {
        if let Entry::Vacant(vacant) = self.known.entry(n) {
            // Up the parents to number 0, a bounded number of steps: a damaged store's loop
            // ends there too.
            let mut entries = Vec::new();
            let mut at = n;
            while at != 0 {
                let Some(entry) = dir_paths.get(at)? else {
                    return Ok(None);
                };
                let Some((parent, name)) = take_number(entry.value()) else {
                    return Ok(None);
                };
                entries.push(name.to_vec());
                if entries.len() > 4096 {
                    return Ok(None);
                }
                at = parent;
            }
            vacant.insert(entries.into_iter().rev().flatten().collect());
        }
        Ok(self.known.get(&n).map(Vec::as_slice))
    }
}

/// Appends `n` as a key's directory number: big-endian in one to nine bytes, the count of
/// leading one bits of the first byte saying how many follow it (`0xxxxxxx`: none, `10xxxxxx`:
/// one, ... `11111111`: eight), each number in the fewest bytes that hold it. So the encodings
/// sort as the numbers do, unlike LEB128's, whose low bits come first: with LEB128 the records of
/// each new directory were inserted all over the table, and redb, which splits a full page in
/// two halves, left most pages half empty. Written here, as LEB128 is: two short functions, and
/// the layout of the store must not change with a dependency's version.
pub(super) fn put_number(out: &mut Vec<u8>, n: u64) {
    // With `extra` bytes after the first, the first keeps 7 - extra bits: 7 + 7 * extra in all.
    match (0..8).find(|&extra| n >> (7 + 7 * extra) == 0) {
        Some(extra) => {
            let start = out.len();
            out.extend_from_slice(&n.to_be_bytes()[7 - extra..]);
            out[start] |= !(0xff_u8 >> extra);
        }
        None => {
            out.push(0xff);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// The directory number `bytes` starts with (as [`put_number`] writes it) and what follows it;
/// `None` if it is cut, or not in its fewest bytes (a damaged store).
pub(super) fn take_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, _) = bytes.split_first()?;
    let extra = first.leading_ones() as usize;
    let (number, rest) = bytes.split_at_checked(extra + 1)?;
    // The bits of the first byte after its marker (none when it is 0xfe or 0xff).
    let high = u64::from(first) & (0x7f_u64 >> extra);
    let n = number[1..]
        .iter()
        .fold(high, |n, &b| (n << 8) | u64::from(b));
    let fewest = extra == 0 || n >> (7 * extra) != 0;
    fewest.then_some((n, rest))
}

/// Appends `n` in LEB128: seven bits a byte, the high bit set on all but the last. Written
/// here: the encoder and decoder are a dozen lines, less than a dependency's import.
pub(super) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The number `bytes` starts with and what follows it; `None` if it is cut or too long.
pub(super) fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_no_encoding_starts_another() {
        let numbers = [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        let encoded: Vec<Vec<u8>> = numbers
            .iter()
            .map(|&n| {
                let mut out = Vec::new();
                put_varint(&mut out, n);
                out
            })
            .collect();
        for (n, bytes) in numbers.iter().zip(&encoded) {
            let mut with_name = bytes.clone();
            with_name.extend_from_slice(b"name");
            assert_eq!(take_varint(&with_name), Some((*n, &b"name"[..])));
            for other in &encoded {
                assert!(other == bytes || !other.starts_with(bytes));
            }
        }
        assert_eq!(take_varint(&[0x80, 0x80]), None, "a cut number");
        assert_eq!(take_varint(&[0xff; 11]), None, "a number too long");
    }

    /// Directory numbers in keys: each decodes to itself with what follows, none starts
    /// another, and their order is the numbers' order, at every change of length.
    #[test]
    fn key_numbers_round_trip_sort_as_numbers_and_none_starts_another() {
        let mut numbers: Vec<u64> = vec![0, 1, u64::MAX - 1, u64::MAX];
        for bits in (7..64).step_by(7) {
            let edge = 1u64 << bits;
            numbers.extend([edge - 2, edge - 1, edge, edge + 1]);
        }
        numbers.sort_unstable();
        let encoded: Vec<Vec<u8>> = numbers
            .iter()
            .map(|&n| {
                let mut out = Vec::new();
                put_number(&mut out, n);
                out
            })
            .collect();
        for (n, bytes) in numbers.iter().zip(&encoded) {
            let mut with_name = bytes.clone();
            with_name.extend_from_slice(b"name");
            assert_eq!(take_number(&with_name), Some((*n, &b"name"[..])), "{n}");
            for other in &encoded {
                assert!(other == bytes || !other.starts_with(bytes), "{n}");
            }
        }
        assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
        assert_eq!(encoded[1], [1]);
        assert_eq!(encoded.last().map(Vec::len), Some(9));
        assert_eq!(take_number(&[0xc0, 0x01]), None, "a cut number");
        assert_eq!(take_number(&[0x80, 0x05]), None, "5 in two bytes");
        assert_eq!(take_number(&[]), None);
    }

    #[test]
    fn a_path_splits_into_its_directory_and_name() {
        assert_eq!(split(b"/a/b/c"), (&b"/a/b/"[..], &b"c"[..]));
        assert_eq!(split(b"/c"), (&b"/"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(dir_key(b"/a"), b"/a/");
        assert_eq!(dir_key(b"/"), b"/");
        let entries: Vec<&[u8]> = components(b"/a/b c/").collect();
        assert_eq!(entries, [&b"/"[..], b"a/", b"b c/"]);
        assert_eq!(components(b"").count(), 0);
    }
}
