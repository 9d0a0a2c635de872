//! A microsandbox sandbox on the host: one microVM running agentd, its disks, its VMM process
//! and the agent connection.
//!
//! - [`assets`]: where the guest kernel and initramfs are.
//! - [`cgroup`]: the host cgroup the VMM-side processes join (the sandbox's `cgroupsPath`).
//! - [`doctor`]: what this host can run, judged per backend (`msbox doctor`).
//! - [`disks`]: the read-only EROFS lower and the sparse ext4 upper images.
//! - [`host`]: facts about this host (TSC frequency, whether KVM can boot a standard guest).
//! - [`vmm`]: the backends behind one trait ([`vmm::Backend`]): [`vmm::qemu`] and
//!   [`vmm::krun`]. The VMM is always a child process in its own process group.
//! - [`net`]: pod networking: the TAP in the pod's network namespace, redirected to and from
//!   the pod interface, and what the guest configures.
//! - [`agent`]: the async client of agentd's protocol (sessions, backpressure).
//! - [`private`]: directories 0700 and files 0600, whatever the umask.
//! - [`relay`]: serves several host clients over one agent connection.
//! - [`rootfs`]: containers' roots on the host: the layer image cache and the disk layouts of a
//!   single container's VM and of a pod's.
//! - [`vm`]: the owned value tying it together ([`Vm`]); dropping it leaves nothing behind.
//! - [`template`]: a VM restored from a saved template instead of booted (QEMU).
//! - [`socket_path`]: binds and connects Unix sockets whose paths exceed `sun_path`.
//! - [`volumes`]: host directories and files bound into a VM's read-write volume share.

pub mod agent;
pub mod assets;
pub mod cgroup;
pub mod disks;
pub mod doctor;
pub mod host;
pub mod log_cap;
pub mod net;
pub mod private;
pub mod relay;
pub mod rootfs;
pub mod socket_path;
pub mod template;
pub mod vm;
pub mod vmm;
pub mod volumes;

/// An error and its causes on one line, `outer: inner: innermost`: what a log line or an RPC
/// status needs so that users see the root cause.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

pub use agent::{AgentClient, AgentError, ExecEvent, ExecSession, StdinSender};
pub use assets::GuestAssets;
pub use vm::{Vm, VmConfig, VmError};
pub use vmm::{BackendKind, DiskSpec, VmSpec, VmmError};
