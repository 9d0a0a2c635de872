//! `Delete`: forget an exec, or remove a container: its processes and root in the VM, its disk
//! images on the host, and the VM itself once the pod has no container left.
//!
//! The VM's end does not wait on a guest that does not answer: when the container is the pod's
//! last, its delete in the guest gets [`PodVm::kill_grace`](crate::pod_vm::PodVm::kill_grace)
//! (the VM's shutdown stops every container anyway), and if the guest has not answered by then
//! the VMM is killed before the shutdown, which then only reaps and cleans up. Any other
//! container's delete is bounded by the runtime's deadline, and its host side is cleaned up
//! whatever the guest said.

use containerd_shim::api::{DeleteRequest, DeleteResponse};
use containerd_shim::protos::protobuf::MessageField;

use super::state::Transition;
use super::TaskService;
use crate::error::ShimError;
use crate::events::{timestamp, TaskEvent};
use crate::record::RECORD_FILE;

impl TaskService {
    /// Handles `Delete`.
    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse, ShimError> {
        let started = std::time::Instant::now();
        if !req.exec_id.is_empty() {
            let mut tables = self.inner.tables.lock().await;
            let c = tables.container_mut(&req.id)?;
            let p = c.process_mut(&req.exec_id)?;
            p.status.apply(Transition::Delete)?;
            let p = c.execs.remove(&req.exec_id).expect("looked up above");
            return Ok(response(p.pid, p.exit));
        }

        let (sandbox, vm_ends) = {
            let tables = self.inner.tables.lock().await;
            let c = tables.container(&req.id)?;
            c.init.status.apply(Transition::Delete)?;
            let vm_ends = tables
                .pods
                .get(&c.sandbox_id)
                .is_some_and(|p| p.containers.len() == 1 && p.containers.contains(&req.id));
            (tables.vm_of(&req.id)?, vm_ends)
        };
        let deleted = if vm_ends {
            let grace = sandbox.kill_grace();
            match tokio::time::timeout(grace, sandbox.delete_container(&req.id)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(container = %req.id,
                        "the guest did not delete the VM's last container within {grace:?}: killing the VMM");
                    sandbox.kill_vmm().await;
                    Ok(())
                }
            }
        } else {
            sandbox.delete_container(&req.id).await
        };
        if let Err(e) = deleted {
            // The VM may be gone already; the host side is cleaned up regardless.
            tracing::warn!(container = %req.id, error = %e, "delete container in VM");
        }
        let (container, last_in_pod) = {
            let mut tables = self.inner.tables.lock().await;
            let mut c = tables
                .containers
                .remove(&req.id)
                .ok_or_else(|| ShimError::NotFound(format!("container {}", req.id)))?;
            c.init.transition(Transition::Delete)?;
            for p in c.execs.values_mut() {
                p.drop_stdin();
            }
            c.init.drop_stdin();
            let mut last = None;
            if let Some(pod) = tables.pods.get_mut(&c.sandbox_id) {
                pod.containers.remove(&req.id);
                if pod.containers.is_empty() {
                    last = tables.pods.remove(&c.sandbox_id);
                }
            }
            (c, last)
        };
        let mut vm_stop_ms = None;
        if let Some(pod) = last_in_pod {
            tracing::info!(sandbox = %container.sandbox_id, "last container deleted; stopping VM");
            let stopping = std::time::Instant::now();
            if let Err(e) = pod.vm.shutdown().await {
                tracing::warn!(sandbox = %container.sandbox_id, error = %e, "shut down VM");
            }
            vm_stop_ms = Some(stopping.elapsed().as_millis());
            pod.watcher.abort();
            let _ = msb_runtime::volumes::remove_tree(&pod.dir);
        }
        for f in &container.owned_files {
            if let Err(e) = std::fs::remove_file(f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %f.display(), error = %e, "remove container file");
                }
            }
        }
        let _ = std::fs::remove_file(std::path::Path::new(&container.bundle).join(RECORD_FILE));

        let exit = container.init.exit;
        tracing::info!(container = %req.id, took_ms = started.elapsed().as_millis(), vm_stop_ms, "deleted");
        self.publish(TaskEvent::Delete {
            container_id: req.id.clone(),
            pid: container.init.pid,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.at),
        })
        .await;
        Ok(response(container.init.pid, exit))
    }
}

fn response(pid: u32, exit: Option<super::ExitInfo>) -> DeleteResponse {
    DeleteResponse {
        pid,
        exit_status: exit.map(|e| e.status).unwrap_or(0),
        exited_at: exit
            .map(|e| MessageField::some(timestamp(e.at)))
            .unwrap_or_default(),
        ..Default::default()
    }
}
