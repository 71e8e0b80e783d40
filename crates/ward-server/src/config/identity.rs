//! Users and groups by name or id, from the system's databases (`getpwnam_r`, `getgrnam_r`,
//! `getgrouplist`, through NSS): what a trigger's `user` and `group` keys name, resolved once when
//! the configuration is, so that no job start looks anything up.

use std::ffi::{CStr, CString};
use std::io;

use serde::Deserialize;

/// A `user` or `group` value as written: a name, or a numeric id (a number, or a string of
/// digits).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(super) enum NameOrId {
    /// `user = 65534`.
    Id(u32),
    /// `user = "nobody"` (or `"65534"`).
    Name(String),
}

impl std::fmt::Display for NameOrId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameOrId::Id(id) => write!(f, "{id}"),
            NameOrId::Name(name) => write!(f, "{name:?}"),
        }
    }
}

impl NameOrId {
    /// The id it names by number, if it does.
    fn id(&self) -> Option<u32> {
        match self {
            NameOrId::Id(id) => Some(*id),
            NameOrId::Name(name)
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name.parse().ok()
            }
            NameOrId::Name(_) => None,
        }
    }
}

/// A user of the passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Account {
    pub(super) name: String,
    pub(super) uid: u32,
    /// Its primary group.
    pub(super) gid: u32,
}

/// The user `who` names.
///
/// # Errors
/// In words: no such user, or the database could not be read.
pub(super) fn user(who: &NameOrId) -> Result<Account, String> {
    let found = match who.id() {
        Some(uid) => lookup(|entry, buf, result| {
            // SAFETY: every pointer is valid for the call: `entry` and `result` for writes,
            // `buf` for `buf.len()` bytes.
            unsafe { libc::getpwuid_r(uid, entry, buf.as_mut_ptr(), buf.len(), result) }
        }),
        None => {
            let name = c_name(who)?;
            lookup(|entry, buf, result| {
                // SAFETY: as above; `name` is NUL-terminated.
                unsafe {
                    libc::getpwnam_r(name.as_ptr(), entry, buf.as_mut_ptr(), buf.len(), result)
                }
            })
        }
    };
    match found {
        Ok(Some((entry, _buf))) => Ok(Account {
            // SAFETY: a filled entry's name points into `_buf`, still alive, NUL-terminated.
            name: unsafe { text(entry.pw_name) },
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }),
        Ok(None) => Err(format!("there is no user {who}")),
        Err(e) => Err(format!("cannot look user {who} up: {e}")),
    }
}

/// The group `which` names: its name and id.
///
/// # Errors
/// In words: no such group, or the database could not be read.
pub(super) fn group(which: &NameOrId) -> Result<(String, u32), String> {
    let found = match which.id() {
        Some(gid) => lookup(|entry, buf, result| {
            // SAFETY: every pointer is valid for the call, as in `user`.
            unsafe { libc::getgrgid_r(gid, entry, buf.as_mut_ptr(), buf.len(), result) }
        }),
        None => {
            let name = c_name(which)?;
            lookup(|entry, buf, result| {
                // SAFETY: as above; `name` is NUL-terminated.
                unsafe {
                    libc::getgrnam_r(name.as_ptr(), entry, buf.as_mut_ptr(), buf.len(), result)
                }
            })
        }
    };
    match found {
        Ok(Some((entry, _buf))) => {
            // SAFETY: a filled entry's name points into `_buf`, still alive, NUL-terminated.
            let name = unsafe { text(entry.gr_name) };
            Ok((name, entry.gr_gid))
        }
        Ok(None) => Err(format!("there is no group {which}")),
        Err(e) => Err(format!("cannot look group {which} up: {e}")),
    }
}

/// The groups `account` is a member of, with `gid` among them: what `initgroups` would give a
/// login of it with that primary group.
///
/// # Errors
/// In words, if the group database cannot be read.
pub(super) fn groups_of(account: &Account, gid: u32) -> Result<Vec<u32>, String> {
    let name = CString::new(account.name.as_bytes())
        .map_err(|_| format!("user name {:?} contains a NUL byte", account.name))?;
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut count = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `groups` has room for `count` ids; `name` is NUL-terminated.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        let count = usize::try_from(count).unwrap_or(0);
        if rc >= 0 {
            groups.truncate(count);
            groups.sort_unstable();
            groups.dedup();
            return Ok(groups);
        }
        // Too small: `count` says how many there are.
        if count <= groups.len() || count > 1 << 16 {
            return Err(format!("cannot list the groups of user {:?}", account.name));
        }
        groups.resize(count, 0);
    }
}

fn c_name(who: &NameOrId) -> Result<CString, String> {
    match who {
        NameOrId::Name(name) if !name.is_empty() => {
            CString::new(name.as_bytes()).map_err(|_| format!("{who} contains a NUL byte"))
        }
        _ => Err(format!("{who} is not a name")),
    }
}

/// # Safety
/// `ptr` must point to a NUL-terminated string.
unsafe fn text(ptr: *const libc::c_char) -> String {
    // SAFETY: as the caller promises.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// Runs a `get*_r` lookup with a buffer that grows while the call says `ERANGE`; the entry found
/// (if any) comes with the buffer its strings point into.
fn lookup<T>(
    mut call: impl FnMut(*mut T, &mut Vec<libc::c_char>, *mut *mut T) -> libc::c_int,
) -> io::Result<Option<(T, Vec<libc::c_char>)>> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: an all-zero passwd or group is a valid value for the call to overwrite.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(&mut entry, &mut buf, &mut result);
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => return Ok(Some((entry, buf))),
            libc::ERANGE if buf.len() < 1 << 20 => {
                let longer = buf.len() * 2;
                buf.resize(longer, 0);
            }
            // "Not found" may come as one of these, as the manual page allows.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_are_found_by_name_and_by_id() {
        let root = user(&NameOrId::Name("root".into())).unwrap();
        assert_eq!((root.name.as_str(), root.uid, root.gid), ("root", 0, 0));
        assert_eq!(user(&NameOrId::Id(0)).unwrap(), root);
        assert_eq!(user(&NameOrId::Name("0".into())).unwrap(), root);
        assert_eq!(group(&NameOrId::Id(0)).unwrap().1, 0);
        assert_eq!(
            group(&NameOrId::Name("root".into())).unwrap(),
            ("root".into(), 0)
        );
        assert!(groups_of(&root, 0).unwrap().contains(&0));
        let err = user(&NameOrId::Name("no-such-user-of-ward".into())).unwrap_err();
        assert_eq!(err, "there is no user \"no-such-user-of-ward\"");
        let err = group(&NameOrId::Id(4_000_000_000)).unwrap_err();
        assert_eq!(err, "there is no group 4000000000");
    }
}
