//! Constants shared by the host and the guest.

use std::time::Duration;

/// Protocol generation carried in every envelope (`v`). Modelled on microsandbox's generation 7.
pub const PROTOCOL_GENERATION: u32 = 7;

/// Name of the virtio-console port that carries the agent channel.
pub const AGENT_PORT_NAME: &str = "agent";

/// virtio-fs tag of the runtime share (image cache and per-sandbox files), when one is attached.
pub const RUNTIME_FS_TAG: &str = "msb_runtime";

/// Where agentd mounts the runtime share inside the guest.
pub const RUNTIME_MOUNT_POINT: &str = "/.msb";

/// virtio-fs tag of a VM's volume share: the host directories and files its containers bind
/// (read-write; each volume is a bind mount on the host, read-only where the spec says `ro`).
pub const VOLUMES_FS_TAG: &str = "msb_volumes";

/// Where agentd mounts the volume share, on first use: volume `n` of container `c` is
/// `VOLUMES_MOUNT_POINT/c/n`, which agentd binds at the spec's destination.
pub const VOLUMES_MOUNT_POINT: &str = "/run/msb/volumes";

/// Where agentd mounts, on first use, a disk that several containers share (a pod's upper disk):
/// a [`crate::types::StorageRef::Dir`] under `DISKS_MOUNT_DIR/<serial>/` makes agentd mount the
/// disk with that serial there (ext4) and keep it until shutdown.
pub const DISKS_MOUNT_DIR: &str = "/run/msb/disks";

/// Smallest valid `len` field: a frame always carries `id` (4 bytes) and `flags` (1 byte).
pub const MIN_FRAME_LEN: u32 = 5;

/// Largest valid `len` field (4 MiB). Bounds every allocation made for one frame.
pub const MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;

/// Size of the `len` prefix.
pub const LEN_PREFIX_SIZE: usize = 4;

/// Bytes of a frame header after `len`: `id` (4) + `flags` (1).
pub const FRAME_HEADER_SIZE: usize = 5;

/// Largest stdout/stderr/stdin chunk a sender puts in one `core.exec.*` frame. Leaves room for
/// the envelope under [`MAX_FRAME_LEN`].
pub const MAX_STREAM_CHUNK: usize = 1024 * 1024;

/// Stdin bytes a host may have sent to one exec session and not yet seen acknowledged by
/// `core.exec.stdin.ack` (1 MiB). The guest queues them without ever blocking its one reader of
/// the agent port, so a process that does not read its stdin cannot stall the VM's other
/// sessions (nor the signal that would end it).
pub const STDIN_WINDOW: usize = 1024 * 1024;

/// Largest chunk of a streamed `core.fs.data` transfer (3 MiB).
pub const MAX_FS_CHUNK: usize = 3 * 1024 * 1024;

/// Correlation id reserved for connection-level control frames.
pub const CONTROL_ID: u32 = 0;

/// Host clients the relay serves at most.
pub const RELAY_MAX_CLIENTS: u32 = 128;

/// Width of each relay client's correlation id range.
pub const RELAY_ID_STEP: u32 = u32::MAX / RELAY_MAX_CLIENTS;

/// How long agentd lets container inits handle SIGTERM on `core.shutdown` before SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// How long the host waits for the VMM to exit after `core.shutdown` before killing it: the
/// guest's [`SHUTDOWN_GRACE`], then syncing and unmounting its disks, which under TCG takes
/// seconds.
pub const SHUTDOWN_HOST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the host waits for the guest's reply to a quick request (`core.ping`,
/// `core.container.{pause,resume,update,stats,pids}`): work of milliseconds in agentd, except a
/// freeze, which agentd itself gives up on after 5 s. 30 s leaves room for TCG emulation on a
/// loaded host; a guest that takes longer is treated as hung (the request fails with a timeout;
/// the shim decides what to kill).
pub const AGENT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the host waits for the reply to a request that does real work in the guest:
/// `core.container.create` (mounts of lowers, upper and overlay), `core.container.delete` (kill,
/// up to 5 s for the cgroup to empty, unmounts), the first event of `core.exec.request` (fork and
/// exec, a handoff init), `core.net.configure` (up to 5 s for the interface) and the reply after
/// a `core.fs` write. Each takes seconds under TCG, several times that with other guests on the
/// same cores.
pub const AGENT_WORK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the host waits for room to queue one frame for the guest. Room comes back as soon as
/// one queued frame (at most [`MAX_FRAME_LEN`]) has been written to the agent port, which takes
/// milliseconds even under TCG; a guest that takes nothing for this long has stopped reading its
/// port, and a sender (a signal, stdin, a request) gets a timeout instead of waiting forever.
pub const AGENT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the shim waits for the exit of a SIGKILLed sandbox init (a pod's, or a single
/// container's VM), or for the delete of a VM's last container, before it kills the VMM:
/// SIGKILL cannot be caught, and agentd reports the exit within about a second (its output
/// drain), but several guests under TCG on two loaded cores took more than 10 s. A guest that
/// has not answered in 30 s is hung, and containerd must get its exit (137) and run its cleanup.
pub const KILL_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code reported for a process killed by the OOM killer (`128 + SIGKILL`).
pub const OOM_EXIT_CODE: i32 = 137;

/// Base added to a signal number to form the exit code of a signal death, as shells and runc do.
pub const SIGNAL_EXIT_BASE: i32 = 128;

/// Most bytes of host entropy a `core.restore` carries (agentd refuses more): 64 are plenty to
/// reseed the kernel's generator, which is all they are for.
pub const MAX_RESTORE_ENTROPY: usize = 256;
