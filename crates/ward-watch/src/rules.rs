//! Ignore rules: globs and gitignore-style ignore files, shared by the watcher and the snapshot so
//! that both see the same tree.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::Error;

/// Which paths the watcher leaves alone: ignore globs and gitignore-style ignore files.
///
/// Globs are matched against a path relative to its root (`build/**`, `**/*.tmp`, `*.log`; a `*`
/// also matches `/`). An ignore file (for example `.wardignore`) in any watched directory applies
/// gitignore syntax to that directory's subtree, the deeper file winning, as in git. Ignore files
/// are read when their directory is walked, and again when they change.
///
/// An ignored directory is never watched nor walked, so nothing inside it is ever reported.
#[derive(Debug)]
pub struct IgnoreRules {
    roots: Vec<PathBuf>,
    globs: GlobSet,
    file_name: Option<OsString>,
    /// Parsed ignore files, by the directory that holds them.
    files: RwLock<HashMap<PathBuf, Gitignore>>,
    /// Bumped whenever `files` changes: what caches an answer of the rules (the fanotify
    /// backend's, per directory) asks again once it moves.
    generation: AtomicU64,
}

impl IgnoreRules {
    /// Rules for `roots`, with `globs` and the ignore files called `file_name`.
    ///
    /// # Errors
    /// [`Error::Glob`] if a glob does not parse.
    pub fn new(
        roots: Vec<PathBuf>,
        globs: &[String],
        file_name: Option<OsString>,
    ) -> Result<Self, Error> {
        let mut set = GlobSetBuilder::new();
        for g in globs {
            set.add(Glob::new(g).map_err(|source| Error::Glob {
                glob: g.clone(),
                source,
            })?);
        }
        let globs = set.build().map_err(|source| Error::Glob {
            glob: globs.join(", "),
            source,
        })?;
        Ok(IgnoreRules {
            roots,
            globs,
            file_name,
            files: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        })
    }

    /// The roots these rules apply to.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The root `path` lies in (the deepest one, if roots nest).
    pub fn root_of(&self, path: &Path) -> Option<&Path> {
        self.roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
            .map(PathBuf::as_path)
    }

    /// Whether `path` is the ignore file of its directory.
    pub fn is_ignore_file(&self, path: &Path) -> bool {
        self.file_name
            .as_deref()
            .is_some_and(|n| path.file_name() == Some(n))
    }

    /// Whether `path` (a directory if `is_dir`) is ignored. A root is never ignored, and a path
    /// outside every root always is.
    pub fn is_ignored(&self, path: &Path, is_dir: bool) -> bool {
        let Some(root) = self.root_of(path) else {
            return true;
        };
        let Ok(rel) = path.strip_prefix(root) else {
            return true;
        };
        if rel.as_os_str().is_empty() {
            return false;
        }
        if !self.globs.is_empty() && self.globs.is_match(rel) {
            return true;
        }
        if self.file_name.is_none() {
            return false;
        }
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        for dir in path.ancestors().skip(1) {
            if let Some(gi) = files.get(dir) {
                let m = gi.matched(path, is_dir);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    return false;
                }
            }
            if dir == root {
                break;
            }
        }
        false
    }

    /// Whether the directory `dir`, or one above it up to its root, is ignored: whether anything
    /// in `dir` is out of the watcher's sight (a backend that sees every directory, fanotify,
    /// asks it of each event's directory).
    pub fn is_ignored_within(&self, dir: &Path) -> bool {
        let Some(root) = self.root_of(dir) else {
            return true;
        };
        dir.ancestors()
            .take_while(|d| *d != root)
            .any(|d| self.is_ignored(d, true))
    }

    /// A number that changes whenever an ignore file is read, dropped or forgotten.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The rules as they apply to the entries of the directory `dir`, looked up once for all of
    /// them: a walk asks about every entry, and most directories have no ignore file.
    pub(crate) fn in_dir(&self, dir: &Path) -> DirRules<'_> {
        let root = self.root_of(dir);
        let rel = root
            .and_then(|r| dir.strip_prefix(r).ok())
            .map(Path::to_path_buf);
        let mut with_files = Vec::new();
        if let Some(root) = root
            && self.file_name.is_some()
        {
            let files = self.files.read().unwrap_or_else(|e| e.into_inner());
            if !files.is_empty() {
                for ancestor in dir.ancestors() {
                    if files.contains_key(ancestor) {
                        with_files.push(ancestor.to_path_buf());
                    }
                    if ancestor == root {
                        break;
                    }
                }
            }
        }
        let roots_inside = self
            .roots
            .iter()
            .filter(|r| r.parent() == Some(dir))
            .filter_map(|r| r.file_name().map(OsStr::to_os_string))
            .collect();
        DirRules {
            rules: self,
            rel,
            with_files,
            roots_inside,
        }
    }

    /// Reads (or re-reads) the ignore file of `dir`, if there is one. Returns whether `dir` has
    /// (or just lost) an ignore file.
    ///
    /// # Errors
    /// [`Error::IgnoreFile`] if the file exists but part of it cannot be read or parsed; the lines
    /// that parsed still apply.
    pub fn load_dir(&self, dir: &Path) -> Result<bool, Error> {
        let Some(name) = &self.file_name else {
            return Ok(false);
        };
        let path = dir.join(name);
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        if !path.is_file() {
            let had = files.remove(dir).is_some();
            if had {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            return Ok(had);
        }
        let mut builder = GitignoreBuilder::new(dir);
        let partial = builder.add(&path);
        let gi = builder.build().map_err(|source| Error::IgnoreFile {
            path: path.clone(),
            source,
        })?;
        files.insert(dir.to_path_buf(), gi);
        self.generation.fetch_add(1, Ordering::AcqRel);
        match partial {
            Some(source) => Err(Error::IgnoreFile { path, source }),
            None => Ok(true),
        }
    }

    /// Forgets the ignore files in `dir`'s subtree (the directory is gone).
    pub(crate) fn forget_subtree(&self, dir: &Path) {
        if self.file_name.is_some() {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            files.retain(|d, _| !d.starts_with(dir));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// [`IgnoreRules`] for the entries of one directory: [`IgnoreRules::is_ignored`] with what does
/// not change from entry to entry (the root, the directories that have an ignore file) looked up
/// once.
#[derive(Debug)]
pub(crate) struct DirRules<'a> {
    rules: &'a IgnoreRules,
    /// The directory relative to its root; `None` outside every root.
    rel: Option<PathBuf>,
    /// The directory and its ancestors up to its root that have an ignore file, deepest first.
    with_files: Vec<PathBuf>,
    /// The names of the entries that are roots themselves (never ignored; their subtrees go by
    /// their own rules).
    roots_inside: Vec<OsString>,
}

impl DirRules<'_> {
    /// Whether the entry `name` of the directory `dir` (the one these rules are for) is ignored:
    /// the same answer as [`IgnoreRules::is_ignored`]`(dir.join(name), is_dir)`.
    pub(crate) fn is_ignored(&self, dir: &Path, name: &OsStr, is_dir: bool) -> bool {
        if self.roots_inside.iter().any(|r| r == name) {
            return false;
        }
        let Some(rel) = &self.rel else {
            return true;
        };
        if !self.rules.globs.is_empty() && self.rules.globs.is_match(rel.join(name)) {
            return true;
        }
        if self.with_files.is_empty() {
            return false;
        }
        let path = dir.join(name);
        let files = self.rules.files.read().unwrap_or_else(|e| e.into_inner());
        for with_file in &self.with_files {
            if let Some(gi) = files.get(with_file) {
                let m = gi.matched(&path, is_dir);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    return false;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DirRules` is a shortcut: it must answer as `is_ignored` does, entry by entry.
    #[test]
    fn rules_for_a_directory_answer_as_the_rules_do_for_each_entry() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let nested = top.join("sub/nested-root");
        for d in ["sub/deeper/more", "sub/nested-root/inner", "build", "other"] {
            std::fs::create_dir_all(top.join(d)).unwrap();
        }
        std::fs::write(top.join(".wardignore"), "*.log\nbuild/\n!keep.log\n").unwrap();
        std::fs::write(top.join("sub/.wardignore"), "deeper/more/\n*.o\n!x.log\n").unwrap();
        std::fs::write(top.join("sub/nested-root/.wardignore"), "*.tmp\n").unwrap();
        let rules = IgnoreRules::new(
            vec![top.clone(), nested.clone()],
            &["**/*.bak".into(), "other/skip".into()],
            Some(".wardignore".into()),
        )
        .unwrap();
        for d in [&top, &top.join("sub"), &nested] {
            rules.load_dir(d).unwrap();
        }
        let dirs = [
            top.clone(),
            top.join("sub"),
            top.join("sub/deeper"),
            top.join("sub/deeper/more"),
            nested.clone(),
            nested.join("inner"),
            top.join("other"),
            top.join("build"),
            dir.path().to_path_buf(),
        ];
        let names = [
            "a",
            "a.log",
            "keep.log",
            "x.log",
            "b.o",
            "c.bak",
            "d.tmp",
            "build",
            "more",
            "skip",
            "sub",
            "nested-root",
            "top",
            "inner",
        ];
        let mut checked = 0;
        for d in &dirs {
            let in_dir = rules.in_dir(d);
            for name in names {
                for is_dir in [false, true] {
                    let path = d.join(name);
                    assert_eq!(
                        in_dir.is_ignored(d, OsStr::new(name), is_dir),
                        rules.is_ignored(&path, is_dir),
                        "{} (directory: {is_dir})",
                        path.display()
                    );
                    checked += 1;
                }
            }
        }
        // The table holds both answers, so the comparison can fail either way.
        let ignored = |p: &str, is_dir| rules.is_ignored(&top.join(p), is_dir);
        assert!(
            ignored("sub/x.o", false) && !ignored("sub/x.log", false) && ignored("a.log", false)
        );
        assert!(
            !ignored("sub/nested-root/a.log", false) && ignored("sub/nested-root/d.tmp", false)
        );
        assert_eq!(checked, dirs.len() * names.len() * 2);
    }
}
