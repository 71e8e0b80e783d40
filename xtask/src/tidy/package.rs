//! The packaging rules of `cargo xtask tidy`: every workspace member that may be published (no
//! `publish = false`) says what crates.io and docs.rs show of it, ships the license texts its
//! `license` names, and has a README whose links work where crates.io shows it, outside the
//! repository.
//!
//! It reads manifests and READMEs only. Whether `cargo package` really puts the license files in
//! the `.crate`, and whether the packaged crate builds on its own, is `.ci/run`'s `cargo package`
//! step; the values crates.io would refuse or ignore (a keyword it cannot index, a category slug
//! it does not know) are checked here, where the error says which.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::Problem;

pub(crate) const MISSING_FIELD: &str = "publishable crate lacks a field crates.io or docs.rs shows";
pub(crate) const BAD_KEYWORD: &str = "keyword crates.io would refuse";
pub(crate) const BAD_CATEGORY: &str = "not a crates.io category slug";
pub(crate) const NO_LICENSE_FILE: &str = "publishable crate does not ship a license text";
pub(crate) const NO_DOCS_RS: &str = "library crate has no [package.metadata.docs.rs]";
pub(crate) const RELATIVE_LINK: &str =
    "relative link in a crate README: it is broken on crates.io, link to the repository";

/// The license files each crate ships: both texts of `MIT OR Apache-2.0`, symlinks to the root's.
const LICENSE_FILES: [&str; 2] = ["LICENSE-MIT", "LICENSE-APACHE"];

/// The fields, in `[package]` or inherited from `[workspace.package]`, that a published crate
/// needs for its crates.io page.
const FIELDS: [&str; 6] = [
    "description",
    "license",
    "repository",
    "readme",
    "keywords",
    "categories",
];

/// crates.io's limits on keywords and categories per crate.
const MAX_KEYWORDS: usize = 5;
const MAX_KEYWORD_LEN: usize = 20;

/// The category slugs crates.io knows: `src/boot/categories.toml` in rust-lang/crates.io. A slug
/// missing here that crates.io has added since is a line to add.
const CATEGORIES: &[&str] = &[
    "algorithms",
    "api-bindings",
    "asynchronous",
    "authentication",
    "caching",
    "command-line-interface",
    "command-line-utilities",
    "compression",
    "computer-vision",
    "concurrency",
    "config",
    "cryptography",
    "cryptography::cryptocurrencies",
    "data-structures",
    "database",
    "database-implementations",
    "date-and-time",
    "development-tools",
    "development-tools::build-utils",
    "development-tools::cargo-plugins",
    "development-tools::debugging",
    "development-tools::ffi",
    "development-tools::procedural-macro-helpers",
    "development-tools::profiling",
    "development-tools::testing",
    "email",
    "embedded",
    "emulators",
    "encoding",
    "external-ffi-bindings",
    "filesystem",
    "game-development",
    "game-engines",
    "games",
    "graphics",
    "gui",
    "hardware-support",
    "internationalization",
    "localization",
    "mathematics",
    "memory-management",
    "multimedia",
    "multimedia::audio",
    "multimedia::encoding",
    "multimedia::images",
    "multimedia::video",
    "network-programming",
    "no-std",
    "os",
    "os::linux-apis",
    "os::macos-apis",
    "os::unix-apis",
    "os::windows-apis",
    "parser-implementations",
    "parsing",
    "rendering",
    "rendering::data-formats",
    "rendering::engine",
    "rendering::graphics-api",
    "rust-patterns",
    "science",
    "science::robotics",
    "simulation",
    "template-engine",
    "text-editors",
    "text-processing",
    "value-formatting",
    "visualization",
    "wasm",
    "web-programming",
    "web-programming::http-client",
    "web-programming::http-server",
    "web-programming::websocket",
];

/// The packaging rules for the member in `dir` (`shown`: its directory in reports), whose
/// manifest is `manifest`; `workspace_package` is the root's `[workspace.package]`, where the
/// fields a member inherits (`license.workspace = true`) are.
///
/// # Errors
/// If the member's README exists but cannot be read.
pub(crate) fn check(
    dir: &Path,
    shown: &Path,
    manifest: &toml::Table,
    workspace_package: Option<&toml::Table>,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let Some(package) = manifest.get("package").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    if package.get("publish").and_then(toml::Value::as_bool) == Some(false) {
        return Ok(());
    }
    let cargo_toml = shown.join("Cargo.toml");
    let report = |path: &Path, line, rule, detail: Option<String>| Problem {
        path: path.to_path_buf(),
        line,
        rule,
        detail,
    };
    for field in FIELDS {
        if resolve(package, workspace_package, field).is_none() {
            problems.push(report(
                &cargo_toml,
                None,
                MISSING_FIELD,
                Some(format!("`{field}`")),
            ));
        }
    }
    for keyword in strings(resolve(package, workspace_package, "keywords")) {
        if !valid_keyword(keyword) {
            problems.push(report(
                &cargo_toml,
                None,
                BAD_KEYWORD,
                Some(format!(
                    "`{keyword}`: at most {MAX_KEYWORD_LEN} ASCII letters, digits, `-`, `_` \
                     or `+`, starting with a letter or digit"
                )),
            ));
        }
    }
    let keywords = strings(resolve(package, workspace_package, "keywords")).len();
    if keywords > MAX_KEYWORDS {
        problems.push(report(
            &cargo_toml,
            None,
            BAD_KEYWORD,
            Some(format!(
                "{keywords} keywords, crates.io takes {MAX_KEYWORDS}"
            )),
        ));
    }
    let categories = strings(resolve(package, workspace_package, "categories"));
    for category in &categories {
        if !CATEGORIES.contains(category) {
            problems.push(report(
                &cargo_toml,
                None,
                BAD_CATEGORY,
                Some(format!("`{category}`")),
            ));
        }
    }
    if categories.len() > MAX_KEYWORDS {
        problems.push(report(
            &cargo_toml,
            None,
            BAD_CATEGORY,
            Some(format!(
                "{} categories, crates.io takes {MAX_KEYWORDS}",
                categories.len()
            )),
        ));
    }
    for file in LICENSE_FILES {
        // `is_file` follows the symlink: a dangling one is missing too.
        if !dir.join(file).is_file() {
            problems.push(report(
                &shown.join(file),
                None,
                NO_LICENSE_FILE,
                Some(format!(
                    "link it to the root's: `ln -s ../../{file} {}`",
                    shown.join(file).display()
                )),
            ));
        }
    }
    if is_library(dir, manifest) && docs_rs(package).is_none() {
        problems.push(report(&cargo_toml, None, NO_DOCS_RS, None));
    }
    let readme = dir.join("README.md");
    if readme.is_file() {
        let text =
            fs::read_to_string(&readme).with_context(|| format!("reading {}", readme.display()))?;
        for (line, target) in relative_links(&text) {
            problems.push(report(
                &shown.join("README.md"),
                Some(line),
                RELATIVE_LINK,
                Some(format!("`{target}`")),
            ));
        }
    }
    Ok(())
}

/// The value of `field` in `[package]`, or in `[workspace.package]` when the member inherits it.
fn resolve<'a>(
    package: &'a toml::Table,
    workspace_package: Option<&'a toml::Table>,
    field: &str,
) -> Option<&'a toml::Value> {
    let value = package.get(field)?;
    let inherits = value
        .get("workspace")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    if inherits {
        workspace_package?.get(field)
    } else {
        Some(value)
    }
}

fn strings(value: Option<&toml::Value>) -> Vec<&str> {
    value
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
        .unwrap_or_default()
}

/// crates.io's rule for a keyword.
fn valid_keyword(keyword: &str) -> bool {
    let mut chars = keyword.chars();
    keyword.len() <= MAX_KEYWORD_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'))
}

/// Whether the member has a library target: docs.rs documents nothing else.
fn is_library(dir: &Path, manifest: &toml::Table) -> bool {
    manifest.contains_key("lib") || dir.join("src/lib.rs").is_file()
}

fn docs_rs(package: &toml::Table) -> Option<&toml::Value> {
    package.get("metadata")?.get("docs")?.get("rs")
}

/// The links in Markdown `text` that are relative (no scheme, not an anchor in the page), with
/// their line numbers: inline links `[text](target)` and reference definitions `[name]: target`,
/// outside fenced code blocks.
fn relative_links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut targets = Vec::new();
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(&rest[..end]);
            rest = &rest[end..];
        }
        if let Some(def) = trimmed.strip_prefix('[')
            && let Some((_, target)) = def.split_once("]:")
        {
            targets.push(target);
        }
        for target in targets {
            // `[text](url "title")`: the url is the first word.
            let target = target.split_whitespace().next().unwrap_or("");
            let target = target.trim_start_matches('<').trim_end_matches('>');
            if !(target.is_empty() || target.starts_with('#') || target.contains(':')) {
                found.push((i + 1, target.to_owned()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links_are_found_absolute_ones_and_code_are_not() {
        let text = "Part of [ward](../../README.md), see [docs](https://docs.rs/x).\n\
                    [top](#usage) and [mail](mailto:a@b.c)\n\
                    ```rust\nlet x = v[0](1);\n```\n\
                    [ref]: ARCHITECTURE.md\n[abs]: https://example.com/\n\
                    two on a line: [a](a.md \"title\") [b](<b c.md>)\n";
        assert_eq!(
            relative_links(text),
            [
                (1, "../../README.md".to_owned()),
                (6, "ARCHITECTURE.md".to_owned()),
                (8, "a.md".to_owned()),
                (8, "b".to_owned()),
            ]
        );
    }

    #[test]
    fn keywords_follow_crates_io_rules() {
        for good in [
            "watch",
            "file-watcher",
            "c++",
            "a_b",
            "x86",
            "abcdefghij0123456789",
        ] {
            assert!(valid_keyword(good), "{good}");
        }
        for bad in [
            "",
            "-x",
            "two words",
            "post.mortem",
            "abcdefghij01234567890",
            "été",
        ] {
            assert!(!valid_keyword(bad), "{bad}");
        }
    }

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    fn rules(dir: &Path, manifest: &str, workspace: &str) -> Vec<(&'static str, Option<String>)> {
        let mut problems = Vec::new();
        let workspace = table(workspace);
        check(
            dir,
            Path::new("c"),
            &table(manifest),
            workspace.get("package").and_then(toml::Value::as_table),
            &mut problems,
        )
        .unwrap();
        problems.into_iter().map(|p| (p.rule, p.detail)).collect()
    }

    #[test]
    fn a_publishable_crate_is_checked_and_an_unpublished_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("src/lib.rs"), "//! c\n").unwrap();
        fs::write(root.join("README.md"), "Part of [ward](../../README.md).\n").unwrap();
        fs::write(root.join("LICENSE-MIT"), "MIT\n").unwrap();
        let workspace = "[package]\nlicense = \"MIT OR Apache-2.0\"\n";
        let manifest = "[package]\nname = \"c\"\ndescription = \"d\"\nreadme = \"README.md\"\n\
                        license.workspace = true\nrepository.workspace = true\n\
                        keywords = [\"ok\", \"not ok\"]\ncategories = [\"filesystem\", \"files\"]\n";
        let found = rules(root, manifest, workspace);
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            found.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            [
                MISSING_FIELD,
                BAD_KEYWORD,
                BAD_CATEGORY,
                NO_LICENSE_FILE,
                NO_DOCS_RS,
                RELATIVE_LINK
            ]
        );
        // The inherited license resolved; the inherited repository the workspace lacks did not.
        assert_eq!(found[0].1, some("`repository`"));
        assert_eq!(found[2].1, some("`files`"));
        assert!(found[3].1.as_deref().unwrap().contains("LICENSE-APACHE"));
        assert_eq!(found[5].1, some("`../../README.md`"));

        let unpublished = format!("{manifest}publish = false\n");
        assert_eq!(rules(root, &unpublished, workspace), []);
    }

    #[test]
    fn too_many_keywords_or_categories_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = "[package]\nkeywords = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\"]\n\
                        categories = [\"os\", \"os\", \"os\", \"os\", \"os\", \"os\"]\n";
        let found: Vec<_> = rules(dir.path(), manifest, "")
            .into_iter()
            .filter(|(r, _)| *r != MISSING_FIELD && *r != NO_LICENSE_FILE)
            .collect();
        assert_eq!(
            found,
            [
                (
                    BAD_KEYWORD,
                    Some("6 keywords, crates.io takes 5".to_owned())
                ),
                (
                    BAD_CATEGORY,
                    Some("6 categories, crates.io takes 5".to_owned())
                ),
            ]
        );
    }
}
