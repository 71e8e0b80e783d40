//! The fallback for platforms other than Linux: everything builds, spawning says why it cannot.

use std::ffi::OsString;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::Spawned;
use crate::{CgroupEvidence, ChildSpec, Error, Result};

const WHY: &str = "no PR_SET_PDEATHSIG";

/// Never used: nothing is ever spawned here.
pub(crate) const MAXRSS_UNIT: u64 = 1;

/// The classic signals only: nothing is ever signalled here.
pub(crate) fn max_signal() -> i32 {
    31
}

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Err(Error::Unsupported(WHY))
}

/// See the Linux version.
#[derive(Debug)]
pub(crate) struct Cgroup;

impl Cgroup {
    pub(crate) fn path(&self) -> &Path {
        Path::new("")
    }
    pub(crate) fn evidence(&self) -> CgroupEvidence {
        unreachable!("no cgroup is ever created on this platform")
    }
    pub(crate) fn remove(&self) {}
    pub(crate) fn kill_all(&self) {}
}

pub(crate) fn create_memory_cgroup(_limit: Option<u64>) -> Result<Cgroup> {
    Err(Error::Unsupported(WHY))
}

pub(crate) fn probe_memory_cgroup() -> Result<PathBuf> {
    Err(Error::Unsupported(WHY))
}

pub(crate) fn spawn(
    spec: &ChildSpec,
    _extra_env: &[(OsString, OsString)],
    _keep_fds: Vec<RawFd>,
    _cgroup: Option<&Cgroup>,
) -> Result<Spawned> {
    log::debug!("cannot spawn {:?} on this platform: {WHY}", spec.program);
    Err(Error::Unsupported(WHY))
}
