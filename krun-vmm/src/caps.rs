//! The VMM's capabilities: what libkrun's virtio-fs needs, and nothing else.
//!
//! The krun VMM stays root: libkrun's passthrough file system serves the guest's files as their
//! owners, switching the effective uid and gid per request (`setresuid(-1, uid, -1)`) and back
//! to 0, which only a process whose effective uid can return to 0 can do. A VMM under another
//! uid would create every guest file as that uid and refuse the guest's `chown` (libkrun falls
//! back to that mode when it lacks `CAP_SETUID`), which breaks images and volumes that rely on
//! owners. So, as virtiofsd does, it keeps root but only these capabilities:
//!
//! - [`FILE_SERVER`]: `CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `FSETID`, `SETGID`, `SETUID`, `MKNOD`
//!   and `SETFCAP`: what libkrun's passthrough file system uses (it checks `SETUID`, `SETGID`
//!   and `FOWNER`, and drops `FSETID` around writes). virtiofsd keeps the same set plus
//!   `DAC_READ_SEARCH`, which it needs for file handles; libkrun opens none;
//! - `SYS_ADMIN` until the pivot into the jail ([`crate::jail`]), which needs it.
//!
//! Gone for good: `KILL` (signal any host process), `NET_ADMIN` and `NET_RAW` (the VMM stays in
//! the host's network namespace: routes, addresses, firewall, raw sockets), `SYS_PTRACE`,
//! `SYS_MODULE`, `SYS_RAWIO`, `SYS_BOOT`, `SYS_TIME`, `SYS_NICE`, `SYS_RESOURCE`, `IPC_OWNER`,
//! `BPF`, `PERFMON`, `AUDIT_*`, `MAC_*`, `SETPCAP` and the rest. The seccomp filter
//! ([`crate::seccomp`]) denies the calls many of them gate; these two layers overlap on purpose.
//!
//! The bounding set is emptied, as virtiofsd does: nothing this process could exec (it execs
//! nothing: the seccomp filter) regains a capability.
//!
//! Capabilities belong to threads, not processes, and a thread inherits its creator's. So
//! [`limit`] runs while the process has one thread, before libkrun starts any: every later
//! thread (vCPUs, virtio workers, the event loop) starts with the reduced sets. `SYS_ADMIN` is
//! still in them; [`drop_admin`] removes it from the thread that built the jail, but the vCPU
//! threads libkrun made before its placement callback keep it in their permitted set. There
//! the seccomp filter, installed on every thread, denies what it would be used for (mounts,
//! `unshare`, `setns`, `pivot_root`, `bpf`, `perf_event_open`, `keyctl`, `sethostname`,
//! `swapon`, `quotactl`).

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities libkrun's virtio-fs uses to act as the guest's file owners.
pub const FILE_SERVER: [Capability; 8] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
    Capability::CAP_SETFCAP,
];

/// Changing a capability set failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct CapsError {
    /// Which set, and how it was changed.
    what: String,
    /// The cause.
    #[source]
    source: caps::errors::CapsError,
}

fn err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> CapsError + '_ {
    move |source| CapsError {
        what: what.to_owned(),
        source,
    }
}

/// Limits this thread, and every thread it starts from now on, to [`FILE_SERVER`] plus
/// `SYS_ADMIN` (effective and permitted), with nothing inheritable or ambient and an empty
/// bounding set. Call it while the process has one thread.
pub fn limit() -> Result<(), CapsError> {
    let keep: CapsHashSet = FILE_SERVER
        .into_iter()
        .chain([Capability::CAP_SYS_ADMIN])
        .collect();
    // First: dropping from the bounding set needs SETPCAP, which goes below.
    caps::clear(None, CapSet::Bounding).map_err(err("empty the bounding set"))?;
    caps::clear(None, CapSet::Ambient).map_err(err("clear the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clear the inheritable set"))?;
    // Effective before permitted: the effective set must stay a subset of the permitted one.
    caps::set(None, CapSet::Effective, &keep).map_err(err("set the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("set the permitted set"))?;
    Ok(())
}

/// Removes `SYS_ADMIN` from the calling thread, once the jail is built.
pub fn drop_admin() -> Result<(), CapsError> {
    let admin = Capability::CAP_SYS_ADMIN;
    caps::drop(None, CapSet::Effective, admin).map_err(err("drop SYS_ADMIN (effective)"))?;
    caps::drop(None, CapSet::Permitted, admin).map_err(err("drop SYS_ADMIN (permitted)"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set is virtiofsd's default (`--modcaps` unset), which serves the same requests.
    #[test]
    fn the_file_server_set_is_virtiofsds() {
        let names: Vec<String> = FILE_SERVER.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_FSETID",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_MKNOD",
                "CAP_SETFCAP"
            ]
        );
    }
}
