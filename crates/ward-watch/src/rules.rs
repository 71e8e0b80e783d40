//! Ignore rules: globs and gitignore-style ignore files, shared by the watcher and the snapshot so
//! that both see the same tree.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

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
            return Ok(files.remove(dir).is_some());
        }
        let mut builder = GitignoreBuilder::new(dir);
        let partial = builder.add(&path);
        let gi = builder.build().map_err(|source| Error::IgnoreFile {
            path: path.clone(),
            source,
        })?;
        files.insert(dir.to_path_buf(), gi);
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
        }
    }
}
