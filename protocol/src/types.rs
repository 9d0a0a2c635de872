//! Every message payload of the protocol, with its type string and implied flags.
//!
//! Structs travel as text-keyed CBOR maps, byte fields as CBOR byte strings, `None` as null.
//! Unknown fields are ignored and every field added after the first generation has a default,
//! so older peers keep working.

use serde::{Deserialize, Serialize};

use crate::flags::Flags;
use crate::message::Payload;
pub use crate::net::{NetConfigure, NetConfigured, NetFailed};
pub use crate::port::{
    PortAck, PortClose, PortClosed, PortConnect, PortConnected, PortData, PortListening,
};

macro_rules! payloads {
    ($( $(#[$doc:meta])* $ty:ident => $name:literal, $flags:ident; )*) => {
        $(
            impl Payload for $ty {
                const TYPE: &'static str = $name;
                const FLAGS: Flags = Flags::$flags;
            }
        )*

        /// Every message type this crate knows, in declaration order.
        pub const MESSAGE_TYPES: &[(&str, Flags)] = &[ $( ($name, Flags::$flags), )* ];

        /// The flags a known message type implies, or `None` for an unknown type.
        pub fn implied_flags(kind: &str) -> Option<Flags> {
            match kind {
                $( $name => Some(Flags::$flags), )*
                _ => None,
            }
        }
    };
}

payloads! {
    Ready => "core.ready", NONE;
    InitResolved => "core.init.resolved", NONE;
    InitAck => "core.init.ack", NONE;
    ClockSync => "core.clock.sync", NONE;
    Restore => "core.restore", SESSION_START;
    Restored => "core.restored", TERMINAL;
    Shutdown => "core.shutdown", SHUTDOWN;
    RelayClientDisconnected => "core.relay.client.disconnected", NONE;
    Ping => "core.ping", NONE;
    Pong => "core.pong", TERMINAL;
    ErrorReply => "core.error", TERMINAL;
    ExecRequest => "core.exec.request", SESSION_START;
    ExecStarted => "core.exec.started", NONE;
    ExecStdin => "core.exec.stdin", NONE;
    ExecStdinAck => "core.exec.stdin.ack", NONE;
    ExecStdout => "core.exec.stdout", NONE;
    ExecStderr => "core.exec.stderr", NONE;
    ExecResize => "core.exec.resize", NONE;
    ExecSignal => "core.exec.signal", NONE;
    ExecExited => "core.exec.exited", TERMINAL;
    ExecFailed => "core.exec.failed", TERMINAL;
    FsRequest => "core.fs.request", SESSION_START;
    FsData => "core.fs.data", NONE;
    FsResponse => "core.fs.response", TERMINAL;
    ContainerCreate => "core.container.create", SESSION_START;
    ContainerCreated => "core.container.created", NONE;
    ContainerFailed => "core.container.failed", TERMINAL;
    ContainerPause => "core.container.pause", SESSION_START;
    ContainerResume => "core.container.resume", SESSION_START;
    ContainerUpdate => "core.container.update", SESSION_START;
    ContainerDelete => "core.container.delete", SESSION_START;
    ContainerStats => "core.container.stats", SESSION_START;
    ContainerPids => "core.container.pids", SESSION_START;
    ContainerDone => "core.container.done", TERMINAL;
    ContainerStatsReply => "core.container.stats.reply", TERMINAL;
    ContainerPidsReply => "core.container.pids.reply", TERMINAL;
    ContainerOom => "core.container.oom", NONE;
    NetConfigure => "core.net.configure", SESSION_START;
    NetConfigured => "core.net.configured", TERMINAL;
    NetFailed => "core.net.failed", TERMINAL;
    PortListening => "core.port.listening", NONE;
    PortConnect => "core.port.connect", SESSION_START;
    PortConnected => "core.port.connected", NONE;
    PortData => "core.port.data", NONE;
    PortAck => "core.port.ack", NONE;
    PortClose => "core.port.close", NONE;
    PortClosed => "core.port.closed", TERMINAL;
}

// ---------------------------------------------------------------------------------------------
// core
// ---------------------------------------------------------------------------------------------

/// `core.ready` (guest -> host, id 0): agentd is up. Times are CLOCK_BOOTTIME nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// When the kernel handed control to init (agentd's first instruction).
    pub boot_time_ns: u64,
    /// When agentd finished PID 1 set-up (mounts, modules).
    pub init_time_ns: u64,
    /// When agentd opened the agent port and was ready to serve.
    pub ready_time_ns: u64,
    /// agentd's version.
    pub agent_version: String,
    /// **Ours:** the guest kernel release (`uname -r`).
    #[serde(default)]
    pub kernel_release: String,
    /// **Ours:** the guest's `/proc/sys/kernel/random/boot_id`, identifying this VM boot.
    #[serde(default)]
    pub boot_id: String,
}

/// A numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserIds {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// `core.init.resolved` (guest -> host): the default user agentd resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResolved {
    /// The user execs run as when they name none.
    pub default_user: UserIds,
}

/// `core.init.ack` (host -> guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InitAck {}

/// `core.clock.sync` (host -> guest): sets the guest's wall clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSync {
    /// Host wall-clock time, nanoseconds since the Unix epoch.
    pub unix_time_nanos: u64,
}

/// **Ours:** `core.restore` (host -> guest, session start): this VM was restored from a template
/// (booted with `MSB_TEMPLATE=1`, saved once ready) and becomes this sandbox's. agentd sets the
/// wall clock, mixes `entropy` into the kernel's random pool and reseeds it (every clone starts
/// with the template's random state), binds the disks and network devices it left unbound, then
/// applies `boot_env` as it applies its command line at boot. Answered with `core.restored`, or
/// `core.error` naming the step that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The sandbox's `MSB_*` settings as `KEY=VALUE` words, as its command line would carry them.
    pub boot_env: Vec<String>,
    /// Random bytes from the host, at most [`crate::consts::MAX_RESTORE_ENTROPY`].
    #[serde(with = "serde_bytes")]
    pub entropy: Vec<u8>,
    /// Host wall-clock time, nanoseconds since the Unix epoch.
    pub unix_time_nanos: u64,
}

/// **Ours:** `core.restored` (guest -> host): the restored VM is this sandbox's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Restored {}

/// `core.shutdown` (host -> guest, id 0): stop containers, clean disks, power off. Its payload
/// is CBOR null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Shutdown;

/// `core.relay.client.disconnected` (host -> guest): a relay client left; free what its id
/// range owned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayClientDisconnected {
    /// First id of the client's range.
    pub id_start: u32,
    /// One past the last id of the client's range.
    pub id_end_exclusive: u32,
}

/// `core.ping` (host -> guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ping {}

/// `core.pong` (guest -> host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Pong {}

/// Kind of a `core.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The body was not a valid envelope.
    MalformedMessage,
    /// The receiver does not know this message type.
    UnsupportedMessageType,
    /// The frame's flags differ from its type's.
    InvalidFlags,
    /// The payload is not valid for its type.
    InvalidPayload,
    /// The id names no live session of the right kind.
    InvalidSession,
    /// A kind this peer does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// `core.error` (both ways, terminal): a request could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
    /// The type of the offending message, when known.
    #[serde(default)]
    pub offending_type: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------------------------

/// One resource limit, as `setrlimit` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Resource name: `nofile`, `nproc`, ... (see [`crate::boot::RlimitResource`]); the OCI
    /// spelling `RLIMIT_NOFILE` is accepted too.
    pub resource: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// `core.exec.request` (host -> guest, session start): run a process.
///
/// `Default` matches what an absent field decodes to (notably `stdin: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program: an absolute path, or a name looked up in the `PATH` of `env`. It is also argv[0].
    pub cmd: String,
    /// Arguments after argv[0].
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE` each.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// `USER[:GROUP]` or `UID[:GID]` (default: the resolved default user).
    #[serde(default)]
    pub user: Option<String>,
    /// Supplementary group ids (ours; OCI `additionalGids`).
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Run on a pseudo-terminal (stdout carries both streams).
    #[serde(default)]
    pub tty: bool,
    /// Initial terminal rows.
    #[serde(default)]
    pub rows: u16,
    /// Initial terminal columns.
    #[serde(default)]
    pub cols: u16,
    /// Resource limits applied before exec.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// **Ours:** run inside this container's namespaces and rootfs; `None` runs in the VM.
    #[serde(default)]
    pub container: Option<String>,
    /// **Ours:** whether stdin is connected; when false the process gets `/dev/null`.
    #[serde(default = "default_true")]
    pub stdin: bool,
    /// **Ours:** the OCI `process.capabilities` the process keeps; `None` keeps agentd's own (a
    /// process of the VM itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilitySets>,
    /// **Ours:** `PR_SET_NO_NEW_PRIVS` before exec (OCI `noNewPrivileges`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
}

fn default_true() -> bool {
    true
}

/// **Ours:** the five capability sets of a process, by name (`CAP_CHOWN`, ...), as in OCI.
/// Names the guest does not know are ignored (a newer runtime spec), as runc does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySets {
    /// The bounding set.
    #[serde(default)]
    pub bounding: Vec<String>,
    /// The effective set.
    #[serde(default)]
    pub effective: Vec<String>,
    /// The inheritable set.
    #[serde(default)]
    pub inheritable: Vec<String>,
    /// The permitted set.
    #[serde(default)]
    pub permitted: Vec<String>,
    /// The ambient set.
    #[serde(default)]
    pub ambient: Vec<String>,
}

impl Default for ExecRequest {
    fn default() -> Self {
        ExecRequest {
            cmd: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            additional_gids: Vec::new(),
            tty: false,
            rows: 0,
            cols: 0,
            rlimits: Vec::new(),
            container: None,
            stdin: true,
            capabilities: None,
            no_new_privileges: false,
        }
    }
}

/// `core.exec.started` (guest -> host): the process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    /// Its pid in the VM's PID namespace.
    pub pid: u32,
}

/// `core.exec.stdin` (host -> guest): bytes for stdin; empty means EOF (CloseIO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStdin {
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// **ours** `core.exec.stdin.ack` (guest -> host): `bytes` more of the session's stdin left the
/// guest's queue (taken to be written to the process, or discarded once it closed its stdin).
/// The host keeps at most [`crate::STDIN_WINDOW`] bytes unacknowledged per session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStdinAck {
    /// Bytes taken since the previous acknowledgement.
    pub bytes: u64,
}

/// `core.exec.stdout` (guest -> host): bytes from stdout (or the terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStdout {
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `core.exec.stderr` (guest -> host): bytes from stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStderr {
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `core.exec.resize` (host -> guest): new terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// `core.exec.signal` (host -> guest): deliver a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSignal {
    /// Signal number.
    pub signal: i32,
    /// **Ours:** to every process of the exec's container (`Kill --all`), not only this one.
    #[serde(default)]
    pub all: bool,
}

/// `core.exec.exited` (guest -> host, terminal): the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExited {
    /// Exit status, or 128+signal when a signal killed it.
    pub code: i32,
}

/// Why an exec could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecFailureKind {
    /// The program does not exist.
    NotFound,
    /// Permission denied.
    PermissionDenied,
    /// Not an executable format.
    NotExecutable,
    /// The working directory is unusable.
    BadCwd,
    /// The user or groups could not be set.
    UserSetupFailed,
    /// Out of memory.
    OutOfMemory,
    /// The pseudo-terminal could not be set up.
    PtySetupFailed,
    /// Anything else (also a kind this peer does not know).
    #[serde(other)]
    Other,
}

impl ExecFailureKind {
    /// The exit code a shell (and runc users) would see for this failure.
    pub fn exit_code(self) -> i32 {
        match self {
            ExecFailureKind::NotFound => 127,
            ExecFailureKind::PermissionDenied | ExecFailureKind::NotExecutable => 126,
            _ => 128,
        }
    }
}

/// `core.exec.failed` (guest -> host, terminal): the process never ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFailed {
    /// Category.
    pub kind: ExecFailureKind,
    /// The errno, when a syscall failed.
    #[serde(default)]
    pub errno: Option<i32>,
    /// Human-readable detail naming the program or path.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// fs
// ---------------------------------------------------------------------------------------------

/// One file-system operation. Paths are absolute in the VM, or in the container when
/// [`FsRequest::container`] is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsOp {
    /// Metadata of one path.
    Stat {
        /// Path.
        path: String,
    },
    /// Entries of a directory.
    List {
        /// Path.
        path: String,
    },
    /// Stream a file's content back in `core.fs.data` chunks.
    Read {
        /// Path.
        path: String,
    },
    /// Replace a file's content with the `core.fs.data` chunks that follow (an empty chunk ends).
    Write {
        /// Path.
        path: String,
        /// Permission bits for a new file.
        #[serde(default)]
        mode: Option<u32>,
    },
    /// Create a directory (and parents).
    Mkdir {
        /// Path.
        path: String,
        /// Permission bits.
        #[serde(default)]
        mode: Option<u32>,
    },
    /// Remove a file or directory.
    Remove {
        /// Path.
        path: String,
        /// Remove a directory's content too.
        #[serde(default)]
        recursive: bool,
    },
    /// Rename a path.
    Rename {
        /// Old path.
        from: String,
        /// New path.
        to: String,
    },
}

/// `core.fs.request` (host -> guest, session start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequest {
    /// What to do.
    pub op: FsOp,
    /// **Ours:** resolve paths in this container's rootfs.
    #[serde(default)]
    pub container: Option<String>,
}

/// `core.fs.data` (both ways): a chunk of a streamed file, at most 3 MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsData {
    /// The bytes; empty ends a write stream.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Metadata of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FsStat {
    /// Name of the entry (last component).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Mode bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// `core.fs.response` (guest -> host, terminal): the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FsResponse {
    /// Success.
    pub ok: bool,
    /// Error detail when not ok.
    #[serde(default)]
    pub error: Option<String>,
    /// For `stat`.
    #[serde(default)]
    pub stat: Option<FsStat>,
    /// For `list`.
    #[serde(default)]
    pub entries: Vec<FsStat>,
}

// ---------------------------------------------------------------------------------------------
// containers (ours)
// ---------------------------------------------------------------------------------------------

/// Where a piece of a container's storage comes from inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageRef {
    /// A virtio-blk disk found by its `serial=`.
    Serial(String),
    /// An image file inside the guest, loop-mounted read-only. A path under
    /// [`crate::RUNTIME_MOUNT_POINT`] makes agentd mount the runtime share first.
    Image(String),
    /// A directory inside the guest. A path under [`crate::DISKS_MOUNT_DIR`]`/<serial>/` makes
    /// agentd mount that disk first; such an upper directory belongs to its container and is
    /// removed with it.
    Dir(String),
}

/// The container's root: read-only lowers stacked under one writable upper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Read-only EROFS lowers, topmost first.
    pub lower: Vec<StorageRef>,
    /// The writable upper (an ext4 disk or a directory on one).
    pub upper: StorageRef,
    /// File system of the upper when it is a disk (`ext4`).
    #[serde(default = "default_upper_fstype")]
    pub fstype: String,
    /// Mount the merged root read-only (OCI `root.readonly`).
    #[serde(default)]
    pub readonly: bool,
}

fn default_upper_fstype() -> String {
    "ext4".to_owned()
}

/// One mount of the OCI spec, mapped to something the guest can provide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMount {
    /// Path inside the container.
    pub destination: String,
    /// `tmpfs`, `proc`, `sysfs`, `devpts`, `mqueue`, `cgroup2`, `bind` (a guest path) or
    /// `virtiofs` (a share tag).
    pub kind: String,
    /// Source: a guest path for `bind`, a tag for `virtiofs`, ignored otherwise.
    #[serde(default)]
    pub source: String,
    /// mount(8)-style options (`ro`, `nosuid`, `size=65536k`, `mode=755`, ...).
    #[serde(default)]
    pub options: Vec<String>,
}

/// Where one namespace of a container comes from (OCI `linux.namespaces`).
///
/// In the guest, "the host" is the pod's VM: an OCI spec that names no namespace of a kind
/// (runc: stay in the host's) gets the VM's own, shared with agentd and with every other
/// container of the VM that asks for the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceSource {
    /// A new namespace of the container's own (the spec lists the kind without a path).
    #[default]
    New,
    /// The namespace of that container of the pod (the spec joins it by path).
    Container(String),
    /// The VM's own (the spec does not list the kind).
    Vm,
}

/// The PID, IPC and UTS namespaces of a container; its mount namespace is always its own, its
/// network namespace always the VM's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NamespaceSpec {
    /// PID namespace.
    #[serde(default)]
    pub pid: NamespaceSource,
    /// IPC namespace; a container sharing another's also shares its `/dev/shm`.
    #[serde(default)]
    pub ipc: NamespaceSource,
    /// UTS namespace (hostname); the container's `hostname` is set only in a new one.
    #[serde(default)]
    pub uts: NamespaceSource,
}

/// Resource limits of a container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    /// `memory.max` in bytes.
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// `cpu.max` quota in microseconds per period.
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    /// `cpu.max` period in microseconds.
    #[serde(default)]
    pub cpu_period: Option<u64>,
    /// `cpu.weight` (1..=10000).
    #[serde(default)]
    pub cpu_weight: Option<u64>,
    /// `pids.max`.
    #[serde(default)]
    pub pids_limit: Option<i64>,
}

/// `core.container.create` (host -> guest, session start): prepare a container's root and
/// namespaces. Its first process follows as an `exec.request` naming the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCreate {
    /// Container id.
    pub id: String,
    /// Root file system.
    pub rootfs: RootfsSpec,
    /// Mounts of the OCI spec, in order.
    #[serde(default)]
    pub mounts: Vec<ContainerMount>,
    /// Hostname of the container's UTS namespace.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Namespace sharing within the pod.
    #[serde(default)]
    pub namespaces: NamespaceSpec,
    /// `auto` (the image's `/sbin/init` or systemd) or a path: an init system to run as the
    /// container's PID 1 instead of the process itself.
    #[serde(default)]
    pub handoff_init: Option<String>,
    /// cgroup limits.
    #[serde(default)]
    pub resources: Resources,
    /// sysctls to set in the container's namespaces, before its process starts: OCI names
    /// (`kernel.shm_rmid_forced`, or with `/` separators when a component holds a dot).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Paths made inaccessible in the container (OCI `linux.maskedPaths`): `/dev/null` over a
    /// file, an empty read-only tmpfs over a directory; a missing path is skipped.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// Paths made read-only in the container (OCI `linux.readonlyPaths`); a missing path is
    /// skipped.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// **Ours:** the seccomp profile (OCI `linux.seccomp`) every process of the container gets,
    /// its init and each exec; `None`: unconfined.
    #[serde(default)]
    pub seccomp: Option<crate::seccomp::Seccomp>,
}

/// The file under `/proc/sys` of sysctl `name`, relative (`kernel/shm_rmid_forced`), or `None`
/// for a name that is not one: empty, with characters outside `[A-Za-z0-9_.-/]`, or with an
/// empty, `.` or `..` component. As sysctl(8): a name holding a `/` uses `/` as its separator
/// (so a component may hold a dot, `net/ipv4/conf/eth0.1/forwarding`), else the dots are.
pub fn sysctl_path(name: &str) -> Option<String> {
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
    {
        return None;
    }
    let path = if name.contains('/') {
        name.to_owned()
    } else {
        name.replace('.', "/")
    };
    path.split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
        .then_some(path)
}

/// Whether `path` is absolute, with no `.` or `..` component: a path in the container that a
/// guest may resolve without it pointing elsewhere by its spelling.
pub fn is_clean_absolute(path: &str) -> bool {
    path.starts_with('/') && path.split('/').all(|c| c != "." && c != "..")
}

/// `core.container.created` (guest -> host): the root is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerCreated {}

/// `core.container.failed` (guest -> host, terminal): a container request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFailed {
    /// Container id.
    pub id: String,
    /// What failed, naming the step and path.
    pub message: String,
}

/// `core.container.pause` (host -> guest): freeze the container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPause {
    /// Container id.
    pub id: String,
}

/// `core.container.resume` (host -> guest): thaw the container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerResume {
    /// Container id.
    pub id: String,
}

/// `core.container.update` (host -> guest): change the container's cgroup limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUpdate {
    /// Container id.
    pub id: String,
    /// New limits; `None` fields are left as they are.
    pub resources: Resources,
}

/// `core.container.delete` (host -> guest): kill what is left, unmount, forget the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDelete {
    /// Container id.
    pub id: String,
}

/// `core.container.stats` (host -> guest): read the container's cgroup figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// Container id.
    pub id: String,
}

/// `core.container.pids` (host -> guest): list the container's processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPids {
    /// Container id.
    pub id: String,
}

/// `core.container.done` (guest -> host, terminal): pause/resume/update/delete succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerDone {}

/// cgroup v2 CPU figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CpuStats {
    /// `usage_usec`.
    pub usage_usec: u64,
    /// `user_usec`.
    pub user_usec: u64,
    /// `system_usec`.
    pub system_usec: u64,
    /// `nr_periods`.
    #[serde(default)]
    pub nr_periods: u64,
    /// `nr_throttled`.
    #[serde(default)]
    pub nr_throttled: u64,
    /// `throttled_usec`.
    #[serde(default)]
    pub throttled_usec: u64,
}

/// cgroup v2 memory figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemoryStats {
    /// `memory.current`.
    pub usage: u64,
    /// `memory.peak` (0 where the kernel lacks it).
    #[serde(default)]
    pub peak: u64,
    /// `memory.max` (`u64::MAX` for "max").
    pub limit: u64,
    /// `memory.swap.current`.
    #[serde(default)]
    pub swap_usage: u64,
    /// `oom_kill` from `memory.events`.
    #[serde(default)]
    pub oom_kills: u64,
    /// Every counter of `memory.stat`, by name.
    #[serde(default)]
    pub stat: Vec<(String, u64)>,
}

/// cgroup v2 pids figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PidsStats {
    /// `pids.current`.
    pub current: u64,
    /// `pids.max` (0 for "max").
    pub limit: u64,
}

/// cgroup v2 io figures summed over devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IoStats {
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// `core.container.stats.reply` (guest -> host, terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerStatsReply {
    /// CPU.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// Processes.
    pub pids: PidsStats,
    /// Block I/O.
    pub io: IoStats,
}

/// `core.container.pids.reply` (guest -> host, terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerPidsReply {
    /// Pids in the VM's PID namespace, ascending.
    pub pids: Vec<u32>,
}

/// `core.container.oom` (guest -> host, id 0): the container's memory cgroup recorded an OOM
/// kill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerOom {
    /// Container id.
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_become_proc_sys_paths_as_sysctl8_spells_them() {
        let p = |n: &str| sysctl_path(n);
        assert_eq!(
            p("kernel.shm_rmid_forced").as_deref(),
            Some("kernel/shm_rmid_forced")
        );
        assert_eq!(p("fs.mqueue.msg_max").as_deref(), Some("fs/mqueue/msg_max"));
        assert_eq!(
            p("net/ipv4/conf/eth0.1/forwarding").as_deref(),
            Some("net/ipv4/conf/eth0.1/forwarding")
        );
        for bad in [
            "",
            ".",
            "kernel..x",
            "kernel.",
            "/kernel/x",
            "net/../../etc",
            "a b",
            "k=1",
            "x/./y",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn clean_absolute_paths() {
        assert!(is_clean_absolute("/proc/kcore"));
        assert!(is_clean_absolute("/bin/.hidden"));
        assert!(!is_clean_absolute("proc/kcore"));
        assert!(!is_clean_absolute("/proc/../etc/shadow"));
        assert!(!is_clean_absolute("/proc/./x"));
    }
}
