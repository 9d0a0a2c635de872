//! The krun backend's VMM process (`msb-krun-vmm`).
//!
//! libkrun's enter call never returns: the VMM `_exit`s the whole process when the guest powers
//! off. So the runtime (`msb_runtime::vmm::krun`) spawns this program once per VM, in its own
//! process group, and hands it a [`LaunchConfig`] as JSON on an inherited descriptor
//! ([`config_fd`], fd 3), never on argv or in the environment.
//!
//! - [`config_fd`]: reads and parses the LaunchConfig from fd 3.
//! - [`translate`]: LaunchConfig -> builder calls, through the small [`translate::VmConfigurator`]
//!   trait, so every field's translation is checked by unit tests without booting anything.
//! - [`krun`]: that trait on `msb_krun::VmBuilder`, and entering the VM.
//! - [`tap`]: the pod network's TAP, inherited as a descriptor (fd 4), as a `msb_krun`
//!   network backend.
//! - [`agent`]: the `agent` port's host side: listen on the sandbox's socket, accept the
//!   runtime's one connection, give it to the VM.
//! - [`caps`], [`jail`] and [`seccomp`]: the VMM's confinement. The capabilities are cut to
//!   what virtio-fs needs at start; once libkrun has opened its files and before the guest runs,
//!   a mount namespace whose root holds only the virtio-fs shares and `/proc/self/fd`, then a
//!   seccomp deny-list (with the runtime's `no_new_privs`).
//! - [`verdict`]: when the VM fails, the cause and a suggestion, appended to the guest console
//!   log that the runtime shows the user.

pub mod agent;
pub mod caps;
pub mod config_fd;
#[cfg(test)]
mod forked;
pub mod jail;
pub mod krun;
pub mod seccomp;
pub mod tap;
pub mod translate;
pub mod verdict;

pub use msb_runtime::vmm::krun::{
    LaunchConfig, LaunchDisk, LaunchNet, LaunchShare, CONFIG_FD, NET_FD,
};
