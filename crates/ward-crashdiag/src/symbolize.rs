//! Naming a native crash's frames after the death: which mapped object each recorded address
//! lies in, and, with the `symbolize` feature, its function, source file and line (inlined calls
//! included) from that object's debug info, read here in the parent with the `addr2line` and
//! `object` crates. What cannot be named stays a raw address, with a note saying why.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::{MappedObject, SignalEntry, parse_hex};

/// How long [`symbolize`] goes on naming one crash's frames, all objects together; the frames
/// left then stay raw.
#[cfg(feature = "symbolize")]
const TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One recorded return address of a native crash, named where its object's debug info allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeFrame {
    /// The address as recorded, hexadecimal.
    pub address: String,
    /// The object it lies in (the executable or a shared library), if the record says.
    pub object: Option<String>,
    /// The address relative to that object's load bias, hexadecimal: what `addr2line -e
    /// <object>` takes.
    pub offset: Option<String>,
    /// The source-level frames at this address, innermost first: the inlined calls, then the
    /// function they were inlined into. Empty when it could not be named.
    pub symbols: Vec<SourceFrame>,
}

/// A function and where in its source, for one (possibly inlined) call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFrame {
    /// The function's name, demangled.
    pub function: Option<String>,
    /// The source file, as the debug info names it (usually absolute).
    pub file: Option<String>,
    /// The line in `file`.
    pub line: Option<u32>,
    /// The column in `line`.
    pub column: Option<u32>,
}

/// What [`symbolize`] made of a recorded backtrace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Symbolization {
    /// One per recorded address, in the record's order (innermost first).
    pub frames: Vec<NativeFrame>,
    /// What could not be named, and why (an object replaced since the crash, no debug info,
    /// the feature left out).
    pub notes: Vec<String>,
}

/// Names the frames of a fatal-signal entry: for each address, the object it lies in and, with
/// the `symbolize` feature, the function, file and line from that object's debug info (DWARF
/// in the file, or in `/usr/lib/debug/.build-id/` for a library whose debug info was split
/// off), falling back to its symbol table for a name without a line.
///
/// Never fails: an object whose frames cannot be named leaves them raw and says why in
/// [`Symbolization::notes`]. An object whose build-id (or, without one, whose file's inode,
/// size or modification time) differs from what the crashed process recorded has been replaced
/// since: its frames stay raw rather than be named from the wrong file. Bounded: at most
/// 256 MiB of one object's debug info is read (the file is read, not mapped, so a file cut
/// short under the reader is an error, not a SIGBUS), and no object is opened nor frame looked
/// up once ten seconds have passed (the object being read then is read to its end).
pub fn symbolize(signal: &SignalEntry) -> Symbolization {
    let objects = objects_of(signal);
    let pc = signal.pc.as_deref().and_then(parse_hex);
    let mut frames = Vec::with_capacity(signal.frames.len());
    // Per frame: its object's index and the address to look up in that object's file.
    let mut probes: Vec<Option<(usize, u64)>> = Vec::with_capacity(signal.frames.len());
    for raw in &signal.frames {
        let mut frame = NativeFrame {
            address: raw.clone(),
            ..NativeFrame::default()
        };
        let found = parse_hex(raw).and_then(|address| {
            let index = objects.iter().position(|o| o.contains(address))?;
            let bias = parse_hex(&objects[index].bias)?;
            let offset = address.wrapping_sub(bias);
            frame.object = Some(objects[index].path.clone());
            frame.offset = Some(format!("{offset:#x}"));
            // A return address is the instruction after the call: look up the call itself.
            // The interrupted instruction is where it is.
            let probe = if Some(address) == pc {
                offset
            } else {
                offset.saturating_sub(1)
            };
            Some((index, probe))
        });
        probes.push(found);
        frames.push(frame);
    }
    let mut notes = Vec::new();
    name_frames(&objects, &probes, &mut frames, &mut notes);
    Symbolization { frames, notes }
}

/// The objects the entry names; for a record written before objects were recorded, the
/// executable alone, from its base and end.
fn objects_of(signal: &SignalEntry) -> Vec<MappedObject> {
    if !signal.objects.is_empty() {
        return signal.objects.clone();
    }
    if signal.exe.is_empty() || parse_hex(&signal.exe_end).is_none_or(|end| end == 0) {
        return Vec::new();
    }
    // Only PIE executables start at their bias; with base 0 the frames' own addresses are
    // looked up, so any start will do.
    vec![MappedObject {
        path: signal.exe.clone(),
        bias: signal.exe_base.clone(),
        start: signal.exe_base.clone(),
        end: signal.exe_end.clone(),
        build_id: None,
        file_id: None,
    }]
}

#[cfg(not(feature = "symbolize"))]
fn name_frames(
    _objects: &[MappedObject],
    probes: &[Option<(usize, u64)>],
    _frames: &mut [NativeFrame],
    notes: &mut Vec<String>,
) {
    if probes.iter().any(Option::is_some) {
        notes.push(
            "frames not named: ward-crashdiag was built without its `symbolize` feature".into(),
        );
    }
}

#[cfg(feature = "symbolize")]
fn name_frames(
    objects: &[MappedObject],
    probes: &[Option<(usize, u64)>],
    frames: &mut [NativeFrame],
    notes: &mut Vec<String>,
) {
    use std::time::Instant;

    let deadline = Instant::now() + TIME_LIMIT;
    for (index, object) in objects.iter().enumerate() {
        let mine: Vec<(usize, u64)> = probes
            .iter()
            .enumerate()
            .filter_map(|(frame, p)| p.filter(|&(o, _)| o == index).map(|(_, a)| (frame, a)))
            .collect();
        if mine.is_empty() {
            continue;
        }
        if Instant::now() >= deadline {
            notes.push(format!(
                "{}: not named, past the {TIME_LIMIT:?} the symbolizer takes",
                object.path
            ));
            continue;
        }
        let addresses: Vec<u64> = mine.iter().map(|&(_, a)| a).collect();
        match dwarf::name(object, &addresses, deadline) {
            Ok(named) => {
                for ((frame, _), symbols) in mine.iter().zip(named.symbols) {
                    frames[*frame].symbols = symbols;
                }
                notes.extend(
                    named
                        .notes
                        .into_iter()
                        .map(|n| format!("{}: {n}", object.path)),
                );
            }
            Err(why) => notes.push(format!("{}: frames not named: {why}", object.path)),
        }
    }
}

#[cfg(feature = "symbolize")]
mod dwarf {
    //! The debug-info side: reading an object's DWARF and symbol table within limits.

    use std::borrow::Cow;
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use addr2line::gimli;
    use object::{Object, ObjectSection, ObjectSymbol, ReadCache};

    use super::SourceFrame;
    use crate::objects::{file_identity, hex};
    use crate::record::MappedObject;

    /// The most debug-section (or symbol-table) bytes read from one object: they are read into
    /// memory whole, and a collector must not balloon on a huge binary.
    pub(super) const MAX_DEBUG_BYTES: u64 = 256 << 20;
    /// Where split-off debug info is looked up by build-id.
    const DEBUG_DIR: &str = "/usr/lib/debug/.build-id";
    /// The DWARF sections `addr2line` reads; the others (locations, macros, types) are left
    /// unread, so they cost nothing.
    const SECTIONS: [gimli::SectionId; 10] = [
        gimli::SectionId::DebugAbbrev,
        gimli::SectionId::DebugAddr,
        gimli::SectionId::DebugAranges,
        gimli::SectionId::DebugInfo,
        gimli::SectionId::DebugLine,
        gimli::SectionId::DebugLineStr,
        gimli::SectionId::DebugRanges,
        gimli::SectionId::DebugRngLists,
        gimli::SectionId::DebugStr,
        gimli::SectionId::DebugStrOffsets,
    ];

    type Elf<'a> = object::File<'a, &'a ReadCache<File>>;
    type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

    /// What [`name`] found: one list of source frames per address (empty: not named), and what
    /// is worth saying about it.
    pub(super) struct Named {
        pub(super) symbols: Vec<Vec<SourceFrame>>,
        pub(super) notes: Vec<String>,
    }

    /// Names `addresses` (in the object's file's address space) from `object`'s file.
    ///
    /// # Errors
    /// Why none can be named: the file cannot be read or parsed, it is not the one the
    /// process had loaded, or it has neither debug info nor a symbol table to read.
    pub(super) fn name(
        object: &MappedObject,
        addresses: &[u64],
        deadline: Instant,
    ) -> Result<Named, String> {
        let file = File::open(&object.path).map_err(|e| format!("opening it: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("reading its size: {e}"))?;
        let cache = ReadCache::new(file);
        let elf = Elf::parse(&cache).map_err(|e| format!("not an ELF file it can read: {e}"))?;
        let mut notes = Vec::new();
        let build_id = elf
            .build_id()
            .map_err(|e| format!("reading its build-id: {e}"))?
            .map(hex);
        match (&object.build_id, &object.file_id) {
            (Some(then), _) if build_id.as_ref() != Some(then) => {
                return Err(format!(
                    "replaced since the crash: its build-id is {}, the crashed process had {then}",
                    build_id.as_deref().unwrap_or("none")
                ));
            }
            (Some(_), _) => {}
            (None, Some(then)) if file_identity(&meta) != *then => {
                return Err(
                    "changed on disk since the crash (its inode, size or modification time \
                     differs from the crashed process's)"
                        .into(),
                );
            }
            (None, Some(_)) => {}
            (None, None) => notes.push(
                "no build-id or file identity was recorded: named from the file on disk, \
                 right only if it has not changed since the crash"
                    .into(),
            ),
        }

        // Split-off debug info, when the file has none of its own and a debug package has it.
        let separate = match (has_dwarf(&elf), &build_id) {
            (false, Some(id)) => separate_debug_file(id, &mut notes),
            _ => None,
        };
        let separate_cache = separate.map(|(path, file)| (path, ReadCache::new(file)));
        let separate_elf = match &separate_cache {
            Some((path, cache)) => match Elf::parse(cache) {
                Ok(debug) if debug.build_id().ok().flatten().map(hex) == build_id => Some(debug),
                Ok(_) => {
                    notes.push(format!(
                        "{} is not its debug file (another build-id): not read",
                        path.display()
                    ));
                    None
                }
                Err(e) => {
                    notes.push(format!("{}: not read: {e}", path.display()));
                    None
                }
            },
            None => None,
        };
        let debug = separate_elf.as_ref().unwrap_or(&elf);

        // Debug info that cannot be read still leaves the symbol table to name functions by.
        let (context, unread) = if has_dwarf(debug) {
            match load_dwarf(debug).and_then(|dwarf| {
                addr2line::Context::from_dwarf(dwarf)
                    .map_err(|e| format!("its debug info is malformed: {e}"))
            }) {
                Ok(context) => (Some(context), None),
                Err(why) => (None, Some(why)),
            }
        } else {
            (None, None)
        };
        let mut symbols = None;
        let mut lookup_errors = 0;
        let mut first_error = None;
        let mut named = Vec::with_capacity(addresses.len());
        for &address in addresses {
            if Instant::now() >= deadline {
                notes.push("some frames not named: past the symbolizer's time limit".into());
                named.resize(addresses.len(), Vec::new());
                break;
            }
            let mut frames = match &context {
                Some(context) => match source_frames(context, address) {
                    Ok(frames) => frames,
                    Err(e) => {
                        lookup_errors += 1;
                        first_error.get_or_insert(e);
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            if frames.iter().all(|f| f.function.is_none()) {
                let table = symbols.get_or_insert_with(|| SymbolTable::read(debug, &elf));
                if let Some(name) = table.find(address) {
                    let name = addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned();
                    match frames.last_mut() {
                        Some(outermost) => outermost.function = Some(name),
                        None => frames.push(SourceFrame {
                            function: Some(name),
                            ..SourceFrame::default()
                        }),
                    }
                }
            }
            named.push(frames);
        }
        if let Some(e) = first_error {
            notes.push(format!(
                "{lookup_errors} frame(s) not named: malformed debug info ({e})"
            ));
        }
        if context.is_none() {
            let why = unread.unwrap_or_else(|| "it has no debug info".into());
            if symbols.as_ref().is_some_and(SymbolTable::is_empty) {
                return Err(format!("{why}, and no symbol table"));
            }
            notes.push(format!(
                "{why}: functions named from its symbol table, without lines"
            ));
        }
        if let Some(table) = symbols.as_ref().and_then(|t| t.skipped.as_ref()) {
            notes.push(table.clone());
        }
        Ok(Named {
            symbols: named,
            notes,
        })
    }

    /// The source frames at `address`, innermost first.
    fn source_frames(
        context: &addr2line::Context<Reader<'_>>,
        address: u64,
    ) -> Result<Vec<SourceFrame>, gimli::Error> {
        let mut frames = Vec::new();
        let mut iter = context.find_frames(address).skip_all_loads()?;
        while let Some(frame) = iter.next()? {
            let function = frame
                .function
                .as_ref()
                .and_then(|f| f.demangle().ok())
                .map(Cow::into_owned);
            let (file, line, column) = match frame.location {
                Some(l) => (l.file.map(str::to_owned), l.line, l.column),
                None => (None, None, None),
            };
            frames.push(SourceFrame {
                function,
                file,
                line,
                column,
            });
        }
        Ok(frames)
    }

    fn has_dwarf(elf: &Elf<'_>) -> bool {
        elf.section_by_name(".debug_info")
            .is_some_and(|s| s.size() > 0 && s.file_range().is_some())
    }

    /// `/usr/lib/debug/.build-id/ab/cdef….debug`, if there is one; one that cannot be opened
    /// is said in `notes`.
    fn separate_debug_file(build_id: &str, notes: &mut Vec<String>) -> Option<(PathBuf, File)> {
        if build_id.len() < 3 {
            return None;
        }
        let path: PathBuf = Path::new(DEBUG_DIR)
            .join(&build_id[..2])
            .join(format!("{}.debug", &build_id[2..]));
        match File::open(&path) {
            Ok(file) => Some((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                notes.push(format!("{}: not read: {e}", path.display()));
                None
            }
        }
    }

    /// The DWARF sections addr2line reads, each read into memory whole, at most
    /// [`MAX_DEBUG_BYTES`] together.
    fn load_dwarf<'a>(elf: &Elf<'a>) -> Result<gimli::Dwarf<Reader<'a>>, String> {
        let mut total = 0u64;
        for id in SECTIONS {
            if let Some(section) = elf.section_by_name(id.name()) {
                let range = section
                    .compressed_file_range()
                    .map_err(|e| format!("reading {}: {e}", id.name()))?;
                if range.format != object::CompressionFormat::None {
                    return Err(format!(
                        "its debug info is compressed ({:?}), which the symbolizer does not read",
                        range.format
                    ));
                }
                total = total.saturating_add(section.size());
            }
        }
        if total > MAX_DEBUG_BYTES {
            return Err(format!(
                "its debug info ({} MiB) is over the {} MiB the symbolizer reads",
                total >> 20,
                MAX_DEBUG_BYTES >> 20
            ));
        }
        let endian = if elf.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        gimli::Dwarf::load(|id| -> Result<Reader<'a>, String> {
            let data = match elf.section_by_name(id.name()) {
                Some(section) if SECTIONS.contains(&id) => section
                    .data()
                    .map_err(|e| format!("reading {}: {e}", id.name()))?,
                _ => &[],
            };
            Ok(gimli::EndianSlice::new(data, endian))
        })
    }

    /// Function symbols with their sizes, sorted by address: a name is given only to an
    /// address inside a symbol, never to whatever precedes it.
    struct SymbolTable<'a> {
        symbols: Vec<(u64, u64, &'a str)>,
        /// Why the table was not read, if it was not.
        skipped: Option<String>,
    }

    impl<'a> SymbolTable<'a> {
        /// The symbol table of `debug` (a separate debug file has the full one), else the
        /// dynamic symbols of `elf`, if not over the size limit.
        fn read(debug: &Elf<'a>, elf: &Elf<'a>) -> SymbolTable<'a> {
            let size = |e: &Elf<'a>, names: [&str; 2]| -> u64 {
                names
                    .iter()
                    .filter_map(|n| e.section_by_name(n))
                    .map(|s| s.size())
                    .sum()
            };
            let candidates = [
                (debug, size(debug, [".symtab", ".strtab"]), false),
                (elf, size(elf, [".symtab", ".strtab"]), false),
                (elf, size(elf, [".dynsym", ".dynstr"]), true),
            ];
            let Some(&(file, bytes, dynamic)) = candidates.iter().find(|c| c.1 > 0) else {
                return SymbolTable {
                    symbols: Vec::new(),
                    skipped: None,
                };
            };
            if bytes > MAX_DEBUG_BYTES {
                return SymbolTable {
                    symbols: Vec::new(),
                    skipped: Some(format!(
                        "its symbol table ({} MiB) is over the limit, not read",
                        bytes >> 20
                    )),
                };
            }
            let all = if dynamic {
                file.dynamic_symbols()
            } else {
                file.symbols()
            };
            let mut symbols: Vec<(u64, u64, &'a str)> = all
                .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
                .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?)))
                .collect();
            symbols.sort_unstable();
            SymbolTable {
                symbols,
                skipped: None,
            }
        }

        fn is_empty(&self) -> bool {
            self.symbols.is_empty()
        }

        fn find(&self, address: u64) -> Option<&'a str> {
            let after = self
                .symbols
                .partition_point(|&(start, _, _)| start <= address);
            let &(start, size, name) = self.symbols.get(after.checked_sub(1)?)?;
            (address - start < size).then_some(name)
        }
    }
}

impl fmt::Display for SourceFrame {
    /// `function at file:line:column`, `??` for what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.function.as_deref().unwrap_or("??"))?;
        if let Some(file) = &self.file {
            write!(f, " at {file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(column) = self.column.filter(|&c| c > 0) {
                    write!(f, ":{column}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function of this test binary to find by address.
    #[cfg(feature = "symbolize")]
    #[inline(never)]
    fn a_function_to_name() -> u64 {
        std::hint::black_box(7)
    }

    /// A signal entry whose only frame is inside [`a_function_to_name`], recorded as the
    /// interrupted instruction, with this executable as its object.
    #[cfg(feature = "symbolize")]
    fn entry_in_this_executable() -> (SignalEntry, u64) {
        std::hint::black_box(a_function_to_name());
        let exe = std::env::current_exe().unwrap();
        let objects = crate::objects::loaded(&exe.to_string_lossy());
        let address = a_function_to_name as *const () as u64;
        let entry = SignalEntry {
            signal: libc::SIGSEGV,
            exe: objects[0].path.clone(),
            exe_base: objects[0].bias.clone(),
            exe_end: objects[0].end.clone(),
            frames: vec![format!("{address:#x}")],
            pc: Some(format!("{address:#x}")),
            objects,
            complete: true,
            ..SignalEntry::default()
        };
        (entry, address)
    }

    #[cfg(feature = "symbolize")]
    fn function_of(frame: &NativeFrame) -> Option<&str> {
        frame.symbols.last()?.function.as_deref()
    }

    #[cfg(feature = "symbolize")]
    #[test]
    fn a_frame_of_this_executable_is_named_with_its_file_and_line() {
        let (entry, _) = entry_in_this_executable();
        let named = symbolize(&entry);
        let frame = &named.frames[0];
        assert!(
            function_of(frame).is_some_and(|f| f.ends_with("::a_function_to_name")),
            "{named:#?}"
        );
        let symbol = frame.symbols.last().unwrap();
        assert!(
            symbol
                .file
                .as_deref()
                .unwrap()
                .ends_with("src/symbolize.rs")
        );
        assert!(symbol.line.is_some());
        assert!(named.notes.is_empty(), "{:?}", named.notes);
    }

    #[cfg(feature = "symbolize")]
    #[test]
    fn a_replaced_executable_keeps_its_frames_raw_and_says_so() {
        // What the crashed process recorded is not what is on disk now: by build-id, or by the
        // file's identity when there was no build-id to record.
        assert_stays_raw(
            |exe| exe.build_id = Some("00ff00ff".into()),
            "replaced since the crash: its build-id is ",
        );
        assert_stays_raw(
            |exe| {
                exe.build_id = None;
                exe.file_id = Some("1:2:3:4".into());
            },
            "changed on disk since the crash",
        );
    }

    /// Symbolizes a frame of this executable after `tamper` changed what the crashed process
    /// recorded of it, and checks that the frame stays raw with a note saying `why`.
    #[cfg(feature = "symbolize")]
    fn assert_stays_raw(tamper: impl FnOnce(&mut MappedObject), why: &str) {
        let (mut entry, address) = entry_in_this_executable();
        tamper(&mut entry.objects[0]);
        let named = symbolize(&entry);
        let frame = &named.frames[0];
        assert!(frame.symbols.is_empty(), "{named:#?}");
        assert_eq!(frame.address, format!("{address:#x}"));
        assert_eq!(frame.object.as_deref(), Some(entry.exe.as_str()));
        assert!(frame.offset.is_some());
        let [note] = &named.notes[..] else {
            panic!("one note expected: {:?}", named.notes);
        };
        assert!(note.starts_with(&entry.exe) && note.contains(why), "{note}");
    }

    #[test]
    fn an_executable_without_debug_info_or_symbols_keeps_raw_addresses_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        // A valid 64-bit little-endian ELF header and nothing else: no sections at all.
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2; // ELFCLASS64
        header[5] = 1; // ELFDATA2LSB
        header[6] = 1; // EV_CURRENT
        header[16] = 3; // ET_DYN
        header[18] = 62; // EM_X86_64
        header[20] = 1; // e_version
        header[52] = 64; // e_ehsize
        let bare = dir.path().join("bare");
        std::fs::write(&bare, &header).unwrap();
        let not_elf = dir.path().join("script");
        std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
        for (path, why) in [
            (&bare, "no debug info, and no symbol table"),
            (&not_elf, "not an ELF file"),
        ] {
            let object = MappedObject {
                path: path.to_string_lossy().into_owned(),
                bias: "0x1000".into(),
                start: "0x1000".into(),
                end: "0x2000".into(),
                build_id: None,
                file_id: None,
            };
            let entry = SignalEntry {
                frames: vec!["0x1234".into(), "0x9999".into()],
                objects: vec![object.clone()],
                ..SignalEntry::default()
            };
            let named = symbolize(&entry);
            assert_eq!(
                named.frames,
                vec![
                    NativeFrame {
                        address: "0x1234".into(),
                        object: Some(object.path.clone()),
                        offset: Some("0x234".into()),
                        symbols: Vec::new(),
                    },
                    NativeFrame {
                        address: "0x9999".into(),
                        ..NativeFrame::default()
                    },
                ],
                "the frame outside every object has no object"
            );
            let notes = named.notes.join("\n");
            #[cfg(feature = "symbolize")]
            assert!(
                notes.contains(&object.path) && notes.contains(why),
                "{notes}"
            );
            #[cfg(not(feature = "symbolize"))]
            assert!(
                notes.contains("without its `symbolize` feature"),
                "{notes} {why}"
            );
        }
    }
}
