//! Where a path's record is kept: each directory is stored once, under a number (`dirs`: a
//! directory's path → its number, `dir_paths`: back), and a file's key in `records` is its
//! directory's number and its name. A path's directories are then not repeated in every key
//! of a tree's files, nor in the since-index's values. Not the records themselves (`record`),
//! nor reading them in path order (`ordered`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use redb::{ReadableTable, TableDefinition};

/// A directory's path, with a `/` at its end (so that the keys sort as its files' paths do) →
/// its number.
pub(super) const DIRS: TableDefinition<&[u8], u64> = TableDefinition::new("dirs");
/// A directory's number → its path, with its `/`.
pub(super) const DIR_PATHS: TableDefinition<u64, &[u8]> = TableDefinition::new("dir_paths");

/// `path` split into its directory, `/` included, and its name: `/a/b` → (`/a/`, `b`).
pub(super) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => path.split_at(i + 1),
        None => (&[], path),
    }
}

/// `dir` as a key of `dirs`: with one `/` at its end.
pub(super) fn dir_key(dir: &[u8]) -> Vec<u8> {
    let mut key = dir.to_vec();
    if !key.ends_with(b"/") {
        key.push(b'/');
    }
    key
}

/// The key of a file named `name` in the directory numbered `dir`. A number's encoding is
/// self-delimiting, so the keys of one directory's files are exactly those that start with its
/// encoding, sorted by name.
pub(super) fn file_key(dir: u64, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + name.len());
    put_varint(&mut key, dir);
    key.extend_from_slice(name);
    key
}

/// The key of `path`'s record, if its directory has a number.
pub(super) fn existing(
    dirs: &impl ReadableTable<&'static [u8], u64>,
    path: &[u8],
) -> Result<Option<Vec<u8>>, redb::StorageError> {
    let (dir, name) = split(path);
    Ok(dirs
        .get(dir_key(dir).as_slice())?
        .map(|id| file_key(id.value(), name)))
}

/// The key of `path`'s record, numbering its directory if it has no number yet.
pub(super) fn make(
    dirs: &mut redb::Table<'_, &'static [u8], u64>,
    dir_paths: &mut redb::Table<'_, u64, &'static [u8]>,
    path: &[u8],
) -> Result<Vec<u8>, redb::StorageError> {
    let (dir, name) = split(path);
    let dir = dir_key(dir);
    if let Some(id) = dirs.get(dir.as_slice())? {
        return Ok(file_key(id.value(), name));
    }
    let id = dir_paths.last()?.map_or(0, |(id, _)| id.value() + 1);
    dirs.insert(dir.as_slice(), id)?;
    dir_paths.insert(id, dir.as_slice())?;
    Ok(file_key(id, name))
}

/// The path whose record `key` names; `None` if its directory has no path (a damaged store).
pub(super) fn path_of_key(
    dir_paths: &impl ReadableTable<u64, &'static [u8]>,
    key: &[u8],
) -> Result<Option<PathBuf>, redb::StorageError> {
    let Some((id, name)) = take_varint(key) else {
        return Ok(None);
    };
    Ok(dir_paths.get(id)?.map(|dir| {
        let mut path = dir.value().to_vec();
        path.extend_from_slice(name);
        PathBuf::from(OsStr::from_bytes(&path))
    }))
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

    #[test]
    fn a_path_splits_into_its_directory_and_name() {
        assert_eq!(split(b"/a/b/c"), (&b"/a/b/"[..], &b"c"[..]));
        assert_eq!(split(b"/c"), (&b"/"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(dir_key(b"/a"), b"/a/");
        assert_eq!(dir_key(b"/"), b"/");
    }
}
