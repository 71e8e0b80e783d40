//! Platform code: what runs in the child between fork and exec, and memory cgroups. Linux is
//! implemented; every other platform builds and answers [`Error::Unsupported`](crate::Error).

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod unsupported;
#[cfg(not(target_os = "linux"))]
pub(crate) use unsupported::*;
