//! A container inside the VM: its storage (EROFS lowers, ext4 upper, overlay), its cgroup, the
//! plan for its root, and its teardown.
//!
//! `core.container.create` mounts the storage in the VM's mount namespace under
//! `/run/msb/c/<id>/`; the namespaces come with the container's first process (its init), whose
//! child side follows [`Container::root_setup`] and `pivot_root`s into the overlay.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use msb_protocol::types::{ContainerCreate, StorageRef};

use crate::cgroup::Cgroup;
use crate::mount_opts;
use crate::spawn::{MountOp, RootSetup, RootStep};
use crate::storage;
use crate::sys;

/// Why a container request failed; the text goes back in `core.container.failed`.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No virtio-blk disk carries that serial.
    #[error("no disk with serial {0:?} (looked in /sys/block/*/serial)")]
    NoDisk(String),
    /// A storage kind this agent cannot use there.
    #[error("{0}")]
    Unsupported(String),
    /// A mount or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step, naming the path.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// The block device whose serial is `serial`.
pub fn disk_by_serial(serial: &str) -> Result<PathBuf, ContainerError> {
    let entries = fs::read_dir("/sys/block").map_err(io_err("read /sys/block"))?;
    for e in entries.flatten() {
        let name = e.file_name();
        if let Ok(s) = fs::read_to_string(e.path().join("serial")) {
            if s.trim() == serial {
                return Ok(Path::new("/dev").join(name));
            }
        }
    }
    Err(ContainerError::NoDisk(serial.to_owned()))
}

/// The hostname of a new container's UTS namespace: its own, or else that of the container
/// whose UTS namespace it is to share (`namespaces.share_uts_with`; `hostname_of` looks that
/// one's up). A CRI pod's containers name no hostname and share the sandbox container's UTS
/// namespace, which holds the pod's hostname. agentd gives every container a UTS namespace of
/// its own, so the sharing is by value, at create: a later `sethostname` in one container is not
/// seen in the other.
pub fn uts_hostname(
    spec: &ContainerCreate,
    hostname_of: impl FnOnce(&str) -> Option<String>,
) -> Option<String> {
    spec.hostname.clone().or_else(|| {
        spec.namespaces
            .share_uts_with
            .as_deref()
            .filter(|other| *other != spec.id)
            .and_then(hostname_of)
    })
}

/// Destinations agentd always provides itself; spec mounts there are skipped.
const PROVIDED: &[&str] = &["/proc", "/dev", "/dev/pts", "/dev/shm", "/sys"];

/// The containers agentd knows, by id: shared by the dispatcher, the exit of each init, the OOM
/// watcher and shutdown.
pub type Containers = Arc<Mutex<HashMap<String, Container>>>;

/// A container known to agentd.
#[derive(Debug)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// The create request (mounts, hostname, ...).
    pub spec: ContainerCreate,
    /// The merged root in the VM's mount namespace.
    pub rootfs: PathBuf,
    /// Mounts to undo at delete, innermost last.
    mounted: Vec<PathBuf>,
    /// The ext4 upper mount, unmounted cleanly at delete/shutdown.
    upper_mount: Option<PathBuf>,
    /// Its upper directory on a disk the pod shares, removed at delete.
    owned_upper: Option<PathBuf>,
    /// Its cgroup.
    pub cgroup: Cgroup,
    /// Pid of its init once started.
    pub init_pid: Option<i32>,
    /// Whether the init has exited.
    pub init_exited: bool,
    /// `oom_kill` count already reported.
    pub oom_reported: u64,
}

impl Container {
    /// Mounts the storage and creates the cgroup.
    pub fn create(spec: ContainerCreate) -> Result<Container, ContainerError> {
        let id = spec.id.clone();
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(ContainerError::Unsupported(format!(
                "invalid container id {id:?}"
            )));
        }
        let base = Path::new("/run/msb/c").join(&id);
        let rootfs = base.join("rootfs");
        let mut c = Container {
            id: id.clone(),
            rootfs: rootfs.clone(),
            mounted: Vec::new(),
            upper_mount: None,
            owned_upper: None,
            cgroup: Cgroup::create(&id, &spec.resources)
                .map_err(io_err(format!("cgroup of {id}")))?,
            init_pid: None,
            init_exited: false,
            oom_reported: 0,
            spec,
        };
        if let Err(e) = c.mount_storage(&base) {
            c.teardown();
            return Err(e);
        }
        Ok(c)
    }

    /// Mounts the EROFS on `dev` read-only as lower `i` under `base`; `what` names it in errors.
    fn mount_erofs(
        &mut self,
        dev: &Path,
        what: &str,
        base: &Path,
        i: usize,
    ) -> Result<PathBuf, ContainerError> {
        let dir = base.join(format!("lower{i}"));
        fs::create_dir_all(&dir).map_err(io_err(format!("mkdir {}", dir.display())))?;
        sys::mount(dev.to_str(), &dir, Some("erofs"), libc::MS_RDONLY, None)
            .map_err(io_err(format!("mount erofs {what} on {}", dir.display())))?;
        self.mounted.push(dir.clone());
        Ok(dir)
    }

    fn mount_storage(&mut self, base: &Path) -> Result<(), ContainerError> {
        let mut lowers = Vec::new();
        for (i, lower) in self.spec.rootfs.lower.clone().iter().enumerate() {
            match lower {
                StorageRef::Serial(s) => {
                    let dev = disk_by_serial(s)?;
                    lowers.push(self.mount_erofs(&dev, &dev.display().to_string(), base, i)?);
                }
                StorageRef::Dir(d) => {
                    let d = storage::check_path(d)?;
                    storage::ensure_for(d)?;
                    lowers.push(d.to_owned());
                }
                StorageRef::Image(p) => {
                    let image = storage::check_path(p)?;
                    storage::ensure_for(image)?;
                    // Held until mounted: the loop binding ends at its last close.
                    let dev = storage::loop_attach(image)?;
                    let what = format!("{} ({})", image.display(), dev.path.display());
                    lowers.push(self.mount_erofs(&dev.path, &what, base, i)?);
                }
            }
        }
        if lowers.is_empty() {
            return Err(ContainerError::Unsupported(
                "a container needs at least one lower".into(),
            ));
        }
        let upper_base =
            match &self.spec.rootfs.upper {
                StorageRef::Serial(s) => {
                    let dev = disk_by_serial(s)?;
                    let dir = base.join("upperdisk");
                    fs::create_dir_all(&dir).map_err(io_err(format!("mkdir {}", dir.display())))?;
                    let fstype = self.spec.rootfs.fstype.clone();
                    sys::mount(dev.to_str(), &dir, Some(&fstype), 0, None).map_err(io_err(
                        format!("mount {fstype} {} on {}", dev.display(), dir.display()),
                    ))?;
                    self.mounted.push(dir.clone());
                    self.upper_mount = Some(dir.clone());
                    dir
                }
                StorageRef::Dir(d) => {
                    let d = storage::check_path(d)?;
                    storage::ensure_for(d)?;
                    if storage::on_shared_disk(d) {
                        // A fresh container: nothing of an earlier one with this id survives.
                        let _ = fs::remove_dir_all(d);
                        self.owned_upper = Some(d.to_owned());
                    }
                    d.to_owned()
                }
                StorageRef::Image(p) => {
                    return Err(ContainerError::Unsupported(format!(
                        "an image upper ({p}) is not supported"
                    )))
                }
            };
        let (upper, work) = (upper_base.join("upper"), upper_base.join("work"));
        for d in [&upper, &work, &self.rootfs] {
            fs::create_dir_all(d).map_err(io_err(format!("mkdir {}", d.display())))?;
        }
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        sys::mount(
            Some("overlay"),
            &self.rootfs,
            Some("overlay"),
            0,
            Some(&data),
        )
        .map_err(io_err(format!(
            "mount overlay on {} ({data})",
            self.rootfs.display()
        )))?;
        self.mounted.push(self.rootfs.clone());
        Ok(())
    }

    /// The child's plan for this container's root: /proc, a minimal /dev, a read-only /sys,
    /// the spec's mounts, the hostname.
    pub fn root_setup(&self) -> Result<RootSetup, ContainerError> {
        let r = |p: &str| -> Result<CString, ContainerError> {
            sys::cpath(self.rootfs.join(p.trim_start_matches('/')))
                .map_err(io_err(format!("path {p}")))
        };
        let c = |s: &str| CString::new(s).expect("static strings have no NUL");
        let mount = |src: &str,
                     dst: &str,
                     fstype: &str,
                     flags: libc::c_ulong,
                     data: &str|
         -> Result<RootStep, ContainerError> {
            Ok(RootStep::Mount(MountOp {
                src: Some(c(src)),
                target: r(dst)?,
                fstype: Some(c(fstype)),
                flags,
                data: (!data.is_empty()).then(|| c(data)),
            }))
        };
        let (nosuid, nodev, noexec) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC);
        let mut steps = vec![
            RootStep::Mkdir(r("/proc")?, 0o555),
            RootStep::Mkdir(r("/dev")?, 0o755),
            RootStep::Mkdir(r("/sys")?, 0o555),
            mount("proc", "/proc", "proc", nosuid | nodev | noexec, "")?,
            mount(
                "tmpfs",
                "/dev",
                "tmpfs",
                nosuid | libc::MS_STRICTATIME,
                "mode=755,size=65536k",
            )?,
        ];
        for (name, minor) in [
            ("null", 3),
            ("zero", 5),
            ("full", 7),
            ("random", 8),
            ("urandom", 9),
        ] {
            steps.push(RootStep::Mknod(
                r(&format!("/dev/{name}"))?,
                libc::S_IFCHR | 0o666,
                libc::makedev(1, minor),
            ));
        }
        steps.push(RootStep::Mknod(
            r("/dev/tty")?,
            libc::S_IFCHR | 0o666,
            libc::makedev(5, 0),
        ));
        for d in ["/dev/pts", "/dev/shm"] {
            steps.push(RootStep::Mkdir(r(d)?, 0o755));
        }
        steps.push(mount(
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid | noexec,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        )?);
        steps.push(mount(
            "shm",
            "/dev/shm",
            "tmpfs",
            nosuid | nodev | noexec,
            "mode=1777,size=65536k",
        )?);
        for (target, link) in [
            ("pts/ptmx", "/dev/ptmx"),
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
        ] {
            steps.push(RootStep::Symlink(c(target), r(link)?));
        }
        steps.push(mount(
            "sysfs",
            "/sys",
            "sysfs",
            libc::MS_RDONLY | nosuid | nodev | noexec,
            "",
        )?);
        for m in &self.spec.mounts {
            let dest = m.destination.trim_end_matches('/');
            if PROVIDED.contains(&dest) || dest.is_empty() {
                continue;
            }
            if !dest.starts_with('/') || dest.split('/').any(|p| p == "..") {
                return Err(ContainerError::Unsupported(format!(
                    "mount destination {:?} must be absolute without '..'",
                    m.destination
                )));
            }
            // Parents first, so nested destinations exist.
            let mut prefix = String::new();
            for part in dest.split('/').filter(|p| !p.is_empty()) {
                prefix.push('/');
                prefix.push_str(part);
                steps.push(RootStep::Mkdir(r(&prefix)?, 0o755));
            }
            let opts = mount_opts::parse(&m.options);
            match m.kind.as_str() {
                "tmpfs" | "proc" | "sysfs" | "devpts" | "mqueue" => {
                    steps.push(mount(&m.kind, dest, &m.kind, opts.flags, &opts.data)?);
                }
                "cgroup" | "cgroup2" => steps.push(mount(
                    "cgroup2",
                    dest,
                    "cgroup2",
                    opts.flags | libc::MS_RDONLY,
                    "",
                )?),
                "bind" => {
                    let src = sys::cpath(&m.source)
                        .map_err(io_err(format!("bind source {}", m.source)))?;
                    let rec = if opts.recursive { libc::MS_REC } else { 0 };
                    steps.push(RootStep::Mount(MountOp {
                        src: Some(src),
                        target: r(dest)?,
                        fstype: None,
                        flags: libc::MS_BIND | rec,
                        data: None,
                    }));
                    if opts.flags & libc::MS_RDONLY != 0 {
                        steps.push(RootStep::Mount(MountOp {
                            src: None,
                            target: r(dest)?,
                            fstype: None,
                            flags: libc::MS_REMOUNT
                                | libc::MS_BIND
                                | (opts.flags & !(libc::MS_BIND | libc::MS_REC)),
                            data: None,
                        }));
                    }
                }
                other => {
                    return Err(ContainerError::Unsupported(format!(
                        "mount kind {other:?} at {dest} is not supported"
                    )))
                }
            }
        }
        Ok(RootSetup {
            rootfs: sys::cpath(&self.rootfs).map_err(io_err("rootfs path"))?,
            steps,
            hostname: self
                .spec
                .hostname
                .as_deref()
                .map(sys::cstr)
                .transpose()
                .map_err(io_err("hostname"))?,
            readonly: self.spec.rootfs.readonly,
        })
    }

    /// Kills what is left, unmounts everything (the ext4 upper cleanly, so its journal needs no
    /// recovery) and removes the cgroup. Best effort: errors are logged.
    pub fn teardown(&mut self) {
        if let Err(e) = self.cgroup.destroy() {
            tracing::warn!(container = %self.id, "{e}");
        }
        while let Some(m) = self.mounted.pop() {
            let clean = Some(&m) == self.upper_mount.as_ref();
            if let Err(e) = sys::umount(&m, 0) {
                tracing::warn!(container = %self.id, "umount {}: {e}", m.display());
                if clean {
                    let _ = sys::mount(None, &m, None, libc::MS_REMOUNT | libc::MS_RDONLY, None);
                }
                let _ = sys::umount(&m, libc::MNT_DETACH);
            }
        }
        let _ = fs::remove_dir_all(Path::new("/run/msb/c").join(&self.id));
        if let Some(upper) = self.owned_upper.take() {
            if let Err(e) = fs::remove_dir_all(&upper) {
                tracing::warn!(container = %self.id, "remove upper {}: {e}", upper.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, hostname: Option<&str>, share_uts_with: Option<&str>) -> ContainerCreate {
        ContainerCreate {
            id: id.into(),
            rootfs: msb_protocol::types::RootfsSpec {
                lower: Vec::new(),
                upper: StorageRef::Serial("upper".into()),
                fstype: "ext4".into(),
                readonly: false,
            },
            mounts: Vec::new(),
            hostname: hostname.map(Into::into),
            namespaces: msb_protocol::types::NamespaceSpec {
                share_uts_with: share_uts_with.map(Into::into),
                ..Default::default()
            },
            handoff_init: None,
            resources: Default::default(),
            sysctls: Vec::new(),
        }
    }

    #[test]
    fn uts_hostname_comes_from_the_shared_namespace_when_unset() {
        let pod = |id: &str| (id == "sandbox").then(|| "pod-host".to_owned());
        // A pod's container: the sandbox's hostname.
        assert_eq!(
            uts_hostname(&spec("app", None, Some("sandbox")), pod).as_deref(),
            Some("pod-host")
        );
        // Its own wins; nothing to share or an unknown container: none.
        assert_eq!(
            uts_hostname(&spec("app", Some("own"), Some("sandbox")), pod).as_deref(),
            Some("own")
        );
        assert_eq!(uts_hostname(&spec("app", None, None), pod), None);
        assert_eq!(uts_hostname(&spec("app", None, Some("gone")), pod), None);
        assert_eq!(
            uts_hostname(&spec("sandbox", None, Some("sandbox")), pod),
            None
        );
    }
}
