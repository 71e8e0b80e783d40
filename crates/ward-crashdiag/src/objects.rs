//! The object files mapped into this process (the executable and its shared libraries), found
//! once by [`install`](crate::install) for the crash record: where each is loaded, its build-id
//! and the identity of its file, so that the parent can name the frames inside each later and
//! tell a file that changed since. Reading their debug info is `symbolize`'s, not this module's.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use crate::record::MappedObject;

/// A file's identity, as the crash record holds it: `device:inode:size:mtime_ns`. A file
/// rewritten in place changes size or time, a file replaced by another changes inode.
pub(crate) fn file_identity(meta: &Metadata) -> String {
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    format!("{}:{}:{}:{mtime_ns}", meta.dev(), meta.ino(), meta.size())
}

/// Lowercase hexadecimal of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The GNU build-id (`NT_GNU_BUILD_ID`) among ELF notes laid out as in a `PT_NOTE` segment.
pub(crate) fn build_id_in_notes(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let name_size = word(notes, 0)? as usize;
        let desc_size = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_end = 12usize.checked_add(align4(name_size)?)?;
        let desc_end = name_end.checked_add(desc_size)?;
        let name = notes.get(12..12 + name_size)?;
        let desc = notes.get(name_end..desc_end)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(align4(desc_end)?..)?;
    }
    None
}

/// The objects loaded now, the executable first (named `exe`, the path of `/proc/self/exe`);
/// objects without a file (the vDSO) are left out.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub(crate) fn loaded(exe: &str) -> Vec<MappedObject> {
    use std::ffi::{CStr, c_int, c_void};

    /// What the callback gathers: the objects, and whether the first (the executable) was seen.
    struct Gathered<'a> {
        exe: &'a str,
        objects: Vec<MappedObject>,
        first: bool,
    }

    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `Gathered` that `loaded` passed to `dl_iterate_phdr`, which
        // calls back on the same thread while `loaded` waits for it.
        let gathered = unsafe { &mut *data.cast::<Gathered<'_>>() };
        // SAFETY: the C library passes a valid `dl_phdr_info` for the time of the call.
        let info = unsafe { &*info };
        let first = std::mem::replace(&mut gathered.first, false);
        let path = if first {
            gathered.exe.to_owned()
        } else if info.dlpi_name.is_null() {
            return 0;
        } else {
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string the loader keeps.
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        if !path.starts_with('/') {
            // The vDSO, or a library loaded by a relative name we could not find again.
            return 0;
        }
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: the loader's program headers of this object, `dlpi_phnum` of them, mapped for
        // as long as the object is loaded (at least the time of this call).
        let phdrs =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let bias = info.dlpi_addr;
        let (mut start, mut end, mut build_id) = (u64::MAX, 0u64, None);
        for ph in phdrs {
            match ph.p_type {
                libc::PT_LOAD => {
                    start = start.min(bias.wrapping_add(ph.p_vaddr));
                    end = end.max(bias.wrapping_add(ph.p_vaddr).wrapping_add(ph.p_memsz));
                }
                libc::PT_NOTE if build_id.is_none() => {
                    // SAFETY: a PT_NOTE segment lies inside a loaded segment of this object:
                    // `p_memsz` readable bytes at its address while the object is loaded.
                    let notes = unsafe {
                        std::slice::from_raw_parts(
                            bias.wrapping_add(ph.p_vaddr) as usize as *const u8,
                            ph.p_memsz as usize,
                        )
                    };
                    build_id = build_id_in_notes(notes).map(hex);
                }
                _ => {}
            }
        }
        if start == u64::MAX {
            return 0;
        }
        let file_id = std::fs::metadata(&path).ok().map(|m| file_identity(&m));
        gathered.objects.push(MappedObject {
            path,
            bias: format!("{bias:#x}"),
            start: format!("{start:#x}"),
            end: format!("{end:#x}"),
            build_id,
            file_id,
        });
        0
    }

    let mut gathered = Gathered {
        exe,
        objects: Vec::new(),
        first: true,
    };
    // SAFETY: `each` has the callback's signature and only reads what the loader hands it;
    // `gathered` outlives the call, which makes its callbacks before it returns.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut gathered).cast()) };
    gathered.objects
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub(crate) fn loaded(_exe: &str) -> Vec<MappedObject> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_ne_bytes());
        n.extend((desc.len() as u32).to_ne_bytes());
        n.extend(kind.to_ne_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn the_build_id_is_found_after_other_notes_and_garbage_finds_none() {
        let mut notes = note(b"GNU\0", 1, &[0; 16]); // NT_GNU_ABI_TAG
        notes.extend(note(b"GNU\0", 3, &[0xab, 0xcd, 0xef]));
        assert_eq!(build_id_in_notes(&notes), Some(&[0xab, 0xcd, 0xef][..]));
        assert_eq!(build_id_in_notes(&note(b"Go\0\0", 3, &[1])), None);
        let mut cut = notes.clone();
        cut.truncate(notes.len() - 8);
        assert_eq!(build_id_in_notes(&cut), None);
        assert_eq!(build_id_in_notes(&[0xff; 12]), None);
    }

    #[test]
    fn this_process_lists_its_executable_first_around_its_own_code() {
        let exe = std::env::current_exe().unwrap();
        let objects = loaded(&exe.to_string_lossy());
        let first = &objects[0];
        assert_eq!(first.path, exe.to_string_lossy());
        let here = this_process_lists_its_executable_first_around_its_own_code as *const () as u64;
        assert!(first.contains(here), "{first:?}");
        assert_eq!(
            first.file_id,
            Some(file_identity(&std::fs::metadata(&exe).unwrap()))
        );
        // Every object but the executable is a shared library with a path.
        assert!(
            objects[1..].iter().all(|o| o.path.contains(".so")),
            "{objects:#?}"
        );
    }
}
