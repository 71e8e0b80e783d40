//! `/proc/<pid>/status`: the `Name: value` lines, and its memory figures in KiB. Not `stat`
//! (see [`crate::proc_stat`]), which is what tells whether a process is alive.

use std::fs;
use std::io;

/// The text of one `/proc/<pid>/status`, read once and asked for as many fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    text: String,
}

impl ProcStatus {
    /// Reads `/proc/<pid>/status`.
    ///
    /// # Errors
    /// [`io::ErrorKind::NotFound`] when there is no such process (or no `/proc`); any other
    /// error of the read.
    pub fn read(pid: u32) -> io::Result<ProcStatus> {
        // Only the `Name:` line can hold bytes that are not UTF-8; it is not what we read.
        let bytes = fs::read(format!("/proc/{pid}/status")).map_err(|e| {
            if e.raw_os_error() == Some(libc::ESRCH) {
                io::Error::new(io::ErrorKind::NotFound, e)
            } else {
                e
            }
        })?;
        Ok(ProcStatus::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// A status text read elsewhere.
    pub fn parse(text: &str) -> ProcStatus {
        ProcStatus {
            text: text.to_owned(),
        }
    }

    /// The value of the line named exactly `name` (`SigBlk`, `State`), trimmed.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim())
        })
    }

    /// The value of a memory line (`VmRSS`, `VmHWM`, `VmSize`) in KiB; `None` if the line is
    /// missing (a kernel thread, a zombie) or not in `kB`.
    pub fn kib(&self, name: &str) -> Option<u64> {
        self.field(name)?.strip_suffix(" kB")?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tward-server\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  123456 kB\nVmSize:\t  120000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8192 kB\n\
        Threads:\t5\nSigBlk:\t0000000000000000\nVmRSSx:\t1 kB\n";

    #[test]
    fn fields_are_found_by_their_exact_name() {
        let status = ProcStatus::parse(STATUS);
        // (name, field, KiB)
        let cases = [
            ("VmRSS", Some("8192 kB"), Some(8192)),
            ("VmHWM", Some("9000 kB"), Some(9000)),
            ("VmSize", Some("120000 kB"), Some(120_000)),
            ("State", Some("S (sleeping)"), None),
            ("Threads", Some("5"), None),
            ("SigBlk", Some("0000000000000000"), None),
            // A prefix of another name, or a name the file does not have.
            ("VmRS", None, None),
            ("VmSwap", None, None),
        ];
        for (name, field, kib) in cases {
            assert_eq!(
                (status.field(name), status.kib(name)),
                (field, kib),
                "{name}"
            );
        }
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let status = ProcStatus::read(std::process::id()).unwrap();
        assert!(status.kib("VmRSS").unwrap() > 0);
        assert!(status.kib("VmHWM").unwrap() >= status.kib("VmRSS").unwrap());
    }
}
