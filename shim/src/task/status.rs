//! `State`: what containerd shows in `ctr task ls` and uses to reconcile.

use containerd_shim::api::{StateRequest, StateResponse};
use containerd_shim::protos::protobuf::MessageField;

use super::TaskService;
use crate::error::ShimError;
use crate::events::timestamp;

impl TaskService {
    /// Handles `State`.
    pub async fn state(&self, req: StateRequest) -> Result<StateResponse, ShimError> {
        let tables = self.inner.tables.lock().await;
        let c = tables.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        Ok(StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.clone(),
            pid: p.pid,
            status: p.status.to_proto().into(),
            stdin: p.io.stdin.clone(),
            stdout: p.io.stdout.clone(),
            stderr: p.io.stderr.clone(),
            terminal: p.io.terminal,
            exit_status: p.exit.map(|e| e.status).unwrap_or(0),
            exited_at: p
                .exit
                .map(|e| MessageField::some(timestamp(e.at)))
                .unwrap_or_default(),
            ..Default::default()
        })
    }
}
