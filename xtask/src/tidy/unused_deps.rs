//! The unused-dependency rule of `cargo xtask tidy`, `cargo machete` style: every dependency a
//! workspace member declares (`[dependencies]`, `[dev-dependencies]`, `[build-dependencies]`,
//! also under `[target.'cfg(..)']`) must be named by one of the member's Rust sources. It is a
//! plain scan of the text, not a build: a dependency `foo-bar` counts as used where a source names
//! it as the root of a path (`foo_bar::`, `use foo_bar`, `extern crate foo_bar`), in code or in a
//! doc comment (doctests use dependencies too), not in a plain `//` comment.
//!
//! The sources are every `.rs` file in the member's directory (so `src/`, `tests/`, `examples/`,
//! `benches/`, `build.rs`, and targets at paths of their own, like the end-to-end suite's), except
//! under `target/`, hidden directories and directories that are packages of their own.
//!
//! # Known problems
//! A local module named like a dependency and used by a relative path (`mod log; log::x()`)
//! makes the dependency look used. The rule does not check features, nor whether
//! `[workspace.dependencies]` lists crates no member takes.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Problem;

/// The rule's name in a report.
pub(crate) const UNUSED_DEPENDENCY: &str = "unused dependency";

/// The dependency tables of a manifest, at its top level or under a `[target.*]` table.
const SECTIONS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];

/// One dependency a manifest declares.
#[derive(Debug)]
struct Declared {
    /// Its table's header as written between the brackets (`dev-dependencies`,
    /// `target.'cfg(unix)'.dependencies`), spaces and quotes aside.
    table: String,
    /// Its key: the name the sources use, with `_` for `-`.
    name: String,
}

/// Reports each dependency the member in `dir` declares in `manifest` (`text`: the manifest's
/// text, for the line of each declaration; `shown`: its path in the report) that none of the
/// member's Rust sources mentions.
///
/// # Errors
/// If a source cannot be listed or read.
pub(crate) fn check(
    dir: &Path,
    shown: &Path,
    manifest: &toml::Table,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let declared = declared(manifest);
    if declared.is_empty() {
        return Ok(());
    }
    let mut files = Vec::new();
    package_sources(dir, &mut files)?;
    let mut sources = Vec::with_capacity(files.len());
    for file in &files {
        let source =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        sources.push(without_plain_comments(&source));
    }
    let package = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .unwrap_or("?");
    for d in declared {
        let ident = d.name.replace('-', "_");
        if sources.iter().any(|s| mentions(s, &ident)) {
            continue;
        }
        problems.push(Problem {
            path: shown.to_path_buf(),
            line: declaration_line(text, &d.table, &d.name),
            rule: UNUSED_DEPENDENCY,
            detail: Some(format!(
                "crate `{package}` declares `{}` in [{}], but none of its Rust sources names \
                 `{ident}` (as `{ident}::`, `use {ident}` or `extern crate {ident}`): remove it",
                d.name, d.table
            )),
        });
    }
    Ok(())
}

/// Every dependency `manifest` declares, in the order of its tables.
fn declared(manifest: &toml::Table) -> Vec<Declared> {
    let mut tables: Vec<(String, &toml::Table)> = SECTIONS
        .iter()
        .filter_map(|s| Some(((*s).to_owned(), manifest.get(*s)?.as_table()?)))
        .collect();
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for (cfg, target) in targets {
            for s in SECTIONS {
                if let Some(t) = target.get(s).and_then(toml::Value::as_table) {
                    tables.push((format!("target.'{cfg}'.{s}"), t));
                }
            }
        }
    }
    tables
        .into_iter()
        .flat_map(|(table, deps)| {
            deps.keys().map(move |name| Declared {
                table: table.clone(),
                name: name.clone(),
            })
        })
        .collect()
}

/// A table header (what is between the brackets) or a key without the spaces and quotes that
/// may be written around its parts.
fn normalized(header: &str) -> String {
    header
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '"' | '\''))
        .collect()
}

/// The line (from 1) of `manifest` that declares `name` in the table `table`: its key in that
/// table, or a `[table.name]` header of its own.
fn declaration_line(manifest: &str, table: &str, name: &str) -> Option<usize> {
    let table = normalized(table);
    let own = format!("{table}.{name}");
    let mut current = String::new();
    for (i, line) in manifest.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = normalized(header.split(']').next().unwrap_or_default());
            if current == own {
                return Some(i + 1);
            }
        } else if current == table {
            let key = line.split(['=', '.']).next().unwrap_or_default();
            if normalized(key) == name {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The `.rs` files of the package in `dir` ([`super::rust_sources`]), without those of packages
/// nested in it.
fn package_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for file in super::rust_sources(dir)? {
        let nested = file
            .ancestors()
            .skip(1)
            .take_while(|a| *a != dir)
            .any(|a| a.join("Cargo.toml").is_file());
        if !nested {
            out.push(file);
        }
    }
    Ok(())
}

/// `source` with its plain `//` comment lines blanked; doc comments (`///`, `//!`) stay, since
/// their examples are compiled as doctests.
fn without_plain_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| {
            let code = line.trim_start();
            let doc = code.starts_with("///") || code.starts_with("//!");
            if code.starts_with("//") && !doc {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `source` names the crate `ident` as the root of a path: `ident::` (not after another
/// path segment's `::`, nor after a `.`), `use ident;`/`use ident as`, `extern crate ident`.
fn mentions(source: &str, ident: &str) -> bool {
    source.match_indices(ident).any(|(start, _)| {
        let before = &source[..start];
        let after = &source[start + ident.len()..];
        if before.chars().next_back().is_some_and(is_ident_char)
            || after.chars().next().is_some_and(is_ident_char)
        {
            return false;
        }
        let before = before.trim_end();
        let after = after.trim_start();
        if after.starts_with("::") {
            // `a::ident::` is a path inside `a`, and `x.ident::<T>()` a method; a leading `::`
            // (`::ident::x`) is the crate itself.
            let segment = before.strip_suffix("::").is_some_and(|b| {
                b.trim_end()
                    .ends_with(|c: char| is_ident_char(c) || c == '>')
            });
            return !segment && !before.ends_with('.');
        }
        let imported = after.starts_with(';') || after.starts_with("as ") || after.starts_with(',');
        let keyword = |k: &str| {
            before
                .strip_suffix(k)
                .is_some_and(|b| !b.ends_with(is_ident_char))
        };
        imported && (keyword("use") || keyword("extern crate"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_is_mentioned_only_as_the_root_of_a_path() {
        let cases = [
            ("use foo_bar::Thing;", true),
            ("let x = foo_bar::make();", true),
            ("#[derive(foo_bar::Derive)]", true),
            ("foo_bar :: f()", true),
            ("::foo_bar::f()", true),
            ("use foo_bar;", true),
            ("pub use foo_bar as fb;", true),
            ("#[macro_use]\nextern crate foo_bar;", true),
            ("/// use foo_bar::Thing;", true),
            ("let foo_bar = 1;", false),
            ("self.foo_bar::<u8>()", false),
            ("crate::foo_bar::f()", false),
            ("super::foo_bar::f()", false),
            ("use my_foo_bar::x;", false),
            ("use foo_bar_baz::x;", false),
            ("let s = \"foo_bar is a crate\";", false),
        ];
        for (source, expected) in cases {
            assert_eq!(mentions(source, "foo_bar"), expected, "{source:?}");
        }
        let commented = without_plain_comments("// foo_bar::f()\nfn f() {}\n");
        assert!(!mentions(&commented, "foo_bar"));
        let documented = without_plain_comments("//! foo_bar::f()\n");
        assert!(mentions(&documented, "foo_bar"));
    }

    #[test]
    fn a_declaration_is_found_on_its_line() {
        let manifest = "[package]\nname = \"a\"\n\n[dependencies]\nlog.workspace = true\n\
                        serde = { version = \"1\" }\n\n[dev-dependencies]\nlog = \"0.4\"\n\n\
                        [dependencies.libc]\nversion = \"0.2\"\n\n\
                        [target.'cfg(unix)'.dependencies]\nnix = \"0.29\"\n";
        assert_eq!(declaration_line(manifest, "dependencies", "log"), Some(5));
        assert_eq!(declaration_line(manifest, "dependencies", "serde"), Some(6));
        assert_eq!(
            declaration_line(manifest, "dev-dependencies", "log"),
            Some(9)
        );
        assert_eq!(declaration_line(manifest, "dependencies", "libc"), Some(11));
        let table = "target.'cfg(unix)'.dependencies";
        assert_eq!(declaration_line(manifest, table, "nix"), Some(15));
        assert_eq!(
            declaration_line(manifest, "build-dependencies", "log"),
            None
        );
    }
}
