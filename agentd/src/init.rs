//! PID 1 set-up: the file systems every Linux process expects, the modules, a root that
//! `pivot_root` can leave, cgroup v2, and the `MSB_*` boot settings.
//!
//! The initramfs is the `rootfs` file system, which cannot be `pivot_root`ed away from. So, once
//! the modules are loaded, agentd moves to a fresh tmpfs root (`MS_MOVE` + `chroot`, as
//! `switch_root` does); containers can then `pivot_root` into their own roots.

use std::fs;
use std::io;
use std::path::Path;

use msb_protocol::boot::BootEnv;

use crate::sys;

fn mount_at(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let _ = fs::create_dir_all(target);
    match sys::mount(Some(src), Path::new(target), Some(fstype), flags, data) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("mount {fstype} on {target}: {e}"))),
    }
}

/// The kernel's own file systems, enough to load modules.
pub fn early_mounts() -> io::Result<()> {
    let (nosuid, nodev, noexec) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC);
    mount_at("proc", "/proc", "proc", nosuid | nodev | noexec, None)?;
    mount_at("sysfs", "/sys", "sysfs", nosuid | nodev | noexec, None)?;
    mount_at("devtmpfs", "/dev", "devtmpfs", nosuid, Some("mode=0755"))?;
    Ok(())
}

/// Moves `/` from the initramfs to a new tmpfs, carrying /proc, /sys and /dev along.
pub fn leave_initramfs() -> io::Result<()> {
    let new = "/newroot";
    mount_at("tmpfs", new, "tmpfs", 0, Some("mode=0755"))?;
    for d in ["proc", "sys", "dev"] {
        let target = format!("{new}/{d}");
        fs::create_dir_all(&target)?;
        sys::mount(
            Some(&format!("/{d}")),
            Path::new(&target),
            None,
            libc::MS_MOVE,
            None,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("move /{d}: {e}")))?;
    }
    std::env::set_current_dir(new)?;
    sys::mount(Some("."), Path::new("/"), None, libc::MS_MOVE, None)
        .map_err(|e| io::Error::new(e.kind(), format!("move the new root: {e}")))?;
    sys::chroot(Path::new("."))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Everything after the root switch.
pub fn late_mounts() -> io::Result<()> {
    let (nosuid, nodev, noexec) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC);
    mount_at(
        "devpts",
        "/dev/pts",
        "devpts",
        nosuid | noexec,
        Some("ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_at(
        "shm",
        "/dev/shm",
        "tmpfs",
        nosuid | nodev,
        Some("mode=1777"),
    )?;
    mount_at("tmpfs", "/run", "tmpfs", nosuid | nodev, Some("mode=0755"))?;
    mount_at("tmpfs", "/tmp", "tmpfs", nosuid | nodev, Some("mode=1777"))?;
    // favordynmods: moving a process into a cgroup (each container process agentd starts) or
    // enabling controllers otherwise waits for an RCU grace period, which under TCG takes
    // 10-20 ms; with it they take a plain lock, and fork and exit pay slightly more. Kernels
    // older than 6.0 do not know the option.
    mount_at(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid | nodev | noexec,
        Some("favordynmods"),
    )
    .or_else(|e| {
        tracing::info!("cgroup2 without favordynmods: {e}");
        mount_at(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid | nodev | noexec,
            None,
        )
    })?;
    for c in ["+cpu", "+memory", "+pids", "+io"] {
        if let Err(e) = fs::write("/sys/fs/cgroup/cgroup.subtree_control", c) {
            tracing::warn!("enable cgroup controller {c}: {e}");
        }
    }
    for d in ["/run/msb", "/run/msb/c"] {
        fs::create_dir_all(d)?;
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    Ok(())
}

/// Applies the VM-wide settings: hostname, tmpfs mounts, resource limits (inherited by every
/// process agentd starts).
pub fn apply_boot_env(env: &BootEnv) {
    if let Some(h) = &env.hostname {
        if let Err(e) = sys::sethostname(h.as_str()) {
            tracing::warn!("hostname {h}: {e}");
        }
    }
    for t in &env.tmpfs {
        let mut data = Vec::new();
        if let Some(s) = t.size_mib {
            data.push(format!("size={s}m"));
        }
        if let Some(m) = t.mode {
            data.push(format!("mode={m:o}"));
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | if t.noexec { libc::MS_NOEXEC } else { 0 };
        if let Err(e) = mount_at("tmpfs", &t.path, "tmpfs", flags, Some(&data.join(","))) {
            tracing::warn!("{e}");
        }
    }
    for r in &env.rlimits {
        if let Err(e) = sys::setrlimit(r.resource, r.soft, r.hard) {
            tracing::warn!("rlimit {}: {e}", r.resource.name());
        }
    }
    if env.net.is_some() {
        tracing::warn!("MSB_NET is set but guest networking is not supported yet; ignored");
    }
}
