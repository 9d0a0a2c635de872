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

use msb_protocol::consts::VOLUMES_MOUNT_POINT;
use msb_protocol::types::{ContainerCreate, NamespaceSource, StorageRef};

use crate::cgroup::Cgroup;
use crate::inroot::InRootPath;
use crate::mount_opts;
use crate::spawn::{MountOp, NsSource, RootSetup, RootStep};
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
        crate::oom::watch_container(&c.cgroup.memory_events());
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
        // The volume share, if a bind needs it: mounted once for the VM.
        for m in self.spec.mounts.iter().filter(|m| m.kind == "bind") {
            storage::ensure_for(storage::check_path(&m.source)?)?;
        }
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
        // The container's `/dev/shm`, in the VM's mount namespace so that the containers that
        // share its IPC namespace can bind the same one (as CRI shares the sandbox's).
        let shm = base.join("shm");
        fs::create_dir_all(&shm).map_err(io_err(format!("mkdir {}", shm.display())))?;
        sys::mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(io_err(format!("mount tmpfs on {}", shm.display())))?;
        self.mounted.push(shm);
        Ok(())
    }

    /// Where namespace `kind` (`pid`, `ipc`, `uts`) of this container comes from: for one
    /// shared with another container of the pod (in `others`), that one's init's, which must be
    /// running.
    fn ns_source(
        &self,
        source: &NamespaceSource,
        kind: &str,
        others: &HashMap<String, Container>,
    ) -> Result<NsSource, ContainerError> {
        let other = match source {
            NamespaceSource::New => return Ok(NsSource::New),
            NamespaceSource::Vm => return Ok(NsSource::Vm),
            NamespaceSource::Container(other) if *other == self.id => return Ok(NsSource::New),
            NamespaceSource::Container(other) => other,
        };
        let unavailable = |why: &str| {
            ContainerError::Unsupported(format!(
                "the {kind} namespace of container {other}, which container {} shares: {why}",
                self.id
            ))
        };
        let o = others
            .get(other)
            .ok_or_else(|| unavailable("no such container"))?;
        let pid = o
            .init_pid
            .filter(|_| !o.init_exited)
            .ok_or_else(|| unavailable("its process is not running"))?;
        sys::open_ro(Path::new(&format!("/proc/{pid}/ns/{kind}")))
            .map(NsSource::Join)
            .map_err(io_err(format!(
                "open the {kind} namespace of container {other}"
            )))
    }

    /// The child's plan for this container's root: its namespaces (`others` are the VM's
    /// containers, whose namespaces it may share), /proc, a minimal /dev, /dev/shm (the one of
    /// the container whose IPC namespace it shares), /sys (read-only unless the spec mounts it
    /// read-write, as for a privileged container), the spec's mounts, sysctls, the hostname,
    /// read-only and masked paths.
    pub fn root_setup(
        &self,
        others: &HashMap<String, Container>,
    ) -> Result<RootSetup, ContainerError> {
        let ns = &self.spec.namespaces;
        let pid = self.ns_source(&ns.pid, "pid", others)?;
        let ipc = self.ns_source(&ns.ipc, "ipc", others)?;
        let uts = self.ns_source(&ns.uts, "uts", others)?;
        let shm_of = match &ns.ipc {
            NamespaceSource::Container(other) if matches!(ipc, NsSource::Join(_)) => other,
            _ => &self.id,
        };
        // Paths in the root, resolved inside it by the child ([`crate::inroot`]).
        let r = |p: &str| -> Result<InRootPath, ContainerError> {
            InRootPath::new(p).map_err(io_err(format!("path {p}")))
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
                // The spec's options: a NUL byte in one is an error, not a panic.
                data: (!data.is_empty())
                    .then(|| sys::cstr(data))
                    .transpose()
                    .map_err(io_err(format!("mount options of {dst}")))?,
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
        steps.push(RootStep::Mount(MountOp {
            src: Some(
                sys::cpath(Path::new("/run/msb/c").join(shm_of).join("shm"))
                    .map_err(io_err("shm path"))?,
            ),
            target: r("/dev/shm")?,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        }));
        for (target, link) in [
            ("pts/ptmx", "/dev/ptmx"),
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
        ] {
            steps.push(RootStep::Symlink(c(target), r(link)?));
        }
        let sys_rw = self.spec.mounts.iter().any(|m| {
            m.destination.trim_end_matches('/') == "/sys"
                && m.kind == "sysfs"
                && mount_opts::parse(&m.options).flags & libc::MS_RDONLY == 0
        });
        let sys_ro = if sys_rw { 0 } else { libc::MS_RDONLY };
        steps.push(mount(
            "sysfs",
            "/sys",
            "sysfs",
            sys_ro | nosuid | nodev | noexec,
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
            // Parents first, so nested destinations exist; a file bound on a file.
            let file_bind =
                m.kind == "bind" && fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
            let mut prefix = String::new();
            let parts: Vec<&str> = dest.split('/').filter(|p| !p.is_empty()).collect();
            for (i, part) in parts.iter().enumerate() {
                prefix.push('/');
                prefix.push_str(part);
                if file_bind && i + 1 == parts.len() {
                    steps.push(RootStep::Mknod(r(&prefix)?, libc::S_IFREG | 0o644, 0));
                } else {
                    steps.push(RootStep::Mkdir(r(&prefix)?, 0o755));
                }
            }
            let opts = mount_opts::parse(&m.options);
            match m.kind.as_str() {
                "tmpfs" | "proc" | "sysfs" | "devpts" | "mqueue" => {
                    steps.push(mount(&m.kind, dest, &m.kind, opts.flags, &opts.data)?);
                }
                "cgroup" | "cgroup2" => {
                    steps.push(mount("cgroup2", dest, "cgroup2", opts.flags, "")?);
                }
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
                    // A volume of the share is made read-only by the host, on its own bind
                    // (as runc's, not recursive: a mount inside it keeps its own mode), and
                    // virtiofs hands the host's EROFS back; read-only here would cover those
                    // mounts too, which are one file system in the guest.
                    let volume = Path::new(&m.source).starts_with(VOLUMES_MOUNT_POINT);
                    if opts.flags & libc::MS_RDONLY != 0 && !volume {
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
        let mut sysctls = Vec::new();
        for (name, value) in &self.spec.sysctls {
            let file = msb_protocol::types::sysctl_path(name).ok_or_else(|| {
                ContainerError::Unsupported(format!("{name:?} is not a sysctl name"))
            })?;
            sysctls.push((
                r(&format!("/proc/sys/{file}"))?,
                sys::cstr(value).map_err(io_err(format!("sysctl {name}")))?,
            ));
        }
        let in_root = |what: &str, paths: &[String]| {
            paths
                .iter()
                .map(|p| {
                    if !msb_protocol::types::is_clean_absolute(p) {
                        return Err(ContainerError::Unsupported(format!(
                            "{what} {p:?} must be absolute without '.' or '..'"
                        )));
                    }
                    sys::cstr(p).map_err(io_err(format!("{what} {p}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let hostname = match uts {
            NsSource::New => self.spec.hostname.as_deref(),
            NsSource::Join(_) | NsSource::Vm => None,
        };
        Ok(RootSetup {
            rootfs: sys::cpath(&self.rootfs).map_err(io_err("rootfs path"))?,
            pid,
            ipc,
            uts,
            steps,
            hostname: hostname
                .map(sys::cstr)
                .transpose()
                .map_err(io_err("hostname"))?,
            sysctls,
            readonly: self.spec.rootfs.readonly,
            readonly_paths: in_root("readonly path", &self.spec.readonly_paths)?,
            masked_paths: in_root("masked path", &self.spec.masked_paths)?,
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
