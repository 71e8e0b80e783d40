//! The record codec: a `files` value as bytes and back, and an event as its byte. Not the
//! tables those bytes live in (`store`), nor the `pending` entries (an event byte and a rename's
//! old path, written by `apply` and read by `Manifest::pending`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{FileMeta, Record};
use crate::jobs::Event;

const RECORD_VERSION: u8 = 1;

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

pub(super) fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(51);
    out.push(RECORD_VERSION);
    out.push(u8::from(r.processed.is_some()) | (u8::from(r.last_ok) << 1));
    out.push(encode_event(r.event));
    out.extend_from_slice(&r.seq.to_le_bytes());
    if let Some(m) = r.processed {
        out.extend_from_slice(&m.size.to_le_bytes());
        out.extend_from_slice(&m.mtime_ns.to_le_bytes());
        out.extend_from_slice(&m.ctime_ns.to_le_bytes());
        out.extend_from_slice(&m.ino.to_le_bytes());
        out.extend_from_slice(&m.dev.to_le_bytes());
    }
    out
}

pub(super) fn decode_record(b: &[u8]) -> Option<Record> {
    let (&version, rest) = b.split_first()?;
    if version != RECORD_VERSION || rest.len() < 10 {
        return None;
    }
    let flags = rest[0];
    // A record it cannot read is no record: its path is processed again (at least once).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::fixtures::meta;

    /// Regression: an event byte no version of ward writes was read as a modification, so a
    /// damaged record passed for a real one.
    #[test]
    fn a_record_with_an_unknown_event_byte_is_no_record() {
        let record = Record {
            processed: Some(meta(3)),
            last_ok: true,
            event: Event::Renamed,
            seq: 7,
        };
        let mut bytes = encode_record(&record);
        assert_eq!(bytes.len(), 51, "a record with a version is 51 bytes");
        assert_eq!(decode_record(&bytes), Some(record));
        bytes[2] = 9;
        assert_eq!(decode_record(&bytes), None);
        assert_eq!(decode_event(1), Some(Event::Modified));
        assert_eq!(decode_event(4), None);
    }
}
