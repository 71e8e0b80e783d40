//! The record codec: a `files` value as bytes and back, and an event as its byte. Not the
//! tables those bytes live in (`store`), nor the `pending` entries (an event byte and a rename's
//! old path, written by `apply` and read by `Manifest::pending`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{FileMeta, Record};
use crate::jobs::Event;

use super::keys::{put_varint, take_varint};

/// The layout of a record, in the high half of its first byte.
const RECORD_VERSION: u8 = 2;
/// The layout of the first stores, whose records `migrate` reads once.
const FIRST_VERSION: u8 = 1;

pub(super) fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

pub(super) fn encode_event(event: Event) -> u8 {
    match event {
        Event::Created => 0,
        Event::Modified => 1,
        Event::Removed => 2,
        Event::Renamed => 3,
    }
}

/// The event of `byte`; `None` for a byte no version of ward writes (a damaged store).
pub(super) fn decode_event(byte: u8) -> Option<Event> {
    match byte {
        0 => Some(Event::Created),
        1 => Some(Event::Modified),
        2 => Some(Event::Removed),
        3 => Some(Event::Renamed),
        _ => None,
    }
}

/// A record as bytes: its version, outcome, whether a version was processed and the event in
/// one byte, then the sequence number, and the processed version's size, mtime (eight bytes),
/// ctime (as its distance from the mtime, usually none), inode and device. The numbers are
/// LEB128: a record is about 20 bytes, and a million of them are what the manifest holds.
pub(super) fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.push(
        (RECORD_VERSION << 4)
            | (u8::from(r.last_ok) << 3)
            | (u8::from(r.processed.is_some()) << 2)
            | encode_event(r.event),
    );
    put_varint(&mut out, r.seq);
    if let Some(m) = r.processed {
        put_varint(&mut out, m.size);
        out.extend_from_slice(&m.mtime_ns.to_le_bytes());
        put_varint(&mut out, zigzag(m.ctime_ns.wrapping_sub(m.mtime_ns)));
        put_varint(&mut out, m.ino);
        put_varint(&mut out, m.dev);
    }
    out
}

/// The record `b` holds; `None` for bytes no version of ward writes (a damaged store). A record
/// it cannot read is no record: its path is processed again (at least once).
pub(super) fn decode_record(b: &[u8]) -> Option<Record> {
    let (&head, rest) = b.split_first()?;
    if head >> 4 != RECORD_VERSION {
        return None;
    }
    let event = decode_event(head & 3)?;
    let (seq, rest) = take_varint(rest)?;
    let processed = if head & 4 != 0 {
        let (size, rest) = take_varint(rest)?;
        let (mtime, rest) = rest.split_first_chunk::<8>()?;
        let mtime_ns = i64::from_le_bytes(*mtime);
        let (ctime_delta, rest) = take_varint(rest)?;
        let (ino, rest) = take_varint(rest)?;
        let (dev, _) = take_varint(rest)?;
        Some(FileMeta {
            size,
            mtime_ns,
            ctime_ns: mtime_ns.wrapping_add(unzigzag(ctime_delta)),
            ino,
            dev,
        })
    } else {
        None
    };
    Some(Record {
        processed,
        last_ok: head & 8 != 0,
        event,
        seq,
    })
}

/// A record of the first layout (fixed-width numbers), read only to migrate a store.
pub(super) fn decode_first_record(b: &[u8]) -> Option<Record> {
    let (&version, rest) = b.split_first()?;
    if version != FIRST_VERSION || rest.len() < 10 {
        return None;
    }
    let flags = rest[0];
    let event = decode_event(rest[1])?;
    let word = |i: usize| {
        rest.get(i..i + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    let seq = word(2)?;
    let processed = if flags & 1 != 0 {
        Some(FileMeta {
            size: word(10)?,
            mtime_ns: word(18)? as i64,
            ctime_ns: word(26)? as i64,
            ino: word(34)?,
            dev: word(42)?,
        })
    } else {
        None
    };
    Some(Record {
        processed,
        last_ok: flags & 2 != 0,
        event,
        seq,
    })
}

/// A signed number as an unsigned one that is small when it is near zero either way.
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::fixtures::meta;

    /// Regression: an event byte no version of ward writes was read as a modification, so a
    /// damaged record passed for a real one. (A record's event now has two bits, all four
    /// meaning one; a pending job's is still a byte.)
    #[test]
    fn an_unknown_event_byte_or_layout_is_no_record() {
        assert_eq!(decode_event(1), Some(Event::Modified));
        assert_eq!(decode_event(4), None);
        let mut bytes = encode_record(&Record {
            processed: None,
            last_ok: true,
            event: Event::Renamed,
            seq: 7,
        });
        assert_eq!(decode_record(&bytes).map(|r| r.event), Some(Event::Renamed));
        bytes[0] = (bytes[0] & 0x0f) | ((RECORD_VERSION + 1) << 4);
        assert_eq!(decode_record(&bytes), None, "a layout it does not know");
        bytes[0] = (bytes[0] & 0x0f) | (FIRST_VERSION << 4);
        assert_eq!(
            decode_record(&bytes),
            None,
            "the first layout is only migrated"
        );
    }

    #[test]
    fn records_round_trip_in_a_few_bytes() {
        let now = 1_780_000_000_123_456_789;
        let cases = [
            Record {
                processed: Some(FileMeta {
                    size: 1,
                    mtime_ns: now,
                    ctime_ns: now,
                    ino: 3_000_000,
                    dev: 2049,
                }),
                last_ok: true,
                event: Event::Created,
                seq: 1_000_000,
            },
            Record {
                processed: Some(FileMeta {
                    size: u64::MAX,
                    mtime_ns: i64::MIN,
                    ctime_ns: i64::MAX,
                    ino: u64::MAX,
                    dev: u64::MAX,
                }),
                last_ok: false,
                event: Event::Renamed,
                seq: u64::MAX,
            },
            Record {
                processed: Some(meta(3)),
                last_ok: false,
                event: Event::Modified,
                seq: 0,
            },
            Record {
                processed: None,
                last_ok: true,
                event: Event::Removed,
                seq: 9,
            },
        ];
        for record in &cases {
            let bytes = encode_record(record);
            assert_eq!(decode_record(&bytes).as_ref(), Some(record));
            assert_eq!(
                decode_record(&bytes[..bytes.len() - 1]),
                None,
                "a cut record"
            );
        }
        assert_eq!(
            encode_record(&cases[0]).len(),
            20,
            "a file's record: 1 + 3 (seq) + 1 (size) + 8 (mtime) + 1 (ctime) + 4 (inode) + 2 (device)"
        );
    }
}
