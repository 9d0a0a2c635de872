//! What the shim leaves in the bundle so that `delete` (the binary's cleanup action, run by
//! containerd after the shim process died) can clean up without the shim's memory: the state
//! directory, files to remove, and the VMM process to kill, identified by pid *and* start time so
//! a recycled pid is never killed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the record inside the bundle.
pub const RECORD_FILE: &str = "microsandbox.json";

/// A VMM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmRecord {
    /// Its pid.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22, clock ticks since boot).
    pub start_time: u64,
}

impl VmmRecord {
    /// Records a live process.
    pub fn of_pid(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether the recorded process still runs (same pid, same start time).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// `/proc/<pid>/stat` field 22.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The cleanup record of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// containerd namespace.
    pub namespace: String,
    /// Container id.
    pub container_id: String,
    /// Its pod's sandbox id.
    pub sandbox_id: String,
    /// Its VM's directory, `<state_dir>/<namespace>/sandboxes/<sandbox id>` (removed at cleanup
    /// of the container that is its own sandbox: the pod's sandbox container, or a container
    /// outside a pod).
    pub vm_dir: PathBuf,
    /// Files it owns outside the state directory.
    pub owned_files: Vec<PathBuf>,
    /// The VM's VMM process.
    pub vmm: Option<VmmRecord>,
}

impl BundleRecord {
    /// Writes `bundle/microsandbox.json` (atomically: temp file then rename).
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let path = bundle.join(RECORD_FILE);
        let tmp = bundle.join(format!(".{RECORD_FILE}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }

    /// Reads it back; `None` when the bundle has none.
    pub fn read(bundle: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(bundle.join(RECORD_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_read() {
        let me = std::process::id();
        let rec = VmmRecord::of_pid(me).unwrap();
        assert!(rec.is_alive());
        let stale = VmmRecord {
            pid: me,
            start_time: rec.start_time + 1,
        };
        assert!(!stale.is_alive());
    }

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BundleRecord::read(dir.path()).unwrap(), None);
        let rec = BundleRecord {
            namespace: "default".into(),
            container_id: "c1".into(),
            sandbox_id: "c1".into(),
            vm_dir: "/var/lib/microsandbox/shim/default/sandboxes/c1".into(),
            owned_files: vec!["/x/upper.ext4".into()],
            vmm: Some(VmmRecord {
                pid: 1,
                start_time: 2,
            }),
        };
        rec.write(dir.path()).unwrap();
        assert_eq!(BundleRecord::read(dir.path()).unwrap(), Some(rec));
    }
}
