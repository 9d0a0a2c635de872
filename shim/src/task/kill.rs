//! `Kill`: deliver a signal to a process, or with `all` to every process of the container.
//!
//! A process that never started is stopped on the spot with 128+signal (runc kills its waiting
//! init the same way); a process that already exited answers NOT_FOUND "process already
//! finished", which containerd expects.
//!
//! SIGKILL of a sandbox's init (a pod's sandbox container, or a container that is its own
//! sandbox) ends the sandbox, and containerd must get that exit even from a guest that does not
//! answer (CRI's StopPodSandbox, `ctr task kill -s SIGKILL`, `docker kill` wait for it): the
//! signal, and then the exit, each get until [`PodVm::kill_grace`] after the request, else the
//! VMM is killed. Its processes' sessions then end without a status, which records the init's
//! exit as 137, and containerd's Delete and cleanup follow as after any exit.

use std::sync::Arc;

use containerd_shim::api::{Empty, KillRequest};
use tokio::sync::watch;

use super::state::{Status, Transition};
use super::{ExitInfo, TaskService};
use crate::error::ShimError;
use crate::pod_vm::{PodVm, ProcessKey};

const SIGKILL: i32 = 9;

impl TaskService {
    /// Handles `Kill`.
    pub async fn kill(&self, req: KillRequest) -> Result<Empty, ShimError> {
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| ShimError::InvalidArgument(format!("signal {}", req.signal)))?;
        let (sandbox, key, status, pid, sandbox_init, exited) = {
            let tables = self.inner.tables.lock().await;
            let c = tables.container(&req.id)?;
            let p = c.process(&req.exec_id)?;
            (
                tables.vm_of(&req.id)?,
                p.key.clone(),
                p.status,
                p.pid,
                p.key.exec_id.is_none() && c.sandbox_id == c.id,
                p.exited.subscribe(),
            )
        };
        match status {
            Status::Stopped | Status::Deleted => Err(ShimError::NotFound(format!(
                "process {} of container {} (already finished)",
                if req.exec_id.is_empty() {
                    "init"
                } else {
                    &req.exec_id
                },
                req.id
            ))),
            Status::Created => {
                if signal != 0 {
                    let code = 128 + u32::try_from(signal).unwrap_or(0);
                    self.record_exit(&key, pid, code).await;
                }
                Ok(Empty::default())
            }
            Status::Running | Status::Paused => {
                status.apply(Transition::Signal)?;
                tracing::info!(container = %req.id, exec = %req.exec_id, signal, all = req.all, "kill");
                if signal == SIGKILL && sandbox_init {
                    kill_sandbox_init(sandbox, key, req.all, exited).await?;
                } else {
                    sandbox.signal(&key, signal, req.all).await?;
                }
                Ok(Empty::default())
            }
        }
    }
}

/// SIGKILL to a sandbox's init, with the VMM killed if the guest does not take the signal, or
/// report the exit, within its kill grace. Returns once the signal was delivered (the exit is
/// watched for in the background, as runc's Kill does not wait for it either) or the VMM killed.
async fn kill_sandbox_init(
    vm: Arc<dyn PodVm>,
    key: ProcessKey,
    all: bool,
    mut exited: watch::Receiver<Option<ExitInfo>>,
) -> Result<(), ShimError> {
    let grace = vm.kill_grace();
    let deadline = tokio::time::Instant::now() + grace;
    match tokio::time::timeout_at(deadline, vm.signal(&key, SIGKILL, all)).await {
        Err(_) => {
            tracing::warn!(container = %key.container,
                "the guest took no SIGKILL for the sandbox's init within {grace:?}: killing the VMM");
            vm.kill_vmm().await;
            return Ok(());
        }
        // The guest answered; its error (the process already gone, its exit on the way) is
        // containerd's to see, and the exit is still watched for.
        Ok(answered) => {
            tokio::spawn(async move {
                // `Err` from `wait_for`: the process's record is gone, so is the process.
                let reported = tokio::time::timeout_at(deadline, exited.wait_for(Option::is_some))
                    .await
                    .is_ok();
                if !reported {
                    tracing::warn!(container = %key.container,
                        "no exit of the SIGKILLed sandbox init within {grace:?}: killing the VMM");
                    vm.kill_vmm().await;
                }
            });
            answered?;
        }
    }
    Ok(())
}
