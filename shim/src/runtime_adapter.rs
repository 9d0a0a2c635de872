//! The adapter from [`crate::sandbox`] to the real runtime crate (VMM backends, guest agent
//! client). **Not wired yet**: the runtime crate's `Sandbox` and agent client are being written in
//! parallel. Until then the production factory refuses to boot with a clear message, so the shim
//! binary starts, serves containerd and fails `Create` plainly instead of hanging.
//!
//! What the adapter has to do, once `msb_runtime` exposes it:
//! - `boot`: pick the backend (`auto|krun|qemu`), boot with the kernel/initramfs/vCPUs/memory of
//!   [`SandboxConfig`], wait for `core.ready`, record the VMM pid.
//! - `prepare_rootfs`: EROFS image of the lowers cached under `cache_dir/<layer chain key>.erofs`,
//!   a sparse ext4 upper in the container's state dir, both hot-attached (or attached at boot)
//!   as virtio-blk with serials; return the `RootfsSpec` naming them.
//! - every other method: the matching agent message (`core.container.*`, `core.exec.*`), with
//!   exec sessions turned into [`crate::sandbox::ExecSession`] channels.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::SandboxConfig;
use crate::sandbox::{Sandbox, SandboxError, SandboxFactory};

/// The production factory (placeholder until the runtime lands).
#[derive(Debug, Default)]
pub struct RuntimeFactory;

#[async_trait]
impl SandboxFactory for RuntimeFactory {
    async fn boot(
        &self,
        id: &str,
        config: &SandboxConfig,
        _state_dir: &Path,
    ) -> Result<Arc<dyn Sandbox>, SandboxError> {
        Err(SandboxError::Boot(format!(
            "sandbox {id} (backend {}): the microsandbox runtime is not wired into this shim build yet",
            config.backend
        )))
    }
}
