//! `Start`: run a container's init, or an exec added before, in the VM.

use containerd_shim::api::{StartRequest, StartResponse};

use super::state::Transition;
use super::TaskService;
use crate::error::ShimError;
use crate::events::TaskEvent;
use crate::pod_vm::PodVmError;

impl TaskService {
    /// Handles `Start`.
    pub async fn start(&self, req: StartRequest) -> Result<StartResponse, ShimError> {
        let started = std::time::Instant::now();
        let (sandbox, key, request, io) = {
            let tables = self.inner.tables.lock().await;
            let c = tables.container(&req.id)?;
            if !req.exec_id.is_empty() {
                // An exec needs a live container.
                c.init.status.apply(Transition::Use)?;
            }
            let p = c.process(&req.exec_id)?;
            p.status.apply(Transition::Start)?;
            (
                tables.vm_of(&req.id)?,
                p.key.clone(),
                p.request.clone(),
                p.io.clone(),
            )
        };
        let (guest_pid, session, fifos) = match self.launch(&sandbox, &key, request, &io).await {
            Ok(ok) => ok,
            Err(e) => {
                // The process never ran: it is stopped with the status a shell would report.
                let status = match &e {
                    ShimError::Vm(PodVmError::ExecFailed { kind, .. }) => kind.exit_code(),
                    _ => 128,
                };
                let mut tables = self.inner.tables.lock().await;
                if let Ok(p) = tables
                    .container_mut(&req.id)
                    .and_then(|c| c.process_mut(&req.exec_id))
                {
                    if p.transition(Transition::Exit).is_ok() {
                        let info = super::ExitInfo {
                            status: u32::try_from(status).unwrap_or(128),
                            at: std::time::SystemTime::now(),
                        };
                        p.exit = Some(info);
                        p.exited.send_replace(Some(info));
                    }
                }
                return Err(e);
            }
        };
        let pid = super::host_pid(&sandbox);
        let exits = {
            let mut tables = self.inner.tables.lock().await;
            let exits = tables.exits_of(&req.id)?;
            let p = tables.container_mut(&req.id)?.process_mut(&req.exec_id)?;
            p.transition(Transition::Start)?;
            p.pid = pid;
            p.guest_pid = guest_pid;
            exits
        };
        tracing::info!(container = %req.id, exec = %req.exec_id, pid, guest_pid,
            took_ms = started.elapsed().as_millis(), "started");
        // Published before the exit watcher exists, so Start always precedes Exit.
        self.publish(if req.exec_id.is_empty() {
            TaskEvent::Start {
                container_id: req.id.clone(),
                pid,
            }
        } else {
            TaskEvent::ExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
            }
        })
        .await;
        self.watch_process(key, pid, session, fifos, exits);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }
}
