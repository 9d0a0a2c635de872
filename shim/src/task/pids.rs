//! `Pids`: the container's processes, as pids of the VM's PID namespace; those that belong to an
//! exec carry its id (`containerd.runc.v1.ProcessDetails`, as runc's shim does).

use containerd_shim::api::{PidsRequest, PidsResponse};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::types::task::ProcessInfo;

use super::TaskService;
use crate::error::ShimError;

/// Type URL of runc's process details, which containerd decodes.
pub const PROCESS_DETAILS_TYPE: &str = "containerd.runc.v1.ProcessDetails";

impl TaskService {
    /// Handles `Pids`.
    pub async fn pids(&self, req: PidsRequest) -> Result<PidsResponse, ShimError> {
        let (sandbox, execs) = {
            let tables = self.inner.tables.lock().await;
            let c = tables.container(&req.id)?;
            let execs: Vec<(u32, String)> = c
                .execs
                .iter()
                .filter(|(_, p)| p.guest_pid != 0)
                .map(|(id, p)| (p.guest_pid, id.clone()))
                .collect();
            (tables.vm_of(&req.id)?, execs)
        };
        let pids = sandbox.pids(&req.id).await?;
        let processes = pids
            .into_iter()
            .map(|pid| {
                let info = execs
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .and_then(|(_, exec_id)| {
                        let details = ProcessDetails {
                            exec_id: exec_id.clone(),
                            ..Default::default()
                        };
                        details.write_to_bytes().ok().map(|value| Any {
                            type_url: PROCESS_DETAILS_TYPE.to_owned(),
                            value,
                            ..Default::default()
                        })
                    });
                ProcessInfo {
                    pid,
                    info: info.into(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }
}
