//! The krun backend: a libkrun microVM (crate `msb_krun`) in its own VMM process.
//!
//! libkrun's enter call never returns (the VMM `_exit`s when the guest powers off), so the VM
//! cannot live inside the runtime's process. [`Krun::launch`] spawns the small `msb-krun-vmm`
//! program (crate `krun-vmm`) in its own process group and hands it a [`LaunchConfig`] as JSON in
//! a sealed memfd inherited as **fd 3** ([`CONFIG_FD`]): never on argv or in the environment, so
//! nothing of it shows in `/proc/*/cmdline` or `/proc/*/environ`.
//!
//! What the VMM process does with it (see `krun-vmm`): the guest kernel from the `libkrunfw`
//! shared library, the same initramfs with agentd as `/init` as the QEMU backend, the disks as
//! virtio-blk with their serials as block ids, the `agent` virtio-console port on a connection
//! accepted from [`LaunchConfig::agent_socket`] (it listens there, as QEMU does), the guest
//! console to [`LaunchConfig::console_log`]. When the VM fails, it appends the cause and a
//! suggestion to that console log, which is what [`crate::Vm::start`] shows.
//!
//! A pod network ([`crate::net`]) reaches the VMM as its TAP's descriptor, inherited as **fd 4**
//! ([`NET_FD`]) and named by [`LaunchConfig::net`]: the TAP lives in the pod's network namespace
//! and the VMM in the host's, so the VMM can never open it by name (which is all `msb_krun`'s
//! own TAP backend does); `msb-krun-vmm` serves the descriptor through a small `NetBackend` of
//! its own.
//!
//! Files in the sandbox directory: `krun.log` (the VMM's own log, like `qemu.log`) and
//! `console.log` (the guest console, plus the VMM's verdict when the VM failed).

use std::ffi::OsString;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use serde::{Deserialize, Serialize};

use super::{Backend, BackendKind, VmSpec, VmmError, VmmProcess};

/// The descriptor the VMM process reads its [`LaunchConfig`] from.
pub const CONFIG_FD: i32 = 3;

/// The descriptor the VMM process finds the pod network's TAP on, when [`LaunchConfig::net`] is
/// set.
pub const NET_FD: i32 = 4;

/// The largest pod MTU the krun backend carries. libkrun's virtio-net device offers neither
/// `VIRTIO_NET_F_MTU` nor mergeable receive buffers nor any receive offload, so the guest's
/// driver posts receive buffers for 1514-byte frames only (what the virtio spec asks of a driver
/// then) and drops anything longer: a larger MTU would boot a guest whose large frames vanish.
pub const MAX_NET_MTU: u32 = 1500;

/// The VMM program, looked up next to the current executable, then on PATH.
pub const VMM_PROGRAM: &str = "msb-krun-vmm";

/// The file name libkrun `dlopen`s for its guest kernel (soname of libkrunfw 5).
pub const KRUNFW_NAME: &str = "libkrunfw.so.5";

/// The file `hack/libkrunfw` writes next to the library: `<version> <origin>`.
pub const KRUNFW_VERSION_FILE: &str = "libkrunfw.version";

/// The largest LaunchConfig the VMM accepts (a few KiB in practice).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// How long the VMM waits for the runtime to connect to the agent socket before giving up.
pub const AGENT_ACCEPT_TIMEOUT_MS: u64 = 60_000;

/// Everything the VMM process needs to build and enter the VM. Serialized as JSON on fd 3.
///
/// Paths are absolute host paths. No secret belongs here either (the guest's `MSB_*` settings
/// end up on its kernel command line), but the hand-off keeps even this out of `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfig {
    /// Sandbox id, for logs.
    pub id: String,
    /// Virtual CPUs (at least 1).
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The `libkrunfw` shared library holding the guest kernel.
    pub krunfw: PathBuf,
    /// The initramfs with agentd as `/init`.
    pub initramfs: PathBuf,
    /// The guest's init inside the initramfs.
    pub init: String,
    /// Extra kernel command line words (`MSB_*` settings), appended to libkrun's own.
    pub cmdline: Vec<String>,
    /// virtio-blk disks, in order.
    pub disks: Vec<LaunchDisk>,
    /// virtio-fs shares served by libkrun in-process.
    pub shares: Vec<LaunchShare>,
    /// Where the VMM listens for the runtime's agent connection.
    pub agent_socket: PathBuf,
    /// How long it waits for that connection.
    pub agent_accept_timeout_ms: u64,
    /// The guest console's log file.
    pub console_log: PathBuf,
    /// The pod network's TAP, if the VM has one. Absent from the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<LaunchNet>,
}

/// The pod network of [`LaunchConfig`]: a TAP descriptor the VMM inherits, already configured
/// by the runtime (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`, up, redirected to and from the pod
/// interface), served as one virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchNet {
    /// The descriptor number in the VMM process ([`NET_FD`]), not the runtime's own.
    pub fd: i32,
    /// The guest interface's MAC (the pod interface's).
    pub mac: [u8; 6],
    /// The pod interface's MTU (the guest sets it: libkrun cannot announce it).
    pub mtu: u32,
}

/// A disk of [`LaunchConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchDisk {
    /// Block id, which the guest reads as `/sys/block/vd*/serial`.
    pub serial: String,
    /// Raw image on the host.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// A virtio-fs share of [`LaunchConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchShare {
    /// Mount tag.
    pub tag: String,
    /// Host directory.
    pub host_path: PathBuf,
    /// Read-only (libkrun cannot do this yet: the VMM refuses such a share).
    pub read_only: bool,
}

impl LaunchConfig {
    /// The launch configuration for `spec`, with the guest kernel from `krunfw`.
    pub fn from_spec(spec: &VmSpec, krunfw: PathBuf) -> LaunchConfig {
        LaunchConfig {
            id: spec.id.clone(),
            vcpus: spec.vcpus.max(1),
            memory_mib: spec.memory_mib,
            krunfw,
            initramfs: spec.initramfs.clone(),
            init: "/init".into(),
            cmdline: spec.cmdline.clone(),
            disks: spec
                .disks
                .iter()
                .map(|d| LaunchDisk {
                    serial: d.serial.clone(),
                    path: d.path.clone(),
                    read_only: d.read_only,
                })
                .collect(),
            shares: spec
                .shares
                .iter()
                .map(|s| LaunchShare {
                    tag: s.tag.clone(),
                    host_path: s.host_path.clone(),
                    read_only: s.read_only,
                })
                .collect(),
            agent_socket: spec.agent_socket.clone(),
            agent_accept_timeout_ms: AGENT_ACCEPT_TIMEOUT_MS,
            console_log: spec.console_log.clone(),
            net: spec.net.as_ref().map(|n| LaunchNet {
                fd: NET_FD,
                mac: n.mac,
                mtu: n.mtu,
            }),
        }
    }

    /// The JSON the VMM reads.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a LaunchConfig always serializes")
    }

    /// Parses what the runtime wrote.
    pub fn from_json(bytes: &[u8]) -> Result<LaunchConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The krun backend.
#[derive(Debug, Default, Clone)]
pub struct Krun {
    program: Option<PathBuf>,
    krunfw: Option<PathBuf>,
}

impl Krun {
    /// Finds the VMM program and libkrunfw at launch; `$MSB_KRUN_VMM` and `$MSB_LIBKRUNFW`
    /// override them.
    pub fn new() -> Krun {
        Krun {
            program: std::env::var_os("MSB_KRUN_VMM").map(PathBuf::from),
            krunfw: std::env::var_os("MSB_LIBKRUNFW").map(PathBuf::from),
        }
    }

    /// Uses this VMM program.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Krun {
        self.program = Some(program.into());
        self
    }

    /// Uses this libkrunfw library.
    pub fn with_krunfw(mut self, krunfw: impl Into<PathBuf>) -> Krun {
        self.krunfw = Some(krunfw.into());
        self
    }

    /// The VMM program: the override, else `msb-krun-vmm` next to the current executable (where
    /// cargo and a release put it beside `msbox` and the shim), else on PATH.
    pub fn program(&self) -> Result<PathBuf, VmmError> {
        if let Some(p) = &self.program {
            return Ok(p.clone());
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(VMM_PROGRAM)));
        find_program(beside.as_deref(), std::env::var_os("PATH")).ok_or_else(|| {
            VmmError::MissingProgram {
                program: VMM_PROGRAM.into(),
                hint: "build it with `cargo build -p msb-krunvmm` and keep it next to msbox or on PATH (or set MSB_KRUN_VMM)".into(),
            }
        })
    }

    /// The libkrunfw library for `spec`: the override, else [`KRUNFW_NAME`] in the guest kernel's
    /// asset directory (where `hack/libkrunfw` puts it), else in `$MSB_ASSET_DIR`.
    pub fn krunfw(&self, spec: &VmSpec) -> Result<PathBuf, VmmError> {
        let dirs = [
            spec.kernel.parent().map(Path::to_path_buf),
            Some(crate::GuestAssets::dir()),
        ];
        find_krunfw(self.krunfw.as_deref(), dirs.iter().flatten()).ok_or_else(|| {
            VmmError::MissingProgram {
                program: KRUNFW_NAME.into(),
                hint: "run hack/libkrunfw (hack/guest-assets does), or set MSB_LIBKRUNFW to the library".into(),
            }
        })
    }
}

/// `beside` when it is a file, else the first `name` of `beside` found on `path`.
fn find_program(beside: Option<&Path>, path: Option<OsString>) -> Option<PathBuf> {
    if let Some(b) = beside {
        if b.is_file() {
            return Some(b.to_path_buf());
        }
    }
    let name = beside
        .and_then(Path::file_name)
        .unwrap_or(VMM_PROGRAM.as_ref());
    std::env::split_paths(&path?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The libkrunfw to use: `explicit` as given (an error surfaces when libkrun loads it), else
/// the first directory holding [`KRUNFW_NAME`].
pub fn find_krunfw<'a>(
    explicit: Option<&Path>,
    dirs: impl IntoIterator<Item = &'a PathBuf>,
) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    dirs.into_iter()
        .map(|d| d.join(KRUNFW_NAME))
        .find(|p| p.exists())
}

/// The version of the libkrunfw at `lib`: the first word of [`KRUNFW_VERSION_FILE`] beside it,
/// else the suffix of the file the soname link resolves to (`libkrunfw.so.5.6.1` -> `5.6.1`).
pub fn krunfw_version(lib: &Path) -> Option<String> {
    let recorded = lib
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join(KRUNFW_VERSION_FILE)).ok())
        .and_then(|s| s.split_whitespace().next().map(str::to_owned));
    recorded.or_else(|| {
        let real = std::fs::canonicalize(lib).ok()?;
        let name = real.file_name()?.to_str()?;
        name.strip_prefix("libkrunfw.so.").map(str::to_owned)
    })
}

/// Spawns `cmd` with `config` readable on fd [`CONFIG_FD`] (a sealed memfd positioned at 0).
/// The descriptor is close-on-exec in this process, so no other child inherits it.
pub fn spawn_with_config(
    cmd: &mut tokio::process::Command,
    config: &[u8],
) -> std::io::Result<tokio::process::Child> {
    spawn_vmm(cmd, config, None)
}

/// Spawns `cmd` with `config` on fd [`CONFIG_FD`] and, when given, `tap` on fd [`NET_FD`].
/// Only the child gets them at those numbers, without close-on-exec; every other descriptor
/// (`tap`'s own number included) stays close-on-exec, so no other child inherits the TAP.
pub fn spawn_vmm(
    cmd: &mut tokio::process::Command,
    config: &[u8],
    tap: Option<BorrowedFd<'_>>,
) -> std::io::Result<tokio::process::Child> {
    let memfd = sealed_memfd(config)?;
    // (source in this process, number in the child); -1: nothing to place.
    let moves: [(RawFd, RawFd); 2] = [
        (memfd.as_raw_fd(), CONFIG_FD),
        (tap.map_or(-1, |t| t.as_raw_fd()), NET_FD),
    ];
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl/dup2 (nix's
    // wrappers are the bare calls, nothing allocated, errors as errno), which are
    // async-signal-safe; the sources stay open in the parent until spawn returns (the memfd
    // lives until the end of this function, `tap` is borrowed for all of it).
    unsafe {
        cmd.pre_exec(move || {
            place_fds(&moves)?;
            // Nothing the VMM execs gains privileges (it execs nothing; this holds if it did).
            nix::sys::prctl::set_no_new_privs()?;
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(memfd);
    child
}

/// In the child before exec: puts each source at its number, without close-on-exec. Each source
/// is first copied above every target number (close-on-exec, gone at exec), so no `dup2` onto a
/// target can close a source still to be placed (a TAP that happened to be fd 3, say); and the
/// final `dup2` always makes a new descriptor, whose close-on-exec is clear.
fn place_fds(moves: &[(RawFd, RawFd); 2]) -> std::io::Result<()> {
    let floor = moves.iter().map(|m| m.1).max().unwrap_or(0) + 1;
    let mut staged = [-1; 2];
    for (slot, (src, _)) in staged.iter_mut().zip(moves) {
        if *src >= 0 {
            *slot = fcntl(*src, FcntlArg::F_DUPFD_CLOEXEC(floor))?;
        }
    }
    for (tmp, (_, dst)) in staged.iter().zip(moves) {
        if *tmp >= 0 {
            nix::unistd::dup2(*tmp, *dst)?;
        }
    }
    Ok(())
}

/// A close-on-exec memfd holding `data`, sealed against any change, read position at 0.
fn sealed_memfd(data: &[u8]) -> std::io::Result<OwnedFd> {
    let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
    let mut file = std::fs::File::from(memfd_create(c"msb-launch-config", flags)?);
    file.write_all(data)?;
    file.seek(SeekFrom::Start(0))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(file))
}

impl Backend for Krun {
    fn kind(&self) -> BackendKind {
        BackendKind::Krun
    }

    fn launch(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError> {
        if let Err(why) = crate::host::kvm_usable() {
            // Forced past `auto`: try anyway (the failure is then quick and explained), but say
            // up front what will most likely happen.
            tracing::warn!(sandbox = %spec.id, "krun requested although {why}; the guest will most likely fail (use --backend qemu)");
        }
        if let Some(net) = spec.net.as_ref().filter(|n| n.mtu > MAX_NET_MTU) {
            return Err(VmmError::Unsupported {
                backend: BackendKind::Krun,
                what: format!(
                    "a pod network with MTU {} (at most {MAX_NET_MTU}: libkrun's virtio-net \
                     cannot announce an MTU, so the guest takes no longer frames; use the qemu \
                     backend)",
                    net.mtu
                ),
            });
        }
        if spec.start != super::VmStart::Boot {
            return Err(VmmError::Unsupported {
                backend: BackendKind::Krun,
                what: "templates (saving and restoring a VM)".into(),
            });
        }
        let program = self.program()?;
        let config = LaunchConfig::from_spec(spec, self.krunfw(spec)?);
        let log_path = spec.dir.join("krun.log");
        let io = |what: &str| {
            let what = format!("{what} {}", log_path.display());
            move |source| VmmError::Io { what, source }
        };
        let log = crate::private::create_file(&log_path).map_err(io("create"))?;
        let log2 = log.try_clone().map_err(io("dup"))?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true);
        // Before `spawn_vmm`'s own hook: the VMM runs nothing outside the sandbox's cgroup.
        if let Some(cg) = &spec.cgroup {
            cg.on_spawn(&mut cmd);
        }
        let tap = spec.net.as_ref().map(|n| n.tap.as_fd());
        let child = spawn_vmm(&mut cmd, &config.to_json(), tap).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::MissingProgram {
                program: program.display().to_string(),
                hint: "build it with `cargo build -p msb-krunvmm`".into(),
            },
            _ => VmmError::Io {
                what: super::starting(&program.display().to_string(), spec),
                source: e,
            },
        })?;
        tracing::debug!(sandbox = %spec.id, net = config.net.is_some(), "krun: {} (config on fd {CONFIG_FD}, a pod TAP on fd {NET_FD} if net), libkrunfw {}", program.display(), config.krunfw.display());
        VmmProcess::new(child, spec.console_log.clone(), log_path, BackendKind::Krun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::ShareSpec;

    fn spec() -> VmSpec {
        VmSpec {
            shares: vec![ShareSpec {
                tag: "share".into(),
                host_path: "/h".into(),
                read_only: false,
            }],
            ..crate::vmm::sample_spec()
        }
    }

    #[test]
    fn launch_config_carries_the_spec() {
        let c = LaunchConfig::from_spec(&spec(), "/a/libkrunfw.so.5".into());
        let json = String::from_utf8(c.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"s","vcpus":2,"memory_mib":512,"krunfw":"/a/libkrunfw.so.5","initramfs":"/a/initramfs.cpio","init":"/init","cmdline":["MSB_HOSTNAME=h"],"disks":[{"serial":"lower","path":"/d/lower.img","read_only":true},{"serial":"upper","path":"/d/upper.img","read_only":false}],"shares":[{"tag":"share","host_path":"/h","read_only":false}],"agent_socket":"/d/agent.sock","agent_accept_timeout_ms":60000,"console_log":"/d/console.log"}"#
        );
        assert_eq!(LaunchConfig::from_json(json.as_bytes()).unwrap(), c);
        // A field the VMM does not know is an error, not silently dropped.
        let extra = json.replace(r#""id":"s""#, r#""id":"s","secret":1"#);
        assert!(LaunchConfig::from_json(extra.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn config_reaches_fd_3_and_nowhere_else() {
        let config = LaunchConfig::from_spec(&spec(), "/a/libkrunfw.so.5".into()).to_json();
        // The child reads fd 3, then shows its argv and environment: the config must be on fd 3
        // only, and fd 3 must be read-only data at offset 0.
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "cat <&3; echo; tr '\\0' ' ' </proc/$$/cmdline; echo; tr '\\0' ' ' </proc/$$/environ; echo; ls -l /proc/$$/fd/3",
        ])
        .stdout(Stdio::piped())
        .process_group(0);
        let child = spawn_with_config(&mut cmd, &config).unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap().as_bytes(), &config[..]);
        let argv = lines.next().unwrap();
        let env = lines.next().unwrap();
        assert!(
            !argv.contains("lower.img") && !env.contains("lower.img"),
            "{text}"
        );
        assert!(
            lines.next().unwrap().contains("memfd:msb-launch-config"),
            "{text}"
        );
    }

    fn net_spec(mtu: u32) -> (VmSpec, std::fs::File) {
        // Any descriptor stands for the TAP here: what matters is where the child finds it. At
        // 100 or above, so that its number is none the child's `ls` could open.
        let tap = tempfile::tempfile().unwrap();
        let high = fcntl(tap.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
        // SAFETY: `high` was just returned by F_DUPFD_CLOEXEC, so it is open and owned by no
        // one else.
        let high = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) };
        let net = crate::net::NetDevice {
            tap: std::sync::Arc::new(high),
            mac: [0x02, 0x6d, 0x73, 0x62, 0, 0x0a],
            mtu,
        };
        (
            VmSpec {
                net: Some(net),
                ..spec()
            },
            tap,
        )
    }

    #[test]
    fn launch_config_carries_the_pod_network() {
        let (spec, _tap) = net_spec(1450);
        let c = LaunchConfig::from_spec(&spec, "/a/libkrunfw.so.5".into());
        assert_eq!(
            c.net,
            Some(LaunchNet {
                fd: NET_FD,
                mac: [0x02, 0x6d, 0x73, 0x62, 0, 0x0a],
                mtu: 1450
            })
        );
        let json = String::from_utf8(c.to_json()).unwrap();
        assert!(
            json.ends_with(r#","net":{"fd":4,"mac":[2,109,115,98,0,10],"mtu":1450}}"#),
            "{json}"
        );
        assert_eq!(LaunchConfig::from_json(json.as_bytes()).unwrap(), c);
        let extra = json.replace(r#""mtu":1450"#, r#""mtu":1450,"name":"tap0_msb""#);
        assert!(LaunchConfig::from_json(extra.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn the_tap_reaches_fd_4_and_only_there() {
        let (spec, tap) = net_spec(1500);
        let config = LaunchConfig::from_spec(&spec, "/a/libkrunfw.so.5".into()).to_json();
        let ours = spec.net.as_ref().unwrap().fd();
        let target = std::fs::read_link(format!("/proc/self/fd/{ours}")).unwrap();
        // fd 3 is the config, fd 4 the very file of the TAP's descriptor; its own number (and
        // every other descriptor of ours) is not inherited.
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "cat <&3; echo; readlink /proc/$$/fd/4; ls /proc/$$/fd | sort -n | tr '\\n' ' '",
        ])
        .stdout(Stdio::piped())
        .process_group(0);
        let tap_fd = spec.net.as_ref().unwrap().tap.as_fd();
        let child = spawn_vmm(&mut cmd, &config, Some(tap_fd)).unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap().as_bytes(), &config[..]);
        assert_eq!(lines.next().unwrap(), target.to_str().unwrap(), "{text}");
        // 0-2, 3, 4, then whatever the shell, `ls` or the test harness hold (not close-on-exec
        // in the harness, so not ours to judge): never the TAP's own number.
        let fds: Vec<i32> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(&fds[..5], &[0, 1, 2, 3, 4], "{text}");
        assert!(!fds.contains(&ours), "fd {ours} inherited: {text}");
        drop(tap);
    }

    #[test]
    fn krun_refuses_an_mtu_its_guest_cannot_receive() {
        let (spec, _tap) = net_spec(9001);
        let e = Krun::new()
            .with_program("/nonexistent/msb-krun-vmm")
            .with_krunfw("/nonexistent/libkrunfw.so.5")
            .launch(&spec)
            .unwrap_err();
        assert!(
            matches!(&e, VmmError::Unsupported { what, .. } if what.contains("MTU 9001")),
            "{e}"
        );
    }

    #[test]
    fn the_config_memfd_is_sealed() {
        let fd = sealed_memfd(b"{}").unwrap();
        let mut f = std::fs::File::from(fd);
        assert!(f.write_all(b"x").is_err());
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!(s, "{}");
    }

    #[test]
    fn program_and_krunfw_lookup() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join(VMM_PROGRAM), "").unwrap();
        let beside = d.path().join(VMM_PROGRAM);
        // Not beside the executable: found on PATH.
        assert_eq!(
            find_program(
                Some(&beside),
                Some(OsString::from(format!("/nonexistent:{}", bin.display())))
            ),
            Some(bin.join(VMM_PROGRAM))
        );
        std::fs::write(&beside, "").unwrap();
        assert_eq!(find_program(Some(&beside), None), Some(beside.clone()));
        assert_eq!(
            Krun::new().with_program("/x/vmm").program().unwrap(),
            PathBuf::from("/x/vmm")
        );

        let assets = d.path().join("assets");
        std::fs::create_dir(&assets).unwrap();
        let dirs = [PathBuf::from("/nonexistent"), assets.clone()];
        assert_eq!(find_krunfw(None, &dirs), None);
        std::fs::write(assets.join("libkrunfw.so.5.6.1"), "").unwrap();
        std::os::unix::fs::symlink("libkrunfw.so.5.6.1", assets.join(KRUNFW_NAME)).unwrap();
        let lib = find_krunfw(None, &dirs).unwrap();
        assert_eq!(lib, assets.join(KRUNFW_NAME));
        assert_eq!(krunfw_version(&lib).as_deref(), Some("5.6.1"));
        std::fs::write(
            assets.join(KRUNFW_VERSION_FILE),
            "5.6.1-x microsandbox==0.7.11\n",
        )
        .unwrap();
        assert_eq!(krunfw_version(&lib).as_deref(), Some("5.6.1-x"));
        assert_eq!(
            find_krunfw(Some(Path::new("/o/lib.so")), &dirs),
            Some(PathBuf::from("/o/lib.so"))
        );
    }
}
