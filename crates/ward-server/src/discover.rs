//! Finding the project a command means when the command line names none, as git finds `.git`
//! and cargo finds `Cargo.toml`: the nearest directory, from the current one up, that holds a
//! `ward.toml` or a `.ward` state directory.
//!
//! A command line that describes its own job (`--watch` or a command after `--`) is a quick
//! launch of the current directory and searches nothing: it would be a surprise for a parent's
//! `ward.toml` to add its triggers to a one-off command.

use std::path::{Path, PathBuf};

use crate::Launch;

/// The config file name searched for.
pub const CONFIG_FILE: &str = "ward.toml";
/// The state directory's default name, beside the config file.
pub const STATE_DIR: &str = ".ward";

/// Where a launch's config file and state directory came from, for the "not running" answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// The command line or the environment named them (or the launch was recorded).
    #[default]
    Given,
    /// A quick launch of the current directory: nothing was searched.
    Quick,
    /// Found in this directory, searching up from the current one.
    Found(PathBuf),
    /// Nothing was found searching up from this directory.
    NotFound(PathBuf),
}

impl Origin {
    /// Where the command looked, and how to point it elsewhere: the end of every answer that
    /// says ward is not running, or has nothing to run.
    pub fn hint(&self) -> String {
        let elsewhere =
            "-c FILE or --state-dir DIR (or WARD_CONFIG, WARD_STATE_DIR) point elsewhere";
        match self {
            Origin::Given => format!("as given; {elsewhere}"),
            Origin::Quick => format!("a quick launch uses the current directory; {elsewhere}"),
            Origin::Found(dir) => {
                format!("found by searching up to {}; {elsewhere}", dir.display())
            }
            Origin::NotFound(from) => format!(
                "no {CONFIG_FILE} or {STATE_DIR} in {} or any parent; {elsewhere}",
                from.display()
            ),
        }
    }
}

/// `launch` with its config file or state directory found by searching up from `cwd`, when it
/// names neither and is not a quick launch.
pub fn discover(launch: Launch, cwd: &Path) -> Launch {
    if launch.config_file.is_some() || launch.state_dir.is_some() {
        return launch;
    }
    if !launch.flags.watch.is_empty() || !launch.flags.command.is_empty() {
        return Launch {
            origin: Origin::Quick,
            ..launch
        };
    }
    for dir in cwd.ancestors() {
        let file = dir.join(CONFIG_FILE);
        if file.is_file() {
            return Launch {
                config_file: Some(file),
                origin: Origin::Found(dir.to_path_buf()),
                ..launch
            };
        }
        let state = dir.join(STATE_DIR);
        if state.is_dir() {
            return Launch {
                state_dir: Some(state),
                origin: Origin::Found(dir.to_path_buf()),
                ..launch
            };
        }
    }
    Launch {
        origin: Origin::NotFound(cwd.to_path_buf()),
        ..launch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;

    #[test]
    fn the_nearest_config_or_state_dir_up_the_tree_is_found() {
        let top = tempfile::tempdir().unwrap();
        let deep = top.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        let nothing = discover(Launch::default(), &deep);
        assert_eq!(nothing.origin, Origin::NotFound(deep.clone()));
        assert_eq!(nothing.config_file, None);

        std::fs::write(top.path().join(CONFIG_FILE), "").unwrap();
        let found = discover(Launch::default(), &deep);
        assert_eq!(found.config_file, Some(top.path().join(CONFIG_FILE)));
        assert_eq!(found.origin, Origin::Found(top.path().to_path_buf()));

        // A nearer state directory (a quick launch started there) wins over a farther file.
        std::fs::create_dir(top.path().join("a/b").join(STATE_DIR)).unwrap();
        let nearer = discover(Launch::default(), &deep);
        assert_eq!(nearer.state_dir, Some(top.path().join("a/b/.ward")));
        assert_eq!(nearer.config_file, None);
    }

    #[test]
    fn a_named_or_quick_launch_searches_nothing() {
        let top = tempfile::tempdir().unwrap();
        std::fs::write(top.path().join(CONFIG_FILE), "").unwrap();
        let quick = Launch {
            flags: Flags {
                command: vec!["true".into()],
                ..Flags::default()
            },
            ..Launch::default()
        };
        let kept = discover(quick, top.path());
        assert_eq!((kept.config_file, kept.origin), (None, Origin::Quick));
        let named = Launch {
            state_dir: Some("elsewhere".into()),
            ..Launch::default()
        };
        let kept = discover(named, top.path());
        assert_eq!((kept.config_file, kept.origin), (None, Origin::Given));
        // --workers alone changes a found file's setting: it searches.
        let tuned = Launch {
            flags: Flags {
                workers: Some(3),
                ..Flags::default()
            },
            ..Launch::default()
        };
        assert_eq!(
            discover(tuned, top.path()).config_file,
            Some(top.path().join(CONFIG_FILE))
        );
    }
}
