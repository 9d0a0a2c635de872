//! The binary's `delete` action: containerd runs it after the shim process died (crash, OOM
//! kill) to clean up what the shim can no longer Delete. It works from the bundle's record alone:
//! kills the VMM if it still runs (matching pid and start time), removes the container's disk
//! images and state (for a sandbox also the host cgroups its VM made), and answers like runc's
//! shim (exit status 137 = 128+SIGKILL).

use std::path::Path;
use std::time::SystemTime;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;

use crate::events::timestamp;
use crate::record::{BundleRecord, RECORD_FILE};

/// Exit status reported for a task whose shim died.
pub const EXIT_SHIM_DIED: u32 = 137;

/// How long the VMM's cgroups may stay busy after the VMM was killed.
const CGROUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Cleans up the container of `bundle`; never fails (each failure is logged and skipped).
pub fn cleanup_bundle(bundle: &Path) -> DeleteResponse {
    match BundleRecord::read(bundle) {
        Ok(Some(rec)) => cleanup_record(bundle, &rec),
        Ok(None) => tracing::info!(bundle = %bundle.display(), "no cleanup record; nothing to do"),
        Err(e) => tracing::warn!(bundle = %bundle.display(), error = %e, "read cleanup record"),
    }
    DeleteResponse {
        pid: 0,
        exit_status: EXIT_SHIM_DIED,
        exited_at: MessageField::some(timestamp(SystemTime::now())),
        ..Default::default()
    }
}

fn cleanup_record(bundle: &Path, rec: &BundleRecord) {
    if let Some(vmm) = rec.vmm {
        if vmm.is_alive() {
            tracing::info!(pid = vmm.pid, "killing leftover VMM");
            if let Ok(pid) = i32::try_from(vmm.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    for f in &rec.owned_files {
        let _ = std::fs::remove_file(f);
    }
    if rec.sandbox_id == rec.container_id {
        // The pod network's redirect on the pod interface (its TAP died with the VMM), found
        // through the bundle's own spec: a host-device interface goes back to the host with
        // whatever filters it carries.
        if let Some(netns) = msb_oci::Bundle::load(bundle)
            .ok()
            .and_then(|b| b.network_namespace())
        {
            if let Err(e) = msb_runtime::net::cleanup_netns(&netns) {
                tracing::warn!(netns = %netns.display(), error = %e, "remove the pod network's redirect");
            }
        }
        // The VMM's cgroups the VM made (its VMM and virtiofsd are on their way out: killed
        // above, or gone with the VMM's vhost-user connection).
        let vm_dir = rec.vm_dir.join(crate::runtime_adapter::VM_DIR);
        if let Err(e) = msb_runtime::cgroup::remove_recorded(&vm_dir, CGROUP_PATIENCE) {
            tracing::warn!(dir = %vm_dir.display(), error = %crate::error::chain(&e), "remove the VMM's cgroups");
        }
        // Volumes a crashed shim left bound are detached first, never descended into.
        if let Err(e) = msb_runtime::volumes::remove_tree(&rec.vm_dir) {
            tracing::warn!(dir = %rec.vm_dir.display(), error = %e, "remove VM directory");
        }
    }
    let _ = std::fs::remove_file(bundle.join(RECORD_FILE));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::VmmRecord;

    #[test]
    fn cleanup_kills_the_recorded_vmm_and_removes_state() {
        let bundle = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let sandbox_dir = state.path().join("default/sandboxes/c1");
        std::fs::create_dir_all(sandbox_dir.join("vm")).unwrap();
        let upper = sandbox_dir.join("vm/upper.ext4");
        std::fs::write(&upper, b"x").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let rec = BundleRecord {
            namespace: "default".into(),
            container_id: "c1".into(),
            sandbox_id: "c1".into(),
            vm_dir: sandbox_dir.clone(),
            owned_files: vec![upper.clone()],
            vmm: VmmRecord::of_pid(child.id()),
        };
        rec.write(bundle.path()).unwrap();
        let resp = cleanup_bundle(bundle.path());
        assert_eq!(resp.exit_status, 137);
        assert!(resp.exited_at.is_some());
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(!upper.exists());
        assert!(!sandbox_dir.exists());
        assert!(!bundle.path().join(RECORD_FILE).exists());
    }

    #[test]
    fn cleanup_without_record_still_answers() {
        let bundle = tempfile::tempdir().unwrap();
        assert_eq!(cleanup_bundle(bundle.path()).exit_status, 137);
    }
}
