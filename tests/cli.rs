//! End-to-end tests of the `ward` binary's command line.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use ward_e2e::{Fixture, wait_for, ward, ward_bin};

#[test]
fn version_names_the_binary_and_its_version() {
    let out = ward().arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim(), format!("ward {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_argument_is_an_error_naming_it() {
    let out = ward().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn ward_work_refuses_an_address_that_is_not_a_nats_server_s() {
    let out = ward()
        .args(["work", "--nats", "http://127.0.0.1:4222"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--nats") && stderr.contains("nats://HOST:PORT"),
        "{stderr}"
    );
}

/// A fixture whose state directory holds a log rotated once, as the keeper leaves it: twelve
/// lines in `ward.log.1`, two in `ward.log`.
fn rotated_log() -> Fixture {
    let f = Fixture::new("true", "");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&f.state)
        .unwrap();
    let old: String = (1..=12).map(|i| format!("old {i}\n")).collect();
    std::fs::write(f.state.join("ward.log.1"), old).unwrap();
    std::fs::write(f.state.join("ward.log"), "new 1\nnew 2\n").unwrap();
    f
}

#[test]
fn logs_prints_the_last_lines_reaching_into_the_rotated_file() {
    let f = rotated_log();
    let old = |from: u32, to: u32| {
        (from..=to)
            .map(|i| format!("old {i}\n"))
            .collect::<String>()
    };
    for (args, expected) in [
        (&["logs"][..], old(5, 12) + "new 1\nnew 2\n"),
        (&["logs", "-n", "1"], "new 2\n".to_owned()),
        (&["logs", "-n", "2"], "new 1\nnew 2\n".to_owned()),
        (&["logs", "-n", "4"], old(11, 12) + "new 1\nnew 2\n"),
        (&["logs", "-n", "100"], old(1, 12) + "new 1\nnew 2\n"),
    ] {
        let out = f.run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{args:?}");
    }
}

#[test]
fn logs_follow_ends_quietly_when_its_output_is_closed() {
    let f = rotated_log();
    // Its reader reads one line and goes away while nothing more is written to the log.
    let mut follower = f
        .ward(&["logs", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(follower.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "old 5\n");
    let mut status = None;
    wait_for("ward logs -f to end", Duration::from_secs(10), || {
        status = follower.try_wait().unwrap();
        status.is_some()
    });
    let out = follower.wait_with_output().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // The same in a shell pipeline.
    let script = format!(
        "'{}' --state-dir '{}' logs -f | head -1",
        ward_bin().display(),
        f.state.display()
    );
    let mut pipeline = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "ward logs -f | head -1 to end",
        Duration::from_secs(10),
        || pipeline.try_wait().unwrap().is_some(),
    );
    let out = pipeline.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "old 5\n");
}

/// Every flag and argument some subcommand takes, as its help shows it.
const FLAGS: [&str; 21] = [
    "--config",
    "--state-dir",
    "--watch",
    "--ignore",
    "--workers",
    "--debounce",
    "[COMMAND]",
    "--timeout",
    "--json",
    "--last",
    "--lines",
    "--follow",
    "--since",
    "<SHELL>",
    "--all",
    "[PATH]",
    "--glob",
    "--service",
    "<NAME>",
    "<ACTION>",
    "[CMD]",
];

#[test]
fn each_subcommands_help_lists_its_own_flags_and_no_others() {
    let state = ["--config", "--state-dir"];
    let quick = [
        "--config",
        "--state-dir",
        "--watch",
        "--ignore",
        "--workers",
        "--debounce",
        "[COMMAND]",
    ];
    let own: [(&str, &[&str]); 17] = [
        ("run", &quick),
        ("start", &quick),
        ("restart", &quick),
        ("stop", &["--config", "--state-dir", "--timeout"]),
        ("status", &["--config", "--state-dir", "--json"]),
        ("diagnose", &["--config", "--state-dir", "--json", "--last"]),
        (
            "logs",
            &[
                "--config",
                "--state-dir",
                "--lines",
                "--follow",
                "--service",
                "<NAME>",
            ],
        ),
        ("reload", &state),
        ("check", &state),
        (
            "changes",
            &["--config", "--state-dir", "--since", "--follow", "--glob"],
        ),
        (
            "service",
            &["--config", "--state-dir", "<ACTION>", "<NAME>"],
        ),
        ("metrics", &state),
        (
            "hold",
            &["--config", "--state-dir", "--timeout", "<NAME>", "[CMD]"],
        ),
        ("release", &["--config", "--state-dir", "<NAME>"]),
        ("completions", &["<SHELL>"]),
        ("failures", &["--config", "--state-dir", "--json"]),
        ("retry", &["--config", "--state-dir", "--all", "[PATH]"]),
    ];
    for (sub, flags) in own {
        let out = ward().args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub}: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in FLAGS {
            assert_eq!(
                help.contains(flag),
                flags.contains(&flag),
                "`ward {sub} --help` {} {flag}:\n{help}",
                if flags.contains(&flag) {
                    "does not list"
                } else {
                    "lists"
                }
            );
        }
    }
    let out = ward().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (sub, _) in own {
        assert!(
            help.contains(&format!("\n  {sub} ")),
            "no {sub} in:\n{help}"
        );
    }
    assert!(
        !help.contains("__"),
        "an internal subcommand is shown:\n{help}"
    );
}

#[test]
fn completions_for_bash_complete_the_subcommands() {
    let out = ward().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F _ward"), "{script}");
    for sub in ["start", "logs", "reload", "diagnose", "completions"] {
        assert!(script.contains(sub), "no {sub} in the script");
    }
    assert!(
        !script.contains("__server"),
        "an internal subcommand is offered"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = ward().args(["completions", shell]).output().unwrap();
        assert!(
            out.status.success() && out.stdout.len() > 1000,
            "{shell}: {out:?}"
        );
    }
    let out = ward().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
