//! `Exec`: add a process to a running container (it runs at `Start` with its exec id).

use containerd_shim::api::{Empty, ExecProcessRequest};
use msb_oci::{exec_request_from_process, process_from_json};

use super::state::Transition;
use super::{Process, TaskService};
use crate::error::ShimError;
use crate::events::{TaskEvent, TaskIo};
use crate::pod_vm::ProcessKey;

impl TaskService {
    /// Handles `Exec`.
    pub async fn exec(&self, req: ExecProcessRequest) -> Result<Empty, ShimError> {
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec id is empty".into()));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec process spec is missing".into()))?;
        let process = process_from_json(&spec.value).map_err(ShimError::Process)?;
        let mut request = exec_request_from_process(&process, Some(req.id.clone()))
            .map_err(ShimError::Process)?;
        request.tty = req.terminal;
        request.stdin = !req.stdin.is_empty();
        let io = TaskIo {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut tables = self.inner.tables.lock().await;
            let c = tables.container_mut(&req.id)?;
            c.init.status.apply(Transition::Use)?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {} in container {}",
                    req.exec_id, req.id
                )));
            }
            let key = ProcessKey {
                container: req.id.clone(),
                exec_id: Some(req.exec_id.clone()),
            };
            c.execs
                .insert(req.exec_id.clone(), Process::new(key, io, request));
        }
        self.publish(TaskEvent::ExecAdded {
            container_id: req.id,
            exec_id: req.exec_id,
        })
        .await;
        Ok(Empty::default())
    }
}
