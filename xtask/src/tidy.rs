//! Tidy checks: repository-wide rules that the compiler and clippy do not enforce.
//!
//! They run as ordinary tests (`cargo test -p xtask`) and as `cargo xtask tidy`. The rules on
//! sources and members are here; the unused-dependency rule is in [`unused_deps`], the rules for
//! what a crate shows on crates.io in [`package`], and the metric names contrib's dashboard and
//! alert rules may use in [`contrib_metrics`].

mod contrib_metrics;
mod package;
mod unused_deps;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One broken rule at one place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) path: PathBuf,
    pub(crate) line: Option<usize>,
    pub(crate) rule: &'static str,
    /// What exactly is wrong, when the rule alone does not say.
    pub(crate) detail: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.rule)?,
            None => write!(f, "{}: {}", self.path.display(), self.rule)?,
        }
        match &self.detail {
            Some(detail) => write!(f, ": {detail}"),
            None => Ok(()),
        }
    }
}

const NO_MODULE_DOC: &str = "file does not start with a `//!` line saying what lives here";
const NO_README: &str = "workspace member has no README.md";
const NO_WORKSPACE_LINTS: &str =
    "workspace member does not inherit lints (`[lints] workspace = true`)";
const IGNORED_TEST: &str = "#[ignore]d test: fix the flake or delete the test";

/// Macros that mark unfinished or debugging code, forbidden outside tests. The needles are
/// split so that this file does not trip its own check.
const FORBIDDEN_MACROS: [(&str, &str); 3] = [
    (concat!("dbg", "!("), "dbg! left in non-test code"),
    (
        concat!("todo", "!("),
        "todo! in non-test code: finish it or return an error",
    ),
    (
        concat!("unimplemented", "!("),
        "unimplemented! in non-test code: finish it or return an error",
    ),
];
const IGNORE_ATTRIBUTE: &str = concat!("#[", "ignore");

/// Runs every check on the workspace at `root` and returns what is wrong.
pub(crate) fn check(root: &Path) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let manifest = root_manifest(root)?;
    let workspace_package = manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(toml::Value::as_table);
    for member in members(&manifest)? {
        check_member(root, Path::new(&member), workspace_package, &mut problems)?;
    }
    let mut files = rust_sources(root)?;
    files.sort();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let rel = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
        check_source(&rel, &text, &mut problems);
    }
    contrib_metrics::check(root, &mut problems)?;
    Ok(problems)
}

/// The root manifest of the workspace at `root`.
fn root_manifest(root: &Path) -> Result<toml::Table> {
    let manifest = root.join("Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    text.parse()
        .with_context(|| format!("parsing {}", manifest.display()))
}

/// The `members` list of the root manifest.
fn members(manifest: &toml::Table) -> Result<Vec<String>> {
    let members = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .context("root Cargo.toml has no [workspace] members list")?;
    Ok(members
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect())
}

/// The rules for the workspace member at `member` (relative to the workspace `root`), which may
/// inherit fields from the root's `[workspace.package]`.
fn check_member(
    root: &Path,
    member: &Path,
    workspace_package: Option<&toml::Table>,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let dir = root.join(member);
    if !dir.join("README.md").is_file() {
        problems.push(Problem {
            path: dir.clone(),
            line: None,
            rule: NO_README,
            detail: None,
        });
    }
    let manifest = dir.join("Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let value: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", manifest.display()))?;
    let inherits = value
        .get("lints")
        .and_then(|l| l.get("workspace"))
        .and_then(toml::Value::as_bool)
        == Some(true);
    if !inherits {
        problems.push(Problem {
            path: manifest,
            line: None,
            rule: NO_WORKSPACE_LINTS,
            detail: None,
        });
    }
    package::check(&dir, member, &value, workspace_package, problems)?;
    unused_deps::check(&dir, &member.join("Cargo.toml"), &value, &text, problems)
}

/// The `.rs` files under `dir`: those git tracks when `dir` is in a git work tree (a file someone
/// made and never added, a scratch file under `sample/` say, is theirs, not the repository's),
/// else every one a walk finds, skipping build output and hidden directories.
///
/// # Errors
/// If a directory of the walk cannot be listed.
pub(crate) fn rust_sources(dir: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let listed = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["ls-files", "-z", "--", "*.rs"])
        .stderr(std::process::Stdio::null())
        .output();
    match listed {
        Ok(out) if out.status.success() => Ok(out
            .stdout
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| dir.join(std::ffi::OsStr::from_bytes(p)))
            // Tracked but deleted in the work tree: nothing to read.
            .filter(|p| p.is_file())
            .collect()),
        _ => {
            let mut files = Vec::new();
            walk_rust_files(dir, &mut files)?;
            Ok(files)
        }
    }
}

fn walk_rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk_rust_files(&path, out)?;
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Source rules for one file; `path` is only used in the reports.
pub(crate) fn check_source(path: &Path, text: &str, problems: &mut Vec<Problem>) {
    let report = |line, rule| Problem {
        path: path.to_path_buf(),
        line,
        rule,
        detail: None,
    };
    if !text.trim_start().starts_with("//!") {
        problems.push(report(Some(1), NO_MODULE_DOC));
    }
    let test_file = is_test_path(path);
    // Once a `#[cfg(test)]` appears, the rest of the file is test code (ward keeps test modules last).
    let mut in_test = test_file;
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        if code.starts_with("#[cfg(test)]") {
            in_test = true;
        }
        if code.starts_with(IGNORE_ATTRIBUTE) {
            problems.push(report(Some(i + 1), IGNORED_TEST));
        }
        if !in_test {
            for (needle, rule) in FORBIDDEN_MACROS {
                if code.contains(needle) {
                    problems.push(report(Some(i + 1), rule));
                }
            }
        }
    }
}

/// Integration tests, benches and the end-to-end suite are test code as a whole.
fn is_test_path(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c.as_os_str().to_str(), Some("tests" | "benches")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use unused_deps::UNUSED_DEPENDENCY;

    fn problems_in(path: &str, text: &str) -> Vec<&'static str> {
        let mut problems = Vec::new();
        check_source(Path::new(path), text, &mut problems);
        problems.into_iter().map(|p| p.rule).collect()
    }

    #[test]
    fn the_workspace_is_tidy() {
        let problems = check(&crate::workspace_root()).unwrap();
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(problems.is_empty(), "tidy problems:\n{}", listed.join("\n"));
    }

    #[test]
    fn a_file_without_module_doc_is_reported() {
        assert_eq!(
            problems_in("crates/x/src/lib.rs", "// plain comment\nfn f() {}\n"),
            [NO_MODULE_DOC]
        );
        assert_eq!(
            problems_in("crates/x/src/lib.rs", "//! Says what lives here.\n"),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn debugging_macros_are_reported_outside_tests_only() {
        let src =
            "//! m\nfn f() { dbg!(1); todo!() }\n#[cfg(test)]\nmod t { fn g() { dbg!(2); } }\n";
        assert_eq!(
            problems_in("crates/x/src/lib.rs", src),
            [FORBIDDEN_MACROS[0].1, FORBIDDEN_MACROS[1].1]
        );
        assert_eq!(
            problems_in("crates/x/tests/it.rs", "//! t\nfn g() { dbg!(1); }\n"),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn ignored_tests_are_reported_everywhere() {
        let src = format!("//! t\n#[test]\n{IGNORE_ATTRIBUTE}]\nfn flaky() {{}}\n");
        assert_eq!(problems_in("crates/x/tests/it.rs", &src), [IGNORED_TEST]);
    }

    #[test]
    fn a_member_without_readme_or_lints_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"a\", \"b\"]\n",
        )
        .unwrap();
        for (name, lints) in [("a", "[lints]\nworkspace = true\n"), ("b", "")] {
            fs::create_dir_all(root.join(name).join("src")).unwrap();
            fs::write(
                root.join(name).join("Cargo.toml"),
                // Unpublished: the packaging rules are tested in `package`.
                format!("[package]\nname = \"{name}\"\npublish = false\n{lints}"),
            )
            .unwrap();
            fs::write(root.join(name).join("src/lib.rs"), "//! ok\n").unwrap();
        }
        fs::write(root.join("a/README.md"), "# a\n").unwrap();
        let rules: Vec<_> = check(root).unwrap().into_iter().map(|p| p.rule).collect();
        assert_eq!(rules, [NO_README, NO_WORKSPACE_LINTS]);
    }

    /// Regression: editing `sample/` as the README invites (a scratch `.rs` file there) made
    /// `cargo test --workspace` fail, because tidy read files git does not track.
    #[test]
    fn in_a_git_work_tree_only_tracked_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(root)
                .args(args)
                .output()
                .expect("running git");
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        git(&["init", "-q"]);
        write(&root.join("src/tracked.rs"), "//! t\nfn f() {}\n");
        git(&["add", "src/tracked.rs"]);
        write(&root.join("sample/scratch.rs"), "fn no_module_doc() {}\n");
        let found = rust_sources(root).unwrap();
        assert_eq!(found, [root.join("src/tracked.rs")]);
        // Outside a work tree every file is read.
        let plain = tempfile::tempdir().unwrap();
        write(&plain.path().join("a.rs"), "fn f() {}\n");
        assert_eq!(
            rust_sources(plain.path()).unwrap(),
            [plain.path().join("a.rs")]
        );
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn a_dependency_no_source_of_its_crate_names_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"a\", \"e2e\"]\n",
        );
        // `a` uses a dependency from each place a crate's sources may be; `unused-dep` only
        // appears where it does not count: as a variable, in a plain comment, under `target/`,
        // and in a package of its own inside `a`.
        write(
            &root.join("a/Cargo.toml"),
            "[package]\nname = \"a\"\npublish = false\n\n[dependencies]\nin-lib.workspace = true\n\
             unused-dep = \"1\"\nin-doc = \"1\"\n\n[dev-dependencies]\nin-test = \"1\"\n\
             in-example = \"1\"\nin-bench = \"1\"\n\n[build-dependencies]\nin-build = \"1\"\n\
             \n[target.'cfg(unix)'.dependencies]\nunused-unix = \"1\"\n\n[lints]\nworkspace = true\n",
        );
        let sources = [
            (
                "src/lib.rs",
                "//! Uses in_lib.\n//! ```\n//! in_doc::f();\n//! ```\nuse in_lib::Thing;\n\
                 // unused_dep::f() was here once\nfn f() { let unused_dep = 1; }\n",
            ),
            ("tests/it.rs", "//! t\nuse in_test;\n"),
            (
                "examples/ex.rs",
                "//! e\nfn main() { in_example::run(); }\n",
            ),
            (
                "benches/b.rs",
                "//! b\n#[macro_use]\nextern crate in_bench;\n",
            ),
            ("build.rs", "//! b\nfn main() { in_build::build(); }\n"),
            ("target/debug/gen.rs", "//! g\nunused_dep::f();\n"),
            ("nested/Cargo.toml", "[package]\nname = \"nested\"\n"),
            ("nested/src/lib.rs", "//! n\nuse unused_dep::x;\n"),
        ];
        for (path, text) in sources {
            write(&root.join("a").join(path), text);
        }
        // Targets at paths of their own, like the end-to-end suite's.
        write(
            &root.join("e2e/Cargo.toml"),
            "[package]\nname = \"e2e\"\npublish = false\n\n[lib]\npath = \"support.rs\"\n\n[[test]]\n\
             name = \"cli\"\npath = \"cli.rs\"\n\n[dependencies]\nlibc = \"0.2\"\n\
             tempfile = \"3\"\n\n[lints]\nworkspace = true\n",
        );
        write(&root.join("e2e/support.rs"), "//! s\npub use tempfile;\n");
        write(
            &root.join("e2e/cli.rs"),
            "//! c\nfn f() { libc::getpid(); }\n",
        );
        for member in ["a", "e2e"] {
            write(&root.join(member).join("README.md"), "# m\n");
        }
        let problems = check(root).unwrap();
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.rule, p.path.clone(), p.line))
            .collect();
        let manifest = PathBuf::from("a/Cargo.toml");
        assert_eq!(
            found,
            [
                (UNUSED_DEPENDENCY, manifest.clone(), Some(7)),
                (UNUSED_DEPENDENCY, manifest, Some(19)),
            ]
        );
        let said = problems[0].to_string();
        assert!(
            said.starts_with("a/Cargo.toml:7: unused dependency: crate `a` declares `unused-dep` in [dependencies]"),
            "{said}"
        );
        assert!(
            problems[1].to_string().contains("`unused-unix`"),
            "{}",
            problems[1]
        );
    }
}
