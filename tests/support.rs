//! Shared setup for the end-to-end tests: finds (building if needed) the real `ward` binary.

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of a freshly built `ward` binary from this workspace.
///
/// A test binary of another package has no `CARGO_BIN_EXE_ward`, so this builds the `ward` package
/// once per test process with the same cargo, profile and target directory, and returns its path.
///
/// # Panics
/// If cargo cannot build the binary: every end-to-end test needs it.
pub fn ward_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // The test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile> directory");
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        // Both binaries: `ward start` and `ward run` exec the keeper's own.
        build.args(["build", "--quiet", "--package", "ward", "--bins"]);
        build.arg("--target-dir").arg(target_dir);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo build for the ward binary");
        assert!(
            status.success(),
            "cargo build of the ward binary failed: {status}"
        );
        let bin = profile_dir.join("ward");
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
}

/// A `Command` for the real `ward` binary with a clean logging environment.
pub fn ward() -> Command {
    let mut cmd = Command::new(ward_bin());
    for var in ["RUST_LOG", "WARD_CONFIG", "WARD_STATE_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `timeout`.
///
/// # Panics
/// If the condition does not hold in time.
pub fn wait_for(what: &str, timeout: std::time::Duration, condition: impl FnMut() -> bool) {
    assert!(
        holds_within(timeout, condition),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; whether it held. For a
/// wait whose failure says more than [`wait_for`]'s message.
pub fn holds_within(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether process `pid` is alive: it exists and has not died (a zombie, or reaped and being
/// removed). (A dying process's command line reads empty before its descriptors are closed, so
/// [`processes_mentioning`] alone can miss it.)
/// Whether `program` (from the Debian package `package`) can be run. A test that needs a
/// program ward does not ship says so and is skipped without it, unless
/// `WARD_TEST_REQUIRE_TOOLS` is set (CI sets it, after installing the packages): then its
/// absence is a failure that names the package.
///
/// # Panics
/// If the program is missing and `WARD_TEST_REQUIRE_TOOLS` is set.
pub fn have_tool(program: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        let why = format!(
            "{program} is not installed (Debian: apt-get install {package}): the test that needs it cannot run"
        );
        assert!(
            std::env::var_os("WARD_TEST_REQUIRE_TOOLS").is_none(),
            "{why}"
        );
        eprintln!("{why}; skipped (set WARD_TEST_REQUIRE_TOOLS to make this a failure)");
    }
    found
}

/// A loopback TCP port nobody listens on now (bound and released: another process could take
/// it meanwhile, which a test then sees as a failed bind or connect, not a wrong result).
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
        .port()
}

pub fn is_alive(pid: u32) -> bool {
    ward_sys::is_alive(pid)
}

/// Pids and command lines of the live processes (the dead excluded) whose command line contains
/// `needle`: ward's own processes carry the state directory in theirs, and jobs the tree's paths.
pub fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for (pid, stat) in ward_sys::processes() {
        if pid == std::process::id() || stat.is_dead() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// Connects to the control socket in the state directory `state` as PROTOCOL.md tells a client
/// to whatever the directory's depth: through `/proc/self/fd/<fd>/ward.sock`, `fd` the directory
/// opened with `O_PATH`, a path short enough for a socket address.
///
/// # Errors
/// If the directory cannot be opened or the socket not connected.
pub fn connect_control(state: &Path) -> std::io::Result<UnixStream> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(state)?;
    UnixStream::connect(format!("/proc/self/fd/{}/ward.sock", dir.as_raw_fd()))
}

/// A temporary ward setup: `tree/` is watched, `out/` holds the jobs' ledger, `state/` is the
/// state directory, `ward.toml` the config. Dropping it kills anything still running for it, so
/// a failed test leaves no daemon behind.
#[derive(Debug)]
pub struct Fixture {
    /// The temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// The watched tree.
    pub tree: PathBuf,
    /// Where the jobs write their ledger.
    pub ledger: PathBuf,
    /// The state directory.
    pub state: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

impl Fixture {
    /// A fixture whose config is `[watch] roots = ["tree"]` plus `extra` (TOML), with the ledger
    /// path available to `extra` as `{ledger}` and the program `job` as `{job}`.
    ///
    /// # Panics
    /// If the temporary files cannot be written.
    pub fn new(job: &str, extra: &str) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("ward-e2e-")
            .tempdir()
            .expect("temp dir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        let ledger = dir.path().join("out/ledger");
        let state = dir.path().join("state");
        let config = dir.path().join("ward.toml");
        let text = format!(
            "[watch]\nroots = [\"tree\"]\ndebounce_ms = 20\n\n[jobs]\nstop_grace_s = 2\ndrain_timeout_s = 5\n\n{}",
            extra
                .replace("{ledger}", ledger.to_str().unwrap())
                .replace("{job}", job)
        );
        std::fs::write(&config, text).unwrap();
        Fixture {
            dir,
            tree,
            ledger,
            state,
            config,
        }
    }

    /// [`Fixture::new`] with its state directory nested in ordinary directories under the
    /// temporary one until its path is at least `len` bytes long. Past 107 bytes a Unix socket
    /// address cannot hold the control socket's path.
    ///
    /// # Panics
    /// If the temporary files cannot be written.
    pub fn with_long_state_dir(job: &str, extra: &str, len: usize) -> Fixture {
        let mut f = Fixture::new(job, extra);
        let mut state = f.dir.path().to_path_buf();
        while state.as_os_str().len() + "/state".len() < len {
            state.push("nested-directory");
        }
        state.push("state");
        f.state = state;
        f
    }

    /// A started fixture with one job thread, held busy by a job on `tree/blocker` that waits for
    /// the gate file (see [`Fixture::release`]); every other file is recorded by `job record`. Jobs
    /// queued meanwhile wait, so a test can change files under them.
    ///
    /// # Panics
    /// If the daemon does not start or the blocker does not run.
    pub fn held(job: &str) -> Fixture {
        let f = Fixture::holdable(job);
        f.hold();
        f
    }

    /// [`Fixture::held`] not held yet: files are processed as they change until [`Fixture::hold`].
    ///
    /// # Panics
    /// If the daemon does not start.
    pub fn holdable(job: &str) -> Fixture {
        let f = Fixture::new(
            job,
            concat!(
                "[[trigger]]\nname = \"blocker\"\nglob = [\"blocker\"]\n",
                "exec = [\"{job}\", \"gated\", \"{ledger}\", \"{ledger}.gate\"]\n",
                "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
            ),
        );
        f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
        f.start();
        f
    }

    /// Holds the job thread of a [`Fixture::holdable`] with the blocker's job.
    ///
    /// # Panics
    /// If the blocker does not run.
    pub fn hold(&self) {
        std::fs::write(self.tree.join("blocker"), "b").unwrap();
        wait_for(
            "the blocker to run",
            std::time::Duration::from_secs(60),
            || self.status().1["queue"]["running"] == 1,
        );
    }

    /// Opens the gate that `gated` jobs wait for.
    ///
    /// # Panics
    /// If the gate file cannot be written.
    pub fn release(&self) {
        std::fs::write(self.dir.path().join("out/ledger.gate"), "").unwrap();
    }

    /// Rewrites the config file, replacing `from` with `to` (which must be there).
    ///
    /// # Panics
    /// If `from` is not in the config, or the file cannot be rewritten.
    pub fn edit_config(&self, from: &str, to: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        assert!(
            config.contains(from),
            "{from:?} is not in the config:\n{config}"
        );
        std::fs::write(&self.config, config.replace(from, to)).unwrap();
    }

    /// `ward` with this fixture's `--config` and `--state-dir`, then `args`.
    pub fn ward(&self, args: &[&str]) -> Command {
        let mut cmd = ward();
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args);
        cmd
    }

    /// Runs `ward ARGS` to completion and returns its output.
    ///
    /// # Panics
    /// If the binary cannot be run.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.ward(args).output().expect("running ward")
    }

    /// `ward status --json`, parsed, and its exit code.
    ///
    /// # Panics
    /// If the output is not JSON.
    pub fn status(&self) -> (Option<i32>, serde_json::Value) {
        let out = self.run(&["status", "--json"]);
        let value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {out:?}"));
        (out.status.code(), value)
    }

    /// `ward failures --json`: one object per path that gave up.
    ///
    /// # Panics
    /// If the command fails or prints a line that is not JSON.
    pub fn failures(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["failures", "--json"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The ledger's entries: (event, raw path bytes).
    pub fn ledger_entries(&self) -> Vec<(String, Vec<u8>)> {
        let Ok(bytes) = std::fs::read(&self.ledger) else {
            return Vec::new();
        };
        bytes
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let tab = entry
                    .iter()
                    .position(|&b| b == b'\t')
                    .expect("ledger entry has a tab");
                (
                    String::from_utf8_lossy(&entry[..tab]).into_owned(),
                    entry[tab + 1..].to_vec(),
                )
            })
            .collect()
    }

    /// `ward start`, asserting it succeeds and says so.
    ///
    /// # Panics
    /// If the daemon does not start.
    pub fn start(&self) {
        let out = self.run(&["start"]);
        assert!(
            out.status.success(),
            "ward start failed: {out:?}\nlog:\n{}",
            self.log()
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("started"),
            "{out:?}"
        );
    }

    /// `ward stop`, asserting it succeeds.
    ///
    /// # Panics
    /// If the daemon does not stop cleanly.
    pub fn stop(&self) {
        let out = self.run(&["stop"]);
        assert!(
            out.status.success(),
            "ward stop failed: {out:?}\nlog:\n{}",
            self.log()
        );
    }

    /// The crash reports of `ward diagnose --json` whose role mentions `name`.
    pub fn reports_about(&self, name: &str) -> Vec<serde_json::Value> {
        let out = self.run(&["diagnose", "--json"]);
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        reports
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|r| r["role"].as_str().is_some_and(|role| role.contains(name)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("ward.log")).unwrap_or_default()
    }

    /// Whether the ledger has an entry for `tree/NAME`.
    pub fn saw(&self, name: &str) -> bool {
        let want = self.tree.join(name);
        self.ledger_entries()
            .iter()
            .any(|(_, path)| path == want.as_os_str().as_bytes())
    }

    /// Waits until the running server has nothing queued, running or waiting in its backlog.
    ///
    /// # Panics
    /// If that does not happen within a minute.
    pub fn wait_idle(&self) {
        wait_for(
            "the server to be idle",
            std::time::Duration::from_secs(60),
            || {
                let (code, s) = self.status();
                let q = &s["queue"];
                code == Some(0) && q["queued"] == 0 && q["running"] == 0 && q["backlog"] == 0
            },
        );
    }

    /// Asserts that no process of this fixture is alive (after a stop, or after the tree died).
    ///
    /// # Panics
    /// If one is.
    pub fn assert_nothing_left(&self) {
        let left = self.processes();
        assert!(left.is_empty(), "left running: {left:?}");
    }

    /// Live processes that belong to this fixture.
    pub fn processes(&self) -> Vec<(u32, String)> {
        processes_mentioning(self.dir.path())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (pid, _) in self.processes() {
            // SAFETY: kill with a pid read from /proc; at worst the process is already gone.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}
