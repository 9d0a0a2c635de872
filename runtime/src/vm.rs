//! A [`Vm`]: one microVM, its directory, its VMM process and its agent connection, as one
//! owned value (the whole runtime calls this "the VM"; "sandbox" is the pod's word, one level up
//! in the shim). [`Vm::shutdown`] stops it cleanly; dropping it kills the VMM and removes the
//! directory, so an early return cannot leak a process, a socket or a disk image.
//!
//! The VM's directory (`$MSB_RUN_DIR/sandboxes/<id>`, default `/run/microsandbox`, or any
//! directory the caller names, of any path length: see [`crate::socket_path`]): `agent.sock`
//! (the agent port), `relay.sock` (more host clients), `console.log` (guest console), `qemu.log`
//! or `krun.log` (VMM output), `virtiofsd<N>.log` and `fs<N>.sock` (QEMU shares), `jail/`
//! (QEMU: the empty mount point of its jail's root), and the disk images the caller put there.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use msb_protocol::boot::BootEnv;
use msb_protocol::types::{ClockSync, Ready, Shutdown};

use crate::agent::{AgentClient, AgentError};
use crate::assets::{GuestAssets, MissingAsset};
use crate::cgroup::Cgroup;
use crate::relay::{Relay, RelayHandle, RelayOptions};
use crate::vmm::{self, BackendKind, DiskSpec, ShareSpec, VmExit, VmSpec, VmmError, VmmProcess};

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Vm id: a directory name.
    pub id: String,
    /// `None` for `auto`.
    pub backend: Option<BackendKind>,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Kernel and initramfs.
    pub assets: GuestAssets,
    /// `MSB_*` settings.
    pub boot_env: BootEnv,
    /// Disks (images usually inside [`VmConfig::dir`]).
    pub disks: Vec<DiskSpec>,
    /// virtio-fs shares of host directories.
    pub shares: Vec<ShareSpec>,
    /// The pod network's TAP ([`crate::net::PodNetwork::device`]); `None`: loopback only.
    pub net: Option<crate::net::NetDevice>,
    /// Restore a saved template instead of booting where it can ([`crate::template`]): QEMU, no
    /// shares, no network. Default: on unless `$MSB_TEMPLATES` is `off`.
    pub templates: bool,
    /// How long the guest may take to send `core.ready`.
    pub ready_timeout: Duration,
    /// The sandbox directory (default `$MSB_RUN_DIR/sandboxes/<id>`); removed with the sandbox.
    pub dir: PathBuf,
    /// The host cgroup the VMM and its companions run in (the sandbox's `cgroupsPath`), made
    /// where missing and removed with the VM ([`crate::cgroup`]); `None`: the caller's cgroup.
    pub cgroup: Option<crate::cgroup::CgroupPath>,
}

impl VmConfig {
    /// Defaults: auto backend, 1 vCPU, 256 MiB, assets from `$MSB_ASSET_DIR`.
    pub fn new(id: impl Into<String>) -> VmConfig {
        let id = id.into();
        VmConfig {
            dir: run_dir().join("sandboxes").join(&id),
            id,
            backend: None,
            vcpus: 1,
            memory_mib: 256,
            assets: GuestAssets::default_location(),
            boot_env: BootEnv::default(),
            disks: Vec::new(),
            shares: Vec::new(),
            net: None,
            templates: crate::template::enabled_by_default(),
            ready_timeout: Duration::from_secs(60),
            cgroup: None,
        }
    }

    /// The sandbox directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }
}

/// `$MSB_RUN_DIR` or `/run/microsandbox`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("MSB_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/microsandbox"))
}

/// Why a sandbox could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Kernel or initramfs missing.
    #[error(transparent)]
    Assets(#[from] MissingAsset),
    /// The VMM could not start.
    #[error("start the {backend} VMM")]
    Vmm {
        /// Backend.
        backend: BackendKind,
        /// Cause.
        #[source]
        source: VmmError,
    },
    /// The guest did not come up.
    #[error("the guest did not become ready: {reason}{logs}")]
    NotReady {
        /// What happened.
        reason: String,
        /// The last lines of the VMM's log (where QEMU says why it refused to start) and of the
        /// guest console, each under a heading; empty when both are.
        logs: String,
    },
    /// The agent connection failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The VMM's cgroup could not be made or opened.
    #[error("place the VMM in cgroup {path}")]
    Cgroup {
        /// The cgroup.
        path: String,
        /// Cause.
        #[source]
        source: crate::cgroup::CgroupError,
    },
    /// A file operation on the sandbox directory failed.
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
}

/// A running sandbox.
#[derive(Debug)]
pub struct Vm {
    id: String,
    dir: PathBuf,
    vmm: VmmProcess,
    /// Dropped after `vmm` (fields drop in order): its directories go once the VMM and its
    /// companions are reaped.
    cgroup: Option<Cgroup>,
    agent: AgentClient,
    relay: RelayHandle,
    ready: Ready,
    boot_time: Duration,
    from_template: bool,
}

impl Vm {
    /// Creates the directory (if the caller has not) and boots. The caller may put disk images
    /// into [`VmConfig::dir`] first.
    pub async fn start(cfg: VmConfig) -> Result<Vm, VmError> {
        cfg.assets.check()?;
        let dir = cfg.dir();
        crate::private::create_dir(&dir).map_err(|source| VmError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        let (kind, why) = vmm::select_backend(cfg.backend);
        tracing::info!(sandbox = %cfg.id, "backend {kind}: {why}");
        // Made before the VMM starts and so dropped after it on every early return below.
        let cgroup = match &cfg.cgroup {
            Some(path) => Some(place(path, &dir)?),
            None => None,
        };
        let spec = VmSpec {
            id: cfg.id.clone(),
            dir: dir.clone(),
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            kernel: cfg.assets.kernel.clone(),
            initramfs: cfg.assets.initramfs.clone(),
            cmdline: cfg.boot_env.to_cmdline_words(),
            disks: cfg.disks.clone(),
            shares: cfg.shares.clone(),
            net: cfg.net.clone(),
            agent_socket: dir.join("agent.sock"),
            console_log: dir.join("console.log"),
            cgroup: cgroup.as_ref().map(Cgroup::join),
            start: vmm::VmStart::Boot,
        };
        // Made here, private: the VMM opens it without creating it anew, so its mode stays.
        crate::private::create_file(&spec.console_log).map_err(|source| VmError::Io {
            what: "create",
            path: spec.console_log.clone(),
            source,
        })?;
        let started = Instant::now();
        let deadline = started + cfg.ready_timeout;
        let template = match (&cfg, kind) {
            (cfg, BackendKind::Qemu)
                if cfg.templates && spec.shares.is_empty() && spec.net.is_none() =>
            {
                let t = crate::template::TemplateSpec {
                    vcpus: cfg.vcpus,
                    memory_mib: cfg.memory_mib,
                    kernel: cfg.assets.kernel.clone(),
                    initramfs: cfg.assets.initramfs.clone(),
                    disks: cfg.disks.len(),
                    log: cfg.boot_env.log.clone(),
                };
                match crate::template::ensure(&t, deadline).await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(sandbox = %cfg.id, "no template, booting: {}", crate::error_chain(&e));
                        None
                    }
                }
            }
            _ => None,
        };
        let mut restored = None;
        if let Some(t) = &template {
            let clone = VmSpec {
                cmdline: t.cmdline.clone(),
                start: vmm::VmStart::Restore(t.state.clone()),
                ..spec.clone()
            };
            match up(kind, &clone, deadline).await {
                Ok(u) => match make_it_ours(&u, &cfg).await {
                    Ok(()) => restored = Some(u),
                    Err(e) => {
                        tracing::warn!(sandbox = %cfg.id, "core.restore failed, booting instead: {e}");
                        drop(u);
                        t.discard();
                    }
                },
                Err(e) => {
                    tracing::warn!(sandbox = %cfg.id, "restoring the template failed, booting instead: {}", crate::error_chain(&e));
                    t.discard();
                }
            }
        }
        let from_template = restored.is_some();
        let Up {
            vmm,
            agent,
            relay,
            ready,
        } = match restored {
            Some(u) => u,
            None => {
                let u = up(kind, &spec, deadline).await?;
                // A booted guest took its wall clock from the emulated RTC, to the second and
                // read while it booted: set it from the host's, as a restored one's is.
                if let Some(now) = unix_time_nanos() {
                    if let Err(e) = u
                        .relay
                        .control(&ClockSync {
                            unix_time_nanos: now,
                        })
                        .await
                    {
                        tracing::warn!(sandbox = %cfg.id, "core.clock.sync not sent: {e}");
                    }
                }
                u
            }
        };
        let boot_time = started.elapsed();
        tracing::info!(sandbox = %cfg.id, from_template, "ready in {} ms (guest: boot {} ms, init {} ms, ready {} ms)", boot_time.as_millis(), ready.boot_time_ns / 1_000_000, ready.init_time_ns / 1_000_000, ready.ready_time_ns / 1_000_000);
        Ok(Vm {
            id: cfg.id,
            dir,
            vmm,
            cgroup,
            agent,
            relay,
            ready,
            boot_time,
            from_template,
        })
    }

    /// The agent client (the relay's first client).
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The relay: more host clients attach on [`RelayHandle::path`] with
    /// [`AgentClient::connect_relay`].
    pub fn relay(&self) -> &RelayHandle {
        &self.relay
    }

    /// What the guest announced.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Whether this VM was restored from a template rather than booted.
    pub fn from_template(&self) -> bool {
        self.from_template
    }

    /// Host wall time from launching the VMM to `core.ready`.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The backend running this VM.
    pub fn backend(&self) -> BackendKind {
        self.vmm.kind()
    }

    /// The VMM's pid.
    pub fn vmm_pid(&self) -> i32 {
        self.vmm.pid()
    }

    /// The host cgroup the VMM and its companions run in, if it has one of its own.
    pub fn cgroup(&self) -> Option<&crate::cgroup::CgroupPath> {
        self.cgroup.as_ref().map(Cgroup::path)
    }

    /// Kills the VMM now, without asking the guest (which did not answer in time): its processes
    /// die with it, the agent connection closes and with it every session (their callers see the
    /// VM gone). [`Vm::shutdown`] or drop then reaps it and removes the directory.
    pub fn kill(&mut self) {
        tracing::warn!(sandbox = %self.id, pid = self.vmm.pid(), "killing the VMM");
        self.vmm.kill();
    }

    /// The last lines of the guest console.
    pub fn console_tail(&self, lines: usize) -> String {
        self.vmm.console_tail(lines)
    }

    /// Asks the guest to power off (containers stopped, disks clean), waits up to `timeout` for
    /// the VMM to exit, kills it otherwise; then removes the directory. Returns within `timeout`
    /// (and the kill) whatever the guest does: a guest that stops reading its port holds the
    /// request back no longer than that either.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<VmExit, VmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // On id 0, which only the relay's owner may send. Its queue to the guest is full while
        // the guest does not read: the request then waits until the deadline, not forever, and
        // not at all once the VMM is gone (killed: nobody will take it).
        let exited = tokio::select! {
            sent = tokio::time::timeout_at(deadline, self.relay.control(&Shutdown)) => {
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(sandbox = %self.id, "core.shutdown not sent: {e}"),
                    Err(_) => tracing::warn!(sandbox = %self.id,
                        "the guest took no core.shutdown within {timeout:?}: killing the VMM"),
                }
                None
            }
            exit = self.vmm.wait() => Some(exit),
        };
        let exit = match exited {
            Some(exit) => exit,
            None => {
                self.vmm
                    .wait_or_kill(deadline.saturating_duration_since(tokio::time::Instant::now()))
                    .await
            }
        }
        .map_err(|source| VmError::Vmm {
            backend: self.vmm.kind(),
            source,
        })?;
        tracing::info!(sandbox = %self.id, "stopped: {exit}");
        Ok(exit)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.vmm.kill();
        // Never through a volume still bound in it (that would delete the host's files).
        let _ = crate::volumes::remove_tree(&self.dir);
    }
}

/// The VM's cgroup made at `path`, and recorded in `dir` for a cleanup without our memory.
fn place(path: &crate::cgroup::CgroupPath, dir: &std::path::Path) -> Result<Cgroup, VmError> {
    let cgroup = Cgroup::create(path).map_err(|source| VmError::Cgroup {
        path: path.to_string(),
        source,
    })?;
    let record = dir.join(crate::cgroup::RECORD_FILE);
    cgroup.record(&record).map_err(|source| VmError::Io {
        what: "write",
        path: record,
        source,
    })?;
    tracing::info!(cgroup = %path, made = cgroup.made().len(), "the VMM's cgroup");
    Ok(cgroup)
}

/// How a VMM that exited before its guest was ready is reported, the same on every path.
fn vmm_exited(exit: &VmExit, when: &str) -> String {
    if exit.guest_panicked {
        format!("the guest kernel panicked {when}")
    } else {
        format!("the VMM exited {when} ({exit})")
    }
}

/// The VMM's exit if it comes within a second (it is likely on its way out), else `None`.
async fn exit_soon(vmm: &mut VmmProcess) -> Option<VmExit> {
    for _ in 0..10 {
        if let Some(exit) = vmm.try_exit() {
            return Some(exit);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vmm.try_exit()
}

fn not_ready(vmm: &VmmProcess, reason: String) -> VmError {
    let mut logs = String::new();
    for (what, tail) in [
        ("VMM log", vmm.vmm_log_tail(10)),
        ("guest console", vmm.console_tail(30)),
    ] {
        if !tail.trim().is_empty() {
            logs.push_str(&format!(
                "\n--- {what} (last lines) ---\n{}",
                tail.trim_end()
            ));
        }
    }
    VmError::NotReady { reason, logs }
}

/// A VMM whose guest is ready, with the relay and the runtime's agent client on it.
#[derive(Debug)]
struct Up {
    vmm: VmmProcess,
    agent: AgentClient,
    relay: RelayHandle,
    ready: Ready,
}

/// Launches the VMM for `spec` and waits until its guest is ready (by `deadline`), or fails fast
/// when the VMM dies first.
async fn up(kind: BackendKind, spec: &VmSpec, deadline: Instant) -> Result<Up, VmError> {
    let dir = &spec.dir;
    let backend = vmm::backend(kind).map_err(|source| VmError::Vmm {
        backend: kind,
        source,
    })?;
    let mut vmm = backend.launch(spec).map_err(|source| VmError::Vmm {
        backend: kind,
        source,
    })?;

    let stream = loop {
        if let Some(exit) = vmm.try_exit() {
            return Err(not_ready(
                &vmm,
                vmm_exited(&exit, "before the agent socket was up"),
            ));
        }
        match crate::socket_path::connect(&spec.agent_socket).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => {
                return Err(not_ready(
                    &vmm,
                    format!("agent socket {}: {e}", spec.agent_socket.display()),
                ))
            }
        }
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    // The relay owns the one agent connection QEMU accepts; our own client is its first,
    // and others (`relay.sock`) may attach while the sandbox runs.
    let relay_socket = dir.join("relay.sock");
    let serve = Relay::serve(
        stream,
        &relay_socket,
        RelayOptions {
            ready_timeout: remaining,
            ..RelayOptions::default()
        },
    );
    tokio::pin!(serve);
    // Waits for core.ready, but gives up as soon as the VMM dies (a crashed guest must fail
    // fast, not after the whole timeout).
    let relay = loop {
        tokio::select! {
            r = &mut serve => match r {
                Ok(relay) => break relay,
                Err(e) => {
                    // A guest connection that ended mostly means the VMM is exiting: say
                    // so, as the other paths do, not only what the relay saw.
                    let reason = match exit_soon(&mut vmm).await {
                        Some(exit) => format!("{}: {e}", vmm_exited(&exit, "before core.ready")),
                        None => e.to_string(),
                    };
                    return Err(not_ready(&vmm, reason));
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(exit) = vmm.try_exit() {
                    return Err(not_ready(&vmm, vmm_exited(&exit, "before core.ready")));
                }
            }
        }
    };
    let own = relay
        .attach()
        .map_err(|e| not_ready(&vmm, format!("attach to the relay: {e}")))?;
    let (agent, ready) = AgentClient::connect_relay(own, Duration::from_secs(10))
        .await
        .map_err(|e| not_ready(&vmm, format!("relay client: {e}")))?;
    Ok(Up {
        vmm,
        agent,
        relay,
        ready,
    })
}

/// Sends `core.restore` to a VM restored from a template: the sandbox's settings, the host's
/// clock and fresh entropy.
async fn make_it_ours(u: &Up, cfg: &VmConfig) -> Result<(), String> {
    use std::io::Read;
    let mut entropy = vec![0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut entropy))
        .map_err(|e| format!("read /dev/urandom: {e}"))?;
    let restore = msb_protocol::types::Restore {
        boot_env: cfg.boot_env.to_cmdline_words(),
        entropy,
        unix_time_nanos: unix_time_nanos().ok_or("the host's clock is before 1970")?,
    };
    u.agent.restore(&restore).await.map_err(|e| e.to_string())
}

/// The host's wall clock, nanoseconds since the Unix epoch.
fn unix_time_nanos() -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from(now.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Deadlines;
    use msb_protocol::types::{ExecRequest, ExecStdin};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    /// A `Vm` whose "VMM" is `sleep` and whose guest sent `core.ready` and then reads nothing
    /// more from its port; the relay's queue to it is filled up.
    async fn vm_with_a_guest_that_stopped_reading(dir: &std::path::Path) -> (Vm, UnixStream) {
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("1000").process_group(0);
        let vmm = VmmProcess::new(
            cmd.spawn().unwrap(),
            dir.join("console.log"),
            dir.join("qemu.log"),
            BackendKind::Qemu,
        )
        .unwrap();
        let (host, mut guest) = UnixStream::pair().unwrap();
        let ready = Ready {
            boot_time_ns: 1,
            init_time_ns: 1,
            ready_time_ns: 1,
            agent_version: "fake".into(),
            kernel_release: "k".into(),
            boot_id: "b".into(),
        };
        let bytes = msb_protocol::Message::new(0, &ready)
            .unwrap()
            .to_frame()
            .to_bytes()
            .unwrap();
        guest.write_all(&bytes).await.unwrap();
        let relay = Relay::serve(host, &dir.join("relay.sock"), RelayOptions::default())
            .await
            .unwrap();
        let (agent, ready) =
            AgentClient::connect_relay(relay.attach().unwrap(), Duration::from_secs(5))
                .await
                .unwrap();
        let agent = agent.with_deadlines(Deadlines {
            send: Duration::from_millis(300),
            ..Deadlines::default()
        });
        // Stdin frames for a process until nothing more fits anywhere on the way to the guest.
        let session = agent.exec(&ExecRequest::default()).await.unwrap();
        let chunk = ExecStdin {
            data: vec![1; msb_protocol::MAX_STREAM_CHUNK],
        };
        let mut sent = 0;
        while agent.send(session.id(), &chunk).await.is_ok() {
            sent += 1;
            assert!(sent < 1000, "the relay queued {sent} MiB");
        }
        let vm = Vm {
            id: "t".into(),
            dir: dir.to_owned(),
            vmm,
            cgroup: None,
            agent,
            relay,
            ready,
            boot_time: Duration::ZERO,
            from_template: false,
        };
        (vm, guest)
    }

    #[tokio::test]
    async fn shutdown_kills_the_vmm_of_a_guest_that_stopped_reading_within_its_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm, _guest) = vm_with_a_guest_that_stopped_reading(tmp.path()).await;
        let pid = vm.vmm_pid();
        let start = Instant::now();
        let exit = tokio::time::timeout(
            Duration::from_secs(20),
            vm.shutdown(Duration::from_millis(500)),
        )
        .await
        .expect("shutdown waited on the guest without a deadline")
        .unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(exit.code, None, "{exit}");
        // Reaped: no such process any more.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn kill_ends_the_vmm_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut vm, _guest) = vm_with_a_guest_that_stopped_reading(tmp.path()).await;
        vm.kill();
        let start = Instant::now();
        let exit = vm.shutdown(Duration::from_secs(10)).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(exit.code, None, "{exit}");
    }
}
