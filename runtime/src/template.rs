//! Templates: a sandbox's VM restored from a saved one instead of booted (QEMU backend).
//!
//! Under TCG a boot to agentd's `core.ready` takes over a second, all of it the same work for
//! every sandbox. So the first sandbox of each kind boots a **template** VM once, with
//! `MSB_TEMPLATE=1` and placeholder disks, and saves it with QEMU's migration into a file as soon
//! as agentd is ready (before any container, so it holds no secret). Every later sandbox of that
//! kind starts QEMU with the same devices, the sandbox's own disk images behind them, and
//! `-incoming` from that file: the guest resumes where the template was, in a fraction of the
//! time. Then `core.restore` makes it the sandbox's (agentd binds the disks afresh, takes the
//! host's clock and entropy, applies the `MSB_*` settings; see agentd's `restore` module).
//!
//! A kind is everything the saved state depends on: QEMU (its binary), the kernel and the
//! initramfs (their files), the accelerator and TSC frequency, vCPUs, memory, the number of
//! disks, agentd's log level. Its digest names the template's directory under
//! [`templates_dir`] (root-only), which also holds the key in full: a template is only used when
//! its key is the one asked for, so a changed input makes a new template and never a wrong
//! restore. VMs with shares or a network are booted (QEMU 7.2 cannot save vhost-user-fs; a
//! template's network device would carry the template's MAC).
//!
//! Builds are serialised per kind by a lock file; a template that fails to restore is discarded
//! (the caller then boots, and the next sandbox builds it anew).

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msb_protocol::boot::BootEnv;
use msb_protocol::types::Ready;
use msb_protocol::{Message, Payload};
use sha2::{Digest, Sha256};

use crate::vmm::qemu::qmp::{Qmp, QmpError};
use crate::vmm::qemu::Qemu;
use crate::vmm::{Backend, DiskSpec, VmSpec, VmStart, VmmError, VmmProcess};

/// Bumped when what a template holds changes in a way its inputs do not show (agentd's template
/// protocol, the devices and CPU model the runtime gives QEMU).
const FORMAT: u32 = 3;

/// `$MSB_TEMPLATE_DIR`, or `/var/cache/microsandbox/templates`.
pub fn templates_dir() -> PathBuf {
    std::env::var_os("MSB_TEMPLATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/microsandbox/templates"))
}

/// Whether templates are on by default: unless `$MSB_TEMPLATES` is `off`, `0` or `false`.
pub fn enabled_by_default() -> bool {
    !matches!(
        std::env::var("MSB_TEMPLATES").as_deref(),
        Ok("off" | "0" | "false")
    )
}

/// Why a template could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The template VM could not start.
    #[error("start the template VM")]
    Vmm(#[source] VmmError),
    /// Saving the template VM failed.
    #[error("save the template VM")]
    Save(#[source] QmpError),
    /// The template VM did not come up or its save did not finish in time.
    #[error("template VM: {0}")]
    Failed(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_path_buf();
    move |source| TemplateError::Io { what, path, source }
}

/// What kind of VM a template is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// Disks of the VMs restored from it.
    pub disks: usize,
    /// agentd's log level (`MSB_LOG`), which agentd applies at boot only.
    pub log: Option<String>,
}

impl TemplateSpec {
    /// The kernel command line settings of the template's boot (and so of every clone's QEMU,
    /// whose devices and options must be the template's).
    pub fn boot_env(&self) -> BootEnv {
        BootEnv {
            template: true,
            log: self.log.clone(),
            ..BootEnv::default()
        }
    }

    /// Everything the saved state depends on, one `name=value` per line.
    pub fn key(&self) -> Result<String, TemplateError> {
        let mut k = String::new();
        let _ = writeln!(k, "format={FORMAT}");
        let qemu = Qemu::new().resolved_program().map_err(TemplateError::Vmm)?;
        for (name, path) in [
            ("qemu", &qemu),
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
        ] {
            let _ = writeln!(k, "{name}={}", file_identity(path)?);
        }
        let _ = writeln!(k, "accel={}", crate::vmm::qemu::accel().0);
        let _ = writeln!(k, "tsc_khz={:?}", crate::host::tsc_khz());
        let _ = writeln!(k, "vcpus={}", self.vcpus);
        let _ = writeln!(k, "memory_mib={}", self.memory_mib);
        let _ = writeln!(k, "disks={}", self.disks);
        let _ = writeln!(
            k,
            "cmdline={}",
            self.boot_env().to_cmdline_words().join(" ")
        );
        Ok(k)
    }
}

/// `path` and what tells one file there from its successor: size, modification time, inode.
fn file_identity(path: &Path) -> Result<String, TemplateError> {
    let m = std::fs::metadata(path).map_err(io("read", path))?;
    Ok(format!(
        "{} size={} mtime={}.{} inode={}",
        path.display(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}

/// Whether a stored key names a QEMU, kernel or initramfs file that is gone or was replaced:
/// its template can never be asked for again.
fn stale(key: &str) -> bool {
    key.lines().any(|line| match line.split_once('=') {
        Some(("qemu" | "kernel" | "initramfs", identity)) => {
            let path = identity.split(" size=").next().unwrap_or_default();
            file_identity(Path::new(path)).map_or(true, |now| now != identity)
        }
        _ => false,
    })
}

/// Removes the templates under `root` made from files since replaced or removed (a rebuilt
/// kernel or initramfs, an upgraded QEMU), so the cache holds only templates that can still be
/// used; those of an older [`FORMAT`] go too. Each under its lock, skipped while another
/// process holds it. The empty lock files stay: unlinking a lock file races with its next
/// opener, who would then lock another file than a concurrent builder.
fn prune_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() || dir.extension().is_some() {
            continue;
        }
        let Ok(key) = std::fs::read_to_string(dir.join("key")) else {
            continue;
        };
        if !stale(&key) && key.starts_with(&format!("format={FORMAT}\n")) {
            continue;
        }
        let lock = std::fs::File::open(dir.with_extension("lock"))
            .map(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock));
        if let Ok(Ok(_held)) = lock {
            tracing::info!(template = %dir.display(), "removing a stale template");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A saved template, ready to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Its directory.
    pub dir: PathBuf,
    /// The saved VM (`-incoming`).
    pub state: PathBuf,
    /// The command line words the clone's QEMU must carry (the template's).
    pub cmdline: Vec<String>,
}

impl Template {
    /// Removes a template that failed to restore, so that the next sandbox builds it anew.
    pub fn discard(&self) {
        tracing::warn!(template = %self.dir.display(), "discarding the template");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The template for `spec`: the saved one, or one built now (by this process, or by another
/// that holds the kind's lock meanwhile) within `deadline`.
pub async fn ensure(spec: &TemplateSpec, deadline: Instant) -> Result<Template, TemplateError> {
    let key = spec.key()?;
    let digest = Sha256::digest(key.as_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let root = templates_dir();
    crate::private::create_dir(&root).map_err(io("create", &root))?;
    let template = Template {
        dir: root.join(&name),
        state: root.join(&name).join("state"),
        cmdline: spec.boot_env().to_cmdline_words(),
    };
    if saved(&template, &key) {
        return Ok(template);
    }
    let lock_path = root.join(format!("{name}.lock"));
    let _lock = lock(&lock_path, deadline).await?;
    // Another process may have built it while this one waited.
    if saved(&template, &key) {
        return Ok(template);
    }
    let started = Instant::now();
    build(spec, &key, &template, deadline).await?;
    prune_stale(&root);
    tracing::info!(template = %template.dir.display(), "template built in {} ms", started.elapsed().as_millis());
    Ok(template)
}

/// Whether `t` holds a saved VM made for `key`.
fn saved(t: &Template, key: &str) -> bool {
    std::fs::read_to_string(t.dir.join("key")).is_ok_and(|k| k == key) && t.state.is_file()
}

/// The kind's lock, taken within `deadline` (a build elsewhere holds it).
async fn lock(path: &Path, deadline: Instant) -> Result<nix::fcntl::Flock<File>, TemplateError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(crate::private::FILE_MODE)
        .open(path)
        .map_err(io("open", path))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((_, e)) => return Err(io("lock", path)(e.into())),
        }
    }
}

/// Boots the template VM, waits for `core.ready`, saves it into `t.state` (through a partial
/// directory renamed into place), and stops it.
async fn build(
    spec: &TemplateSpec,
    key: &str,
    t: &Template,
    deadline: Instant,
) -> Result<(), TemplateError> {
    let partial = t.dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    crate::private::create_dir(&partial).map_err(io("create", &partial))?;
    // The VM's own directory (sockets, logs, the jail's mount point, placeholder disks), on the
    // run directory's file system, removed with the VM.
    let builds = crate::vm::run_dir().join("templates");
    remove_dead_builds(&builds, &file_name(&t.dir));
    let vm_dir = builds.join(format!("{}.{}", file_name(&t.dir), std::process::id()));
    let result = build_in(spec, &partial, &vm_dir, deadline).await;
    let _ = std::fs::remove_dir_all(&vm_dir);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    let key_path = partial.join("key");
    {
        use std::io::Write;
        let mut f = crate::private::create_file(&key_path).map_err(io("create", &key_path))?;
        f.write_all(key.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io("write", &key_path))?;
    }
    let _ = std::fs::remove_dir_all(&t.dir);
    std::fs::rename(&partial, &t.dir).map_err(io("rename into place", &partial))?;
    Ok(())
}

/// Removes the VM directories `<name>.<pid>` of builds whose process is gone (killed while it
/// built: its QEMU died with it, see `set_pdeathsig` in the QEMU backend).
fn remove_dead_builds(builds: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(builds) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

async fn build_in(
    spec: &TemplateSpec,
    partial: &Path,
    vm_dir: &Path,
    deadline: Instant,
) -> Result<(), TemplateError> {
    crate::private::create_dir(vm_dir).map_err(io("create", vm_dir))?;
    let mut disks = Vec::new();
    for i in 0..spec.disks {
        // Empty: the guest sees a disk of size 0 and reads nothing from it, and agentd unbinds
        // it before the save anyway.
        let path = vm_dir.join(format!("disk{i}"));
        crate::private::create_file(&path).map_err(io("create", &path))?;
        disks.push(DiskSpec {
            serial: format!("template{i}"),
            path,
            read_only: true,
        });
    }
    let console_log = vm_dir.join("console.log");
    crate::private::create_file(&console_log).map_err(io("create", &console_log))?;
    let vm = VmSpec {
        id: format!("template-{}", file_name(vm_dir)),
        dir: vm_dir.to_path_buf(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        kernel: spec.kernel.clone(),
        initramfs: spec.initramfs.clone(),
        cmdline: spec.boot_env().to_cmdline_words(),
        disks,
        shares: Vec::new(),
        net: None,
        agent_socket: vm_dir.join("agent.sock"),
        console_log,
        cgroup: None,
        start: VmStart::BootTemplate,
    };
    let mut vmm = Qemu::new().launch(&vm).map_err(TemplateError::Vmm)?;
    let qmp = vmm
        .take_qmp()
        .ok_or_else(|| TemplateError::Failed("QEMU has no QMP channel".into()))?;
    wait_ready(&mut vmm, &vm.agent_socket, deadline).await?;
    // agentd notices the disconnection and waits for the next host: the state every clone
    // resumes in. A moment for it to get there (a clone would also cope with being earlier).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state_path = partial.join("state");
    let state = crate::private::create_file(&state_path).map_err(io("create", &state_path))?;
    let saved = tokio::task::spawn_blocking(move || save(qmp, &state, deadline).map(|()| state))
        .await
        .map_err(|e| TemplateError::Failed(format!("the save task: {e}")))?;
    let state = match saved {
        Ok(s) => s,
        Err(e) => {
            let tail = vmm.vmm_log_tail(5);
            tracing::warn!("template save failed; QEMU's log: {tail}");
            return Err(e);
        }
    };
    drop(vmm);
    state.sync_all().map_err(io("sync", &state_path))?;
    Ok(())
}

/// Connects to the agent socket and reads `core.ready`; the connection is then closed.
async fn wait_ready(
    vmm: &mut VmmProcess,
    socket: &Path,
    deadline: Instant,
) -> Result<(), TemplateError> {
    let stream = loop {
        if let Some(exit) = vmm.try_exit() {
            return Err(TemplateError::Failed(format!(
                "QEMU exited before the agent socket was up ({exit}): {}",
                vmm.vmm_log_tail(5)
            )));
        }
        match crate::socket_path::connect(socket).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(io("connect to", socket)(e)),
        }
    };
    let mut stream = stream
        .into_std()
        .map_err(io("take over the agent connection", socket))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(left))?;
        msb_protocol::read_frame(&mut stream).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
    .map_err(|e| TemplateError::Failed(format!("the agent reader: {e}")))?
    .map_err(io("read core.ready from", &socket))
    .and_then(|frame| {
        let kind = frame
            .and_then(|f| Message::from_frame(&f).ok())
            .map(|m| m.kind);
        match kind.as_deref() {
            Some(Ready::TYPE) => Ok(()),
            other => Err(TemplateError::Failed(format!(
                "the guest sent {other:?} instead of core.ready"
            ))),
        }
    })
}

/// Migrates the running template VM into `state` over QMP and waits until it is complete.
fn save(
    qmp: std::os::unix::net::UnixStream,
    state: &File,
    deadline: Instant,
) -> Result<(), TemplateError> {
    use serde_json::json;
    let mut qmp = Qmp::new(qmp, deadline).map_err(TemplateError::Save)?;
    qmp.execute_with_fd("getfd", json!({ "fdname": "template" }), state.as_raw_fd())
        .map_err(TemplateError::Save)?;
    // Migrated while running: the clone then resumes running (a stopped source's state would
    // restore stopped). The guest is idle, so it converges at once.
    qmp.execute("migrate", json!({ "uri": "fd:template" }))
        .map_err(TemplateError::Save)?;
    loop {
        let status = qmp
            .execute("query-migrate", json!({}))
            .map_err(TemplateError::Save)?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some(s @ ("failed" | "cancelled")) => {
                return Err(TemplateError::Failed(format!(
                    "migration {s}: {}",
                    status
                        .get("error-desc")
                        .and_then(|d| d.as_str())
                        .unwrap_or("no reason given")
                )))
            }
            _ if Instant::now() >= deadline => {
                return Err(TemplateError::Failed(
                    "the save did not finish in time".into(),
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> TemplateSpec {
        for f in ["vmlinux", "initramfs.cpio"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        TemplateSpec {
            vcpus: 1,
            memory_mib: 256,
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
            disks: 2,
            log: None,
        }
    }

    #[test]
    fn the_key_names_every_input_and_changes_with_each() {
        if Qemu::new().resolved_program().is_err() {
            msb_test_e2e::skip("qemu-system-x86_64 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = spec(dir.path());
        let key = base.key().unwrap();
        let names: Vec<&str> = key.lines().map(|l| l.split('=').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "format",
                "qemu",
                "kernel",
                "initramfs",
                "accel",
                "tsc_khz",
                "vcpus",
                "memory_mib",
                "disks",
                "cmdline"
            ]
        );
        assert!(key.ends_with("disks=2\ncmdline=MSB_TEMPLATE=1\n"), "{key}");
        let variants = [
            TemplateSpec {
                vcpus: 2,
                ..base.clone()
            },
            TemplateSpec {
                memory_mib: 512,
                ..base.clone()
            },
            TemplateSpec {
                disks: 3,
                ..base.clone()
            },
            TemplateSpec {
                log: Some("debug".into()),
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(v.key().unwrap(), key, "{v:?}");
        }
        // A rebuilt kernel (a new file in its place) is another template.
        std::fs::remove_file(&base.kernel).unwrap();
        std::fs::write(&base.kernel, "another kernel").unwrap();
        assert_ne!(base.key().unwrap(), key);
        // And a missing one is named.
        std::fs::remove_file(&base.initramfs).unwrap();
        let e = base.key().unwrap_err().to_string();
        assert_eq!(e, format!("read {}", base.initramfs.display()));
    }

    #[test]
    fn only_a_template_saved_for_the_key_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let t = Template {
            dir: dir.path().join("t"),
            state: dir.path().join("t/state"),
            cmdline: vec![],
        };
        assert!(!saved(&t, "k\n"));
        std::fs::create_dir(&t.dir).unwrap();
        std::fs::write(t.dir.join("key"), "k\n").unwrap();
        assert!(!saved(&t, "k\n"), "no state");
        std::fs::write(&t.state, "x").unwrap();
        assert!(saved(&t, "k\n"));
        assert!(!saved(&t, "other\n"));
        t.discard();
        assert!(!t.dir.exists());
    }

    #[test]
    fn templates_of_replaced_files_are_pruned() {
        if Qemu::new().resolved_program().is_err() {
            msb_test_e2e::skip("qemu-system-x86_64 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let root = dir.path().join("templates");
        let save = |name: &str, key: &str| {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join("key"), key).unwrap();
            std::fs::write(root.join(name).join("state"), "x").unwrap();
            std::fs::write(root.join(format!("{name}.lock")), "").unwrap();
        };
        save("current", &s.key().unwrap());
        save(
            "old-format",
            &s.key()
                .unwrap()
                .replace(&format!("format={FORMAT}\n"), "format=0\n"),
        );
        std::fs::write(&s.kernel, "a rebuilt kernel, longer").unwrap();
        let replaced = s.key().unwrap();
        save("replaced", &replaced);
        std::fs::remove_file(&s.initramfs).unwrap();
        std::fs::write(&s.initramfs, "initramfs").unwrap();
        prune_stale(&root);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["current.lock", "old-format.lock", "replaced.lock"],
            "every one named a replaced file or an old format; lock files stay"
        );
        save("now", &s.key().unwrap());
        // One whose lock another holds (a build) stays until it is free.
        save("busy", &replaced);
        let held = nix::fcntl::Flock::lock(
            std::fs::File::open(root.join("busy.lock")).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        prune_stale(&root);
        assert!(root.join("now/state").exists(), "a current one stays");
        assert!(root.join("busy/state").exists(), "a locked one stays");
        drop(held);
        prune_stale(&root);
        assert!(!root.join("busy").exists());
    }

    #[test]
    fn builds_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(format!("abc.{}", std::process::id()));
        let dead = dir.path().join("abc.999999999");
        let other = dir.path().join("abd.999999999");
        for d in [&ours, &dead, &other] {
            std::fs::create_dir(d).unwrap();
        }
        remove_dead_builds(dir.path(), "abc");
        assert!(ours.exists() && other.exists() && !dead.exists());
    }
}
