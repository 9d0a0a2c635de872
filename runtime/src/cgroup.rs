//! The host cgroup a VM's VMM-side processes (QEMU, each `virtiofsd`, `msb-krun-vmm`) run in:
//! the sandbox's own `linux.cgroupsPath`, so that the limits and accounting of the pod's cgroup
//! count the VM, as Kata's `sandbox_cgroup_only` places its hypervisor.
//!
//! - **Which path.** [`CgroupPath::parse`] takes either form runc accepts. A cgroupfs path
//!   (`/kubepods/besteffort/pod1/ID`) is taken below the root of every hierarchy; a relative one
//!   (`a/b`) too (runc reads it relative to its own cgroup; the shim's own cgroup is nothing a
//!   pod should depend on). The systemd form `slice:prefix:name` is expanded as runc's systemd
//!   driver names the unit (`kubepods-besteffort-pod1.slice:cri-containerd:ID` ->
//!   `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-ID.scope`),
//!   but the directory is made on the cgroup file system directly: no D-Bus, no transient
//!   unit, systemd does not know the scope. The path is untrusted input: no `..`, at most
//!   [`MAX_PATH_BYTES`] bytes, no control character, and never the root cgroup.
//! - **Where.** In every mounted hierarchy, as runc's cgroupfs driver: on a cgroup v1 (or
//!   hybrid) host each controller's hierarchy, named ones (`name=systemd`) and the controller-less
//!   `unified` cgroup2; on a cgroup v2 host the one hierarchy. Always below the hierarchy's mount
//!   point, whatever cgroup the shim itself is in. A new cpuset (v1) cgroup gets its parent's
//!   `cpuset.cpus` and `cpuset.mems` before anything joins it (an empty cpuset takes no process).
//!   The cgroup gets no limits of its own: the parent's (the pod's) apply to it.
//! - **How.** [`Cgroup::create`] makes the missing directories (remembering which) and opens each
//!   hierarchy's `cgroup.procs`; each VMM-side process writes `0` to those descriptors between
//!   fork and exec ([`Join::enter`], async-signal-safe), so it never runs outside the cgroup.
//! - **Teardown.** Dropping the [`Cgroup`] (after the processes are reaped) removes the
//!   directories it made, deepest first, and never one it did not make; one with a cgroup of
//!   someone else's inside stays. [`Cgroup::record`] writes them into the VM's directory so the
//!   shim's crash cleanup ([`remove_recorded`]) can do the same without the shim's memory.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest cgroup path accepted, before and after the systemd form's expansion.
pub const MAX_PATH_BYTES: usize = 1024;

/// The longest component (`NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

/// The file in the VM's directory listing the cgroup directories made for it ([`Cgroup::record`]).
pub const RECORD_FILE: &str = "cgroups";

/// The largest record read back (a few lines in practice).
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// How long a drop waits for a cgroup whose processes were just reaped to let go.
const SHORT_PATIENCE: Duration = Duration::from_millis(500);

/// Why a cgroup could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The path is not one we accept.
    #[error("cgroup path {path:?}: {reason}")]
    Invalid {
        /// As given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No cgroup file system is mounted.
    #[error("no cgroup hierarchy is mounted (no cgroup or cgroup2 in /proc/self/mountinfo)")]
    NoHierarchy,
    /// A file operation on a cgroup file system failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A validated cgroup path, relative to the root of every hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath {
    components: Vec<String>,
}

impl CgroupPath {
    /// Parses a spec's `linux.cgroupsPath`: a cgroupfs path, or `slice:prefix:name` (a relative
    /// path of exactly three `:`-separated parts, as containerd passes the systemd form).
    pub fn parse(spec: &str) -> Result<CgroupPath, CgroupError> {
        let bad = |reason: &str| CgroupError::Invalid {
            path: spec.to_owned(),
            reason: reason.to_owned(),
        };
        if spec.is_empty() {
            return Err(bad("empty"));
        }
        if spec.len() > MAX_PATH_BYTES {
            return Err(bad(&format!("longer than {MAX_PATH_BYTES} bytes")));
        }
        if spec.chars().any(char::is_control) {
            return Err(bad("a control character"));
        }
        let expanded;
        let path = if !spec.starts_with('/') && spec.split(':').count() == 3 {
            expanded = expand_systemd(spec).map_err(|r| bad(&r))?;
            if expanded.len() > MAX_PATH_BYTES {
                return Err(bad(&format!("expands to more than {MAX_PATH_BYTES} bytes")));
            }
            expanded.as_str()
        } else {
            spec
        };
        let mut components = Vec::new();
        for c in path.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(bad("a \"..\" component would leave the cgroup hierarchy")),
                c if c.len() > MAX_NAME_BYTES => {
                    return Err(bad(&format!(
                        "a component longer than {MAX_NAME_BYTES} bytes"
                    )))
                }
                c => components.push(c.to_owned()),
            }
        }
        if components.is_empty() {
            return Err(bad(
                "names the root cgroup, which holds every other process",
            ));
        }
        Ok(CgroupPath { components })
    }

    /// Its components, outermost first.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The directory of this cgroup in the hierarchy mounted at `mount`.
    pub fn dir_in(&self, mount: &Path) -> PathBuf {
        let mut dir = mount.to_path_buf();
        dir.extend(&self.components);
        dir
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

/// `slice:prefix:name` as runc's systemd driver names it: the slice expanded
/// ([`expand_slice`]; empty: `system.slice`), then the unit: `name` itself when it is a slice,
/// else `prefix-name.scope` (`name.scope` without a prefix).
fn expand_systemd(spec: &str) -> Result<String, String> {
    let mut parts = spec.splitn(3, ':');
    let (slice, prefix, name) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if [slice, prefix, name].iter().any(|p| p.contains('/')) {
        return Err("a '/' in the systemd form slice:prefix:name".into());
    }
    if name.is_empty() {
        return Err("the systemd form slice:prefix:name without a name".into());
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let unit = if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("{}/{unit}", expand_slice(slice)?))
}

/// A systemd slice's path: `a-b-c.slice` -> `/a.slice/a-b.slice/a-b-c.slice`, `-.slice` -> ``
/// (the root). What systemd (and runc's `ExpandSlice`) refuse is refused.
fn expand_slice(slice: &str) -> Result<String, String> {
    let bad = || format!("invalid systemd slice name {slice:?}");
    let stem = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if stem == "-" {
        return Ok(String::new());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err(bad());
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(part);
        path.push_str(".slice");
        prefix.push_str(part);
        prefix.push('-');
        if path.len() > MAX_PATH_BYTES {
            return Err(format!("expands to more than {MAX_PATH_BYTES} bytes"));
        }
    }
    Ok(path)
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its mount point.
    pub mount: PathBuf,
    /// A cgroup v1 hierarchy with the `cpuset` controller.
    pub cpuset: bool,
}

/// Every mounted cgroup hierarchy (`cgroup` and `cgroup2` mounts, each hierarchy once even when
/// bind-mounted again).
pub fn hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    let found = parse_mountinfo(&text);
    if found.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    Ok(found)
}

/// The cgroup hierarchies of a `/proc/<pid>/mountinfo`.
fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(dev), Some(mount), Some(&fstype)) = (left.get(2), left.get(4), right.first())
        else {
            continue;
        };
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if seen.contains(dev) {
            continue;
        }
        seen.push(*dev);
        let opts = right.get(2).copied().unwrap_or_default();
        out.push(Hierarchy {
            mount: PathBuf::from(unescape(mount)),
            cpuset: fstype == "cgroup" && opts.split(',').any(|o| o == "cpuset"),
        });
    }
    out
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a VMM-side process needs to join the cgroup: each hierarchy's `cgroup.procs`, open in
/// the parent. Cheap to clone; the descriptors close with the last clone.
#[derive(Debug, Clone)]
pub struct Join {
    path: Arc<str>,
    procs: Arc<Vec<OwnedFd>>,
}

impl Join {
    /// The cgroup, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Moves the calling process into the cgroup in every hierarchy. Meant for the forked child
    /// before exec: only write(2) on descriptors opened before the fork, so async-signal-safe.
    pub fn enter(&self) -> io::Result<()> {
        for fd in self.procs.iter() {
            // SAFETY: write(2) of one byte from a static buffer to a descriptor this value keeps
            // open; async-signal-safe.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Has `cmd`'s child join the cgroup before it execs (before any hook registered later).
    pub fn on_spawn(&self, cmd: &mut tokio::process::Command) {
        let join = self.clone();
        // SAFETY: the hook runs in the forked child before exec and only calls `Join::enter`,
        // which is async-signal-safe; the descriptors stay open while `cmd` holds the clone.
        unsafe {
            cmd.pre_exec(move || join.enter());
        }
    }

    /// [`Join::on_spawn`] for a `std` command.
    pub fn on_spawn_std(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let join = self.clone();
        // SAFETY: as in `on_spawn`.
        unsafe {
            cmd.pre_exec(move || join.enter());
        }
    }
}

/// A sandbox's cgroup, made (where missing) in every hierarchy. Dropping it removes the
/// directories it made: drop it only once the processes in it are reaped.
#[derive(Debug)]
pub struct Cgroup {
    path: CgroupPath,
    /// The directories this value made, outermost first (per hierarchy).
    made: Vec<PathBuf>,
    join: Join,
}

impl Cgroup {
    /// Makes `path` in every mounted hierarchy and opens its `cgroup.procs` files. On failure
    /// nothing it made is left.
    pub fn create(path: &CgroupPath) -> Result<Cgroup, CgroupError> {
        Self::create_in(path, &hierarchies()?)
    }

    /// [`Cgroup::create`] in the given hierarchies.
    pub fn create_in(path: &CgroupPath, hierarchies: &[Hierarchy]) -> Result<Cgroup, CgroupError> {
        let mut made = Vec::new();
        let opened = make_dirs(path, hierarchies, &mut made).and_then(|dirs| {
            dirs.iter()
                .map(|d| {
                    let procs = d.join("cgroup.procs");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&procs)
                        .map(OwnedFd::from)
                        .map_err(io_err("open", &procs))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match opened {
            Ok(procs) => Ok(Cgroup {
                join: Join {
                    path: path.to_string().into(),
                    procs: Arc::new(procs),
                },
                path: path.clone(),
                made,
            }),
            Err(e) => {
                remove_dirs(&deepest_first(&made), SHORT_PATIENCE);
                Err(e)
            }
        }
    }

    /// The path.
    pub fn path(&self) -> &CgroupPath {
        &self.path
    }

    /// What the VMM-side processes join.
    pub fn join(&self) -> Join {
        self.join.clone()
    }

    /// The directories this value made, outermost first.
    pub fn made(&self) -> &[PathBuf] {
        &self.made
    }

    /// Writes the directories made to `file` (0600), deepest first, one per line, for
    /// [`remove_recorded`].
    pub fn record(&self, file: &Path) -> io::Result<()> {
        use std::io::Write;
        let mut text = String::new();
        for d in deepest_first(&self.made) {
            text.push_str(&d.to_string_lossy());
            text.push('\n');
        }
        crate::private::create_file(file)?.write_all(text.as_bytes())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_dirs(&deepest_first(&self.made), SHORT_PATIENCE);
    }
}

/// Makes `path` in each hierarchy, appending what it made to `made`; the cgroup's directory in
/// each hierarchy.
fn make_dirs(
    path: &CgroupPath,
    hierarchies: &[Hierarchy],
    made: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, CgroupError> {
    let mut dirs = Vec::new();
    for h in hierarchies {
        // A parent another sandbox made may vanish between our seeing it and making a child in
        // it (that sandbox removed it): then start over, and make it ourselves.
        let mut attempts = 0;
        let dir = loop {
            match make_path(h, path, made) {
                Err(CgroupError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempts < 3 =>
                {
                    attempts += 1;
                }
                other => break other?,
            }
        };
        dirs.push(dir);
    }
    Ok(dirs)
}

fn make_path(
    h: &Hierarchy,
    path: &CgroupPath,
    made: &mut Vec<PathBuf>,
) -> Result<PathBuf, CgroupError> {
    let mut dir = h.mount.clone();
    for c in path.components() {
        let parent = dir.clone();
        dir.push(c);
        match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => made.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !dir.is_dir() {
                    return Err(CgroupError::Io {
                        what: "create",
                        path: dir,
                        source: io::Error::from_raw_os_error(libc::ENOTDIR),
                    });
                }
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        if h.cpuset {
            inherit_cpuset(&parent, &dir)?;
        }
    }
    Ok(dir)
}

/// A v1 cpuset cgroup with no CPUs or memory nodes takes no process: fills each empty one from
/// the parent's, as runc does for every level of the path.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(name);
        if !read_value(&file)?.is_empty() {
            continue;
        }
        let from = parent.join(name);
        let value = read_value(&from)?;
        if !value.is_empty() {
            std::fs::write(&file, &value).map_err(io_err("write", &file))?;
        }
    }
    Ok(())
}

/// A control file's value, trimmed; a missing file reads as empty.
fn read_value(file: &Path) -> Result<String, CgroupError> {
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_err("read", file)(e)),
    }
}

/// `made` (outermost first per hierarchy) in an order that removes children before parents.
fn deepest_first(made: &[PathBuf]) -> Vec<PathBuf> {
    made.iter().rev().cloned().collect()
}

/// Removes each of `dirs` (children before parents). A directory with a subdirectory (someone
/// else's cgroup) stays; one that is busy otherwise (its processes are still exiting) is tried
/// again until `patience` runs out. Failures are logged.
fn remove_dirs(dirs: &[PathBuf], patience: Duration) {
    let deadline = Instant::now() + patience;
    for dir in dirs {
        let mut wait = Duration::from_millis(10);
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY))
                        && has_subdir(dir) =>
                {
                    tracing::debug!(cgroup = %dir.display(), "left: another cgroup is inside");
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "remove cgroup");
                    break;
                }
            }
        }
    }
}

fn has_subdir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    })
}

/// Removes the cgroups recorded in `vm_dir` by [`Cgroup::record`] (the shim's cleanup after its
/// process died; the VMM was just killed, so busy ones are tried again for up to `patience`),
/// then the record. Only directories strictly below a mounted cgroup hierarchy are touched.
pub fn remove_recorded(vm_dir: &Path, patience: Duration) -> Result<(), CgroupError> {
    let file = vm_dir.join(RECORD_FILE);
    let text = match read_record(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", &file)(e)),
    };
    remove_listed(&text, &hierarchies()?, patience);
    std::fs::remove_file(&file).map_err(io_err("remove", &file))
}

fn read_record(file: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(MAX_RECORD_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Removes the directories `record` lists that lie strictly below one of `hierarchies`.
fn remove_listed(record: &str, hierarchies: &[Hierarchy], patience: Duration) {
    let dirs: Vec<PathBuf> = record
        .lines()
        .map(PathBuf::from)
        .filter(|d| {
            let inside = d.is_absolute()
                && !d.components().any(|c| c == std::path::Component::ParentDir)
                && hierarchies
                    .iter()
                    .any(|h| d.strip_prefix(&h.mount).is_ok_and(|r| !r.as_os_str().is_empty()));
            if !inside {
                tracing::warn!(dir = %d.display(), "recorded cgroup outside every hierarchy: left alone");
            }
            inside
        })
        .collect();
    remove_dirs(&dirs, patience);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> String {
        CgroupPath::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    fn refused(s: &str) -> String {
        CgroupPath::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn cgroupfs_paths_are_below_the_root_of_every_hierarchy() {
        assert_eq!(parsed("/msbt-x/y"), "/msbt-x/y");
        assert_eq!(
            parsed("/kubepods/besteffort/pod1/0123abc"),
            "/kubepods/besteffort/pod1/0123abc"
        );
        // Relative: below the root too (not below the shim's own cgroup).
        assert_eq!(parsed("a/b"), "/a/b");
        assert_eq!(parsed("//a/./b/"), "/a/b");
        // Not three parts: a cgroupfs name with a colon.
        assert_eq!(parsed("a:b"), "/a:b");
        assert_eq!(parsed("/a:b:c"), "/a:b:c");
        let p = CgroupPath::parse("/a/b").unwrap();
        assert_eq!(
            p.dir_in(Path::new("/sys/fs/cgroup/memory")),
            Path::new("/sys/fs/cgroup/memory/a/b")
        );
    }

    #[test]
    fn the_systemd_form_expands_as_runcs_systemd_driver_names_it() {
        assert_eq!(
            parsed("kubepods-besteffort-pod1.slice:cri-containerd:ID"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-ID.scope"
        );
        assert_eq!(
            parsed("system.slice:docker:abc"),
            "/system.slice/docker-abc.scope"
        );
        // No slice: system.slice; no prefix: the name alone; the root slice; a slice as unit.
        assert_eq!(parsed(":docker:abc"), "/system.slice/docker-abc.scope");
        assert_eq!(parsed("user.slice::n"), "/user.slice/n.scope");
        assert_eq!(parsed("-.slice:p:n"), "/p-n.scope");
        assert_eq!(
            parsed("a-b.slice:p:a-b-c.slice"),
            "/a.slice/a-b.slice/a-b-c.slice"
        );
    }

    #[test]
    fn bad_paths_are_refused_naming_the_reason() {
        for (path, reason) in [
            (
                "/a/../b",
                "a \"..\" component would leave the cgroup hierarchy",
            ),
            ("..", "a \"..\" component would leave the cgroup hierarchy"),
            (
                "/",
                "names the root cgroup, which holds every other process",
            ),
            (
                "/./",
                "names the root cgroup, which holds every other process",
            ),
            ("", "empty"),
            ("/a\nb", "a control character"),
            ("/a\0b", "a control character"),
            ("kubepods:p:n", "invalid systemd slice name \"kubepods\""),
            (
                "a--b.slice:p:n",
                "invalid systemd slice name \"a--b.slice\"",
            ),
            ("-a.slice:p:n", "invalid systemd slice name \"-a.slice\""),
            (".slice:p:n", "invalid systemd slice name \".slice\""),
            (
                "a.slice:p:",
                "the systemd form slice:prefix:name without a name",
            ),
            (
                "a.slice:p:../../x",
                "a '/' in the systemd form slice:prefix:name",
            ),
            (
                "a.slice:p/q:n",
                "a '/' in the systemd form slice:prefix:name",
            ),
        ] {
            assert_eq!(
                refused(path),
                format!("cgroup path {path:?}: {reason}"),
                "{path:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(refused(&long).ends_with("longer than 1024 bytes"));
        let name = format!("/{}", "a".repeat(256));
        assert!(refused(&name).ends_with("a component longer than 255 bytes"));
        // Short, but quadratic once expanded: 300 levels of ever longer slice names.
        let deep = format!("{}.slice:p:n", vec!["ab"; 300].join("-"));
        assert!(deep.len() < MAX_PATH_BYTES);
        assert!(
            refused(&deep).ends_with("expands to more than 1024 bytes"),
            "{}",
            refused(&deep)
        );
    }

    /// This host's (a v1 host with the `unified` cgroup2 beside), with a bind mount of the
    /// memory hierarchy and an escaped mount point added.
    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 1 0:32 / /mnt/memory\\040again rw,relatime - cgroup cgroup rw,memory
91 1 0:39 / /mnt/cpu\\040set rw,relatime - cgroup cgroup rw,cpuacct,cpuset
";

    #[test]
    fn hierarchies_of_a_v1_host_and_of_a_v2_host() {
        let h = |m: &str, cpuset| Hierarchy {
            mount: m.into(),
            cpuset,
        };
        assert_eq!(
            parse_mountinfo(HYBRID),
            vec![
                h("/sys/fs/cgroup/cpu", false),
                h("/sys/fs/cgroup/cpuset", true),
                h("/sys/fs/cgroup/memory", false),
                h("/sys/fs/cgroup/systemd", false),
                h("/sys/fs/cgroup/unified", false),
                h("/mnt/cpu set", true),
            ]
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_mountinfo(v2), vec![h("/sys/fs/cgroup", false)]);
        assert_eq!(
            parse_mountinfo("23 1 0:21 / /sys rw - sysfs sysfs rw\n"),
            vec![]
        );
    }

    /// Temporary directories standing in for a v1 host's hierarchies: cpu, cpuset (its root with
    /// CPUs and memory nodes) and the unified cgroup2.
    fn fake_hierarchies(root: &Path) -> Vec<Hierarchy> {
        let mut out = Vec::new();
        for (name, cpuset) in [("cpu", false), ("cpuset", true), ("unified", false)] {
            let mount = root.join(name);
            std::fs::create_dir(&mount).unwrap();
            if cpuset {
                std::fs::write(mount.join("cpuset.cpus"), "0-1\n").unwrap();
                std::fs::write(mount.join("cpuset.mems"), "0\n").unwrap();
            }
            out.push(Hierarchy { mount, cpuset });
        }
        out
    }

    #[test]
    fn directories_are_made_in_every_hierarchy_and_only_those_made_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let hs = fake_hierarchies(tmp.path());
        // The pod's cgroup exists in cpu only (kubelet's, say); the rest is ours to make.
        std::fs::create_dir(hs[0].mount.join("pod")).unwrap();
        let path = CgroupPath::parse("/pod/sandbox").unwrap();
        let mut made = Vec::new();
        let dirs = make_dirs(&path, &hs, &mut made).unwrap();
        let t = |p: &str| tmp.path().join(p);
        assert_eq!(
            dirs,
            vec![
                t("cpu/pod/sandbox"),
                t("cpuset/pod/sandbox"),
                t("unified/pod/sandbox")
            ]
        );
        assert_eq!(
            made,
            vec![
                t("cpu/pod/sandbox"),
                t("cpuset/pod"),
                t("cpuset/pod/sandbox"),
                t("unified/pod"),
                t("unified/pod/sandbox"),
            ]
        );
        // Each new cpuset level got its parent's CPUs and memory nodes; no other hierarchy did.
        for d in ["cpuset/pod", "cpuset/pod/sandbox"] {
            assert_eq!(
                std::fs::read_to_string(t(d).join("cpuset.cpus")).unwrap(),
                "0-1"
            );
            assert_eq!(
                std::fs::read_to_string(t(d).join("cpuset.mems")).unwrap(),
                "0"
            );
        }
        assert!(!t("unified/pod/cpuset.cpus").exists());
        // Again: all there, nothing made.
        let mut again = Vec::new();
        make_dirs(&path, &hs, &mut again).unwrap();
        assert_eq!(again, Vec::<PathBuf>::new());

        // The record lists them deepest first; removing what it lists leaves the pod's own.
        for d in ["cpuset/pod", "cpuset/pod/sandbox"] {
            // (A real cgroup's control files go with it; these are plain files.)
            std::fs::remove_file(t(d).join("cpuset.cpus")).unwrap();
            std::fs::remove_file(t(d).join("cpuset.mems")).unwrap();
        }
        let record: String = deepest_first(&made)
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        assert!(record.starts_with(&format!("{}\n", t("unified/pod/sandbox").display())));
        // A line outside every hierarchy, or a hierarchy itself, is left alone.
        let outside = tmp.path().join("elsewhere");
        std::fs::create_dir(&outside).unwrap();
        let record = format!(
            "{record}{}\n{}\n{}/../elsewhere\n",
            outside.display(),
            hs[0].mount.display(),
            hs[0].mount.display()
        );
        remove_listed(&record, &hs, Duration::ZERO);
        let left: Vec<bool> = ["cpu/pod", "cpu/pod/sandbox", "cpuset/pod", "unified/pod"]
            .iter()
            .map(|d| t(d).exists())
            .collect();
        assert_eq!(left, vec![true, false, false, false]);
        assert!(outside.is_dir() && hs[0].mount.is_dir());
    }

    #[test]
    fn a_parent_with_someone_elses_cgroup_inside_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let hs = fake_hierarchies(tmp.path());
        let path = CgroupPath::parse("/p/ours").unwrap();
        let mut made = Vec::new();
        make_dirs(&path, &hs[..1], &mut made).unwrap();
        std::fs::create_dir(hs[0].mount.join("p/theirs")).unwrap();
        remove_dirs(&deepest_first(&made), Duration::from_secs(5));
        assert!(!hs[0].mount.join("p/ours").exists());
        assert!(hs[0].mount.join("p/theirs").is_dir());
    }

    #[test]
    fn a_path_through_a_file_fails_naming_it_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let hs = fake_hierarchies(tmp.path());
        // In the second hierarchy only: the first has been made by then.
        std::fs::create_dir(hs[1].mount.join("top")).unwrap();
        std::fs::write(hs[1].mount.join("top/cgroup.procs"), "").unwrap();
        let path = CgroupPath::parse("/top/cgroup.procs/x").unwrap();
        let e = Cgroup::create_in(&path, &hs).unwrap_err();
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            format!("{e}: {}", source.unwrap_or_default()),
            format!(
                "create {}: Not a directory (os error 20)",
                hs[1].mount.join("top/cgroup.procs").display()
            )
        );
        assert!(!hs[0].mount.join("top").exists(), "made in cpu and left");
        assert!(hs[1].mount.join("top").is_dir(), "not ours, yet removed");
    }

    /// A unique cgroup name for a test on the host's real hierarchies.
    fn unique(name: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("/msb-unit-{}-{n}/{name}", std::process::id())
    }

    /// `path` made on this host's real hierarchies, or `None` (said why) where this process may
    /// not make cgroups (not root, a read-only cgroup file system).
    pub(crate) fn real_cgroup(path: &str) -> Option<Cgroup> {
        let path = CgroupPath::parse(path).unwrap();
        match Cgroup::create(&path) {
            Ok(cg) => Some(cg),
            Err(CgroupError::Io {
                source, path: p, ..
            }) if matches!(
                source.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            ) =>
            {
                eprintln!(
                    "SKIPPED: cannot make cgroups here ({}: {source})",
                    p.display()
                );
                None
            }
            Err(CgroupError::NoHierarchy) => {
                eprintln!("SKIPPED: no cgroup hierarchy mounted");
                None
            }
            Err(e) => panic!("{e:?}"),
        }
    }

    /// The lines of `/proc/<pid>/cgroup` that do not name `path`.
    pub(crate) fn lines_not_in(text: &str, path: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.splitn(3, ':').nth(2) != Some(path))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn a_process_joins_before_it_runs_and_the_cgroups_go_with_the_value() {
        let path = unique("s");
        let Some(cg) = real_cgroup(&path) else { return };
        let top = cg.made()[0].clone();
        assert_eq!(
            cg.made().len(),
            2 * hierarchies().unwrap().len(),
            "{:?}",
            cg.made()
        );
        let mut cmd = tokio::process::Command::new("/bin/cat");
        cmd.arg("/proc/self/cgroup")
            .stdout(std::process::Stdio::piped());
        cg.join().on_spawn(&mut cmd);
        let out = cmd.output().await.unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(lines_not_in(&text, &path), Vec::<String>::new(), "{text}");
        // std's Command too (virtiofsd's).
        let mut cmd = std::process::Command::new("/bin/cat");
        cmd.arg("/proc/self/cgroup");
        cg.join().on_spawn_std(&mut cmd);
        let text = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert_eq!(lines_not_in(&text, &path), Vec::<String>::new(), "{text}");

        let vm_dir = tempfile::tempdir().unwrap();
        cg.record(&vm_dir.path().join(RECORD_FILE)).unwrap();
        let made = cg.made().to_vec();
        drop(cg);
        assert_eq!(
            made.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
            Vec::<&PathBuf>::new()
        );
        assert!(!top.exists());

        // The crash cleanup's way: from the record, the process still exiting.
        let cg = real_cgroup(&path).unwrap();
        cg.record(&vm_dir.path().join(RECORD_FILE)).unwrap();
        let made = cg.made().to_vec();
        let mut child = std::process::Command::new("/bin/sleep");
        child.arg("0.3");
        cg.join().on_spawn_std(&mut child);
        let mut child = child.spawn().unwrap();
        // Reaped elsewhere, as init reaps the VMM of a shim that died.
        let reaper = std::thread::spawn(move || child.wait());
        // The shim is gone: nothing drops the value.
        std::mem::forget(cg);
        remove_recorded(vm_dir.path(), Duration::from_secs(10)).unwrap();
        reaper.join().unwrap().unwrap();
        assert_eq!(
            made.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
            Vec::<&PathBuf>::new()
        );
        assert!(!vm_dir.path().join(RECORD_FILE).exists());
        // No record: nothing to do.
        remove_recorded(vm_dir.path(), Duration::ZERO).unwrap();
    }

    /// A stand-in VMM: sleeps (QEMU's runs in its jail, which has no `/proc` and nothing of
    /// `dir`: the test reads its cgroups from the host).
    fn fake_vmm(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("fake-vmm");
        std::fs::write(&program, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        program
    }

    /// A spec without disks whose kernel and initramfs exist (QEMU's jail binds them).
    fn vm_spec(dir: &Path, cg: &Cgroup) -> crate::vmm::VmSpec {
        for f in ["vmlinux", "initramfs.cpio"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        crate::vmm::VmSpec {
            dir: dir.to_owned(),
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
            disks: vec![],
            console_log: dir.join("console.log"),
            agent_socket: dir.join("agent.sock"),
            cgroup: Some(cg.join()),
            ..crate::vmm::sample_spec()
        }
    }

    #[tokio::test]
    async fn both_backends_start_their_vmm_in_the_cgroup() {
        use crate::vmm::Backend;
        let path = unique("vmm");
        let Some(cg) = real_cgroup(&path) else { return };
        for backend in ["qemu", "krun"] {
            let dir = tempfile::tempdir().unwrap();
            let program = fake_vmm(dir.path());
            let spec = vm_spec(dir.path(), &cg);
            let vmm = match backend {
                "qemu" => crate::vmm::qemu::Qemu::new()
                    .with_program(program.to_str().unwrap())
                    .launch(&spec),
                _ => crate::vmm::krun::Krun::new()
                    .with_program(&program)
                    .with_krunfw("/nonexistent/libkrunfw.so.5")
                    .launch(&spec),
            }
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
            // Joined before exec, so already now.
            let text =
                std::fs::read_to_string(format!("/proc/{}/cgroup", vmm.pid())).unwrap_or_default();
            assert_eq!(
                lines_not_in(&text, &path),
                Vec::<String>::new(),
                "{backend}: {text}"
            );
            drop(vmm);
        }
        let made = cg.made().to_vec();
        drop(cg);
        assert_eq!(
            made.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
            Vec::<&PathBuf>::new()
        );
    }

    #[tokio::test]
    async fn a_cgroup_the_vmm_cannot_join_fails_its_start_naming_the_cgroup() {
        use crate::vmm::Backend;
        let path = unique("full");
        let Some(cg) = real_cgroup(&path) else { return };
        let Some(cpuset) = hierarchies().unwrap().into_iter().find(|h| h.cpuset) else {
            eprintln!("SKIPPED: no cgroup v1 cpuset hierarchy to make unjoinable");
            return;
        };
        // A cpuset without CPUs takes no process (ENOSPC).
        let leaf = CgroupPath::parse(&path).unwrap().dir_in(&cpuset.mount);
        std::fs::write(leaf.join("cpuset.cpus"), "\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let program = fake_vmm(dir.path());
        let e = crate::vmm::qemu::Qemu::new()
            .with_program(program.to_str().unwrap())
            .launch(&vm_spec(dir.path(), &cg))
            .unwrap_err();
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            format!("{e}: {}", source.unwrap_or_default()),
            format!(
                "start {} in cgroup {path}: No space left on device (os error 28)",
                program.display()
            )
        );
        let made = cg.made().to_vec();
        drop(cg);
        assert_eq!(
            made.iter().filter(|d| d.exists()).collect::<Vec<_>>(),
            Vec::<&PathBuf>::new()
        );
    }
}
