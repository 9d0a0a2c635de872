//! Users and groups from a container's own `/etc/passwd` and `/etc/group`.
//!
//! agentd is static (musl), so there is no NSS: the files are parsed here, as runc does. They
//! belong to the image, so they are read with care ([`read_db`]): resolved inside the container's
//! root, regular files only (a FIFO would block the exec, and the dispatcher with it), at most
//! [`DB_LIMIT`] bytes.

use std::path::Path;

use msb_protocol::boot::{IdRef, UserSpec};

use crate::inroot;

/// Largest `/etc/passwd` or `/etc/group` agentd reads (1 MiB, thousands of entries).
pub const DB_LIMIT: u64 = 1024 * 1024;

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups from `/etc/group`.
    pub groups: Vec<u32>,
    /// Home directory (`/` when unknown).
    pub home: String,
}

/// Why a user could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A name that the container's `/etc/passwd` does not know.
    #[error("user {0:?} not found in the container's /etc/passwd")]
    NoSuchUser(String),
    /// A group name that `/etc/group` does not know.
    #[error("group {0:?} not found in the container's /etc/group")]
    NoSuchGroup(String),
    /// `/etc/passwd` or `/etc/group` is there but cannot be used.
    #[error("the container's {file}: {reason}")]
    Database {
        /// The file, in the container.
        file: String,
        /// Why (not a regular file, larger than [`DB_LIMIT`], an I/O error).
        reason: String,
    },
}

/// The content of `file` (`/etc/passwd`, `/etc/group`) in the container root `root`, resolved
/// inside it; empty when missing (an image may have neither), lossily decoded. A file that is
/// not regular or larger than [`DB_LIMIT`] is an error naming it.
pub fn read_db(root: &Path, file: &str) -> Result<String, UserError> {
    match inroot::read_regular(root, file, DB_LIMIT) {
        Ok(Some(data)) => Ok(String::from_utf8_lossy(&data).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(UserError::Database {
            file: file.to_owned(),
            reason: e.to_string(),
        }),
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `(name, gid, members)` of each well-formed line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (default root) against the file contents; `extra` are OCI
/// `additionalGids`. Numeric users absent from passwd are allowed (gid defaults to 0 unless given).
pub fn resolve(
    spec: Option<&UserSpec>,
    passwd: &str,
    group: &str,
    extra: &[u32],
) -> Result<Identity, UserError> {
    let root = UserSpec {
        user: IdRef::Id(0),
        group: None,
    };
    let spec = spec.unwrap_or(&root);
    let (uid, mut gid, home, name) = match &spec.user {
        IdRef::Id(uid) => match passwd_entries(passwd).find(|e| e.uid == *uid) {
            Some(e) => (e.uid, e.gid, e.home.to_owned(), Some(e.name.to_owned())),
            None => (*uid, 0, "/".to_owned(), None),
        },
        IdRef::Name(n) => {
            let e = passwd_entries(passwd)
                .find(|e| e.name == n)
                .ok_or_else(|| UserError::NoSuchUser(n.clone()))?;
            (e.uid, e.gid, e.home.to_owned(), Some(e.name.to_owned()))
        }
    };
    match &spec.group {
        Some(IdRef::Id(g)) => gid = *g,
        Some(IdRef::Name(n)) => {
            gid = group_entries(group)
                .find(|(name, _, _)| name == n)
                .map(|(_, g, _)| g)
                .ok_or_else(|| UserError::NoSuchGroup(n.clone()))?;
        }
        None => {}
    }
    let mut groups = vec![gid];
    if let Some(name) = &name {
        groups.extend(
            group_entries(group)
                .filter(|(_, _, m)| m.contains(&name.as_str()))
                .map(|(_, g, _)| g),
        );
    }
    groups.extend_from_slice(extra);
    let mut seen = std::collections::HashSet::new();
    groups.retain(|g| seen.insert(*g));
    Ok(Identity {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:100:Alice:/home/alice:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nwheel:x:10:alice,bob\ndocker:x:999:alice\n";

    fn spec(s: &str) -> UserSpec {
        UserSpec::parse(s).unwrap()
    }

    #[test]
    fn default_is_root() {
        let id = resolve(None, PASSWD, GROUP, &[]).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups, id.home.as_str()),
            (0, 0, vec![0], "/root")
        );
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let id = resolve(Some(&spec("alice")), PASSWD, GROUP, &[5]).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups, id.home.as_str()),
            (1000, 100, vec![100, 10, 999, 5], "/home/alice")
        );
        let id = resolve(Some(&spec("alice:wheel")), PASSWD, GROUP, &[]).unwrap();
        assert_eq!((id.gid, id.groups), (10, vec![10, 999]));
    }

    #[test]
    fn numeric_ids_need_no_entry() {
        let id = resolve(Some(&spec("4242:4343")), PASSWD, GROUP, &[]).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups, id.home.as_str()),
            (4242, 4343, vec![4343], "/")
        );
    }

    #[test]
    fn databases_are_bounded_regular_files_of_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(
            read_db(r, "/etc/passwd"),
            Ok(String::new()),
            "missing is empty"
        );
        std::fs::create_dir(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), PASSWD).unwrap();
        assert_eq!(read_db(r, "/etc/passwd").as_deref(), Ok(PASSWD));
        nix::unistd::mkfifo(
            &r.join("etc/group"),
            nix::sys::stat::Mode::from_bits_retain(0o644),
        )
        .unwrap();
        assert_eq!(
            read_db(r, "/etc/group").unwrap_err().to_string(),
            "the container's /etc/group: not a regular file (FIFO)"
        );
        let big = vec![b'#'; usize::try_from(DB_LIMIT).unwrap() + 1];
        std::fs::write(r.join("etc/passwd"), big).unwrap();
        assert_eq!(
            read_db(r, "/etc/passwd").unwrap_err().to_string(),
            "the container's /etc/passwd: larger than 1048576 bytes"
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve(Some(&spec("mallory")), PASSWD, GROUP, &[]),
            Err(UserError::NoSuchUser("mallory".into()))
        );
        assert_eq!(
            resolve(Some(&spec("alice:nope")), PASSWD, GROUP, &[]),
            Err(UserError::NoSuchGroup("nope".into()))
        );
    }
}
