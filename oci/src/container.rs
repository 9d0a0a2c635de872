//! OCI spec -> what the guest needs to prepare a container (`core.container.create`).
//!
//! Kernel file systems (`proc`, `sysfs`, `tmpfs`, `devpts`, `mqueue`, `cgroup`/`cgroup2`) are
//! created inside the guest. Bind mounts name host paths the guest cannot see; they are returned
//! apart as [`HostBindMount`]s so the caller decides (share, copy, or refuse), in keeping with
//! the rule that the guest never gets a host directory unless a user asks for it.
//!
//! Resources follow cgroup v2: `memory.limit` -> `memory.max`, `cpu.quota/period` ->
//! `cpu.max`, `cpu.shares` -> `cpu.weight` (runc's conversion), `pids.limit` -> `pids.max`;
//! non-positive values mean "no limit".

use std::path::Path;

use msb_protocol::types::{
    ContainerCreate, ContainerMount, NamespaceSource, NamespaceSpec, Resources, RootfsSpec,
};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};

use crate::bundle::BundleError;

/// A bind mount of a host path requested by the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBindMount {
    /// Host path.
    pub source: String,
    /// Path in the container.
    pub destination: String,
    /// Its options (`rbind`, `ro`, ...).
    pub options: Vec<String>,
    /// How many of [`ContainerSpec::mounts`] come before it in the spec: where it goes back
    /// once the caller has made it a mount the guest can provide, so the spec's order holds.
    pub position: usize,
}

impl HostBindMount {
    /// Whether the spec asks for a read-only bind.
    pub fn readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// Whether the spec asks for a recursive bind (`rbind`, or type `rbind`).
    pub fn recursive(&self) -> bool {
        self.options.iter().any(|o| o == "rbind")
    }
}

/// The container part of a spec, ready to become a `ContainerCreate` once the root is known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    /// Hostname of the UTS namespace.
    pub hostname: Option<String>,
    /// Mounts the guest provides, in spec order.
    pub mounts: Vec<ContainerMount>,
    /// Binds of host paths, in spec order (not part of the create message).
    pub host_binds: Vec<HostBindMount>,
    /// Namespace sharing within the pod.
    pub namespaces: NamespaceSpec,
    /// cgroup limits.
    pub resources: Resources,
    /// sysctls, sorted by name.
    pub sysctls: Vec<(String, String)>,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// `linux.seccomp` ([`crate::seccomp`]).
    pub seccomp: Option<msb_protocol::seccomp::Seccomp>,
}

impl ContainerSpec {
    /// The create message for container `id` on `rootfs`.
    pub fn into_create(self, id: &str, rootfs: RootfsSpec) -> ContainerCreate {
        ContainerCreate {
            id: id.to_owned(),
            rootfs,
            mounts: self.mounts,
            hostname: self.hostname,
            namespaces: self.namespaces,
            handoff_init: None,
            resources: self.resources,
            sysctls: self.sysctls,
            masked_paths: self.masked_paths,
            readonly_paths: self.readonly_paths,
            seccomp: self.seccomp,
        }
    }
}

pub(crate) fn container_spec(
    spec: &Spec,
    id: &str,
    sandbox_id: Option<&str>,
    config_path: &Path,
) -> Result<ContainerSpec, BundleError> {
    let mut out = ContainerSpec {
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        ..ContainerSpec::default()
    };
    for (index, m) in spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let destination = m.destination().to_string_lossy().into_owned();
        let mut options = m.options().clone().unwrap_or_default();
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind =
            typ == "bind" || typ == "rbind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if is_bind {
            if typ == "rbind" && !options.iter().any(|o| o == "rbind") {
                options.push("rbind".to_owned());
            }
            out.host_binds.push(HostBindMount {
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                destination,
                options,
                position: out.mounts.len(),
            });
            continue;
        }
        let kind = match typ.as_str() {
            "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup2" => typ.clone(),
            "cgroup" => "cgroup2".to_owned(),
            _ => {
                return Err(BundleError::UnsupportedMount {
                    path: config_path.to_path_buf(),
                    index,
                    destination,
                    typ,
                })
            }
        };
        out.mounts.push(ContainerMount {
            destination,
            kind,
            source: String::new(),
            options,
        });
    }
    if let Some(linux) = spec.linux() {
        if let Some(res) = linux.resources() {
            out.resources = resources_from_linux(res);
        }
        let mut sysctls: Vec<(String, String)> = linux
            .sysctl()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        sysctls.sort();
        let invalid = |field: String, value: &str, why| BundleError::InvalidValue {
            path: config_path.to_path_buf(),
            field,
            value: value.to_owned(),
            why,
        };
        for (name, _) in &sysctls {
            if msb_protocol::types::sysctl_path(name).is_none() {
                return Err(invalid(
                    "linux.sysctl".to_owned(),
                    name,
                    "is not a sysctl name ([A-Za-z0-9_.-/], no empty, '.' or '..' component)",
                ));
            }
        }
        out.sysctls = sysctls;
        out.namespaces = namespaces(linux, id, sandbox_id);
        let paths = |field: &str, list: &Option<Vec<String>>| {
            let list = list.clone().unwrap_or_default();
            for (i, p) in list.iter().enumerate() {
                if !msb_protocol::types::is_clean_absolute(p) {
                    return Err(invalid(
                        format!("linux.{field}[{i}]"),
                        p,
                        "must be absolute without '.' or '..'",
                    ));
                }
            }
            Ok(list)
        };
        out.masked_paths = paths("maskedPaths", linux.masked_paths())?;
        out.readonly_paths = paths("readonlyPaths", linux.readonly_paths())?;
        if let Some(s) = linux.seccomp() {
            out.seccomp = Some(
                crate::seccomp::seccomp_from_linux(s)
                    .map_err(|e| invalid(e.field, &e.value, e.why))?,
            );
        }
    }
    Ok(out)
}

/// The PID, IPC and UTS namespaces of container `id`, as runc would give them, in the VM.
///
/// A kind the spec does not list is the host's under runc, here the VM's
/// ([`NamespaceSource::Vm`]); one listed without a path is new. One listed with a path is
/// joined: that path names a process of the host (for CRI, the sandbox container's init), which
/// in a VM means the pod's sandbox container, the only one CRI joins. A path in a spec that is
/// not a pod's (no sandbox, or the sandbox itself) names nothing in the VM: the namespace is new.
fn namespaces(
    linux: &oci_spec::runtime::Linux,
    id: &str,
    sandbox_id: Option<&str>,
) -> NamespaceSpec {
    let listed = linux.namespaces().as_deref().unwrap_or_default();
    let source = |kind: LinuxNamespaceType| match listed.iter().find(|ns| ns.typ() == kind) {
        None => NamespaceSource::Vm,
        Some(ns) => match (ns.path(), sandbox_id.filter(|s| *s != id)) {
            (Some(p), Some(sandbox)) if !p.as_os_str().is_empty() => {
                NamespaceSource::Container(sandbox.to_owned())
            }
            _ => NamespaceSource::New,
        },
    };
    NamespaceSpec {
        pid: source(LinuxNamespaceType::Pid),
        ipc: source(LinuxNamespaceType::Ipc),
        uts: source(LinuxNamespaceType::Uts),
    }
}

/// Maps OCI Linux resources (also what `Update` carries) to the guest's cgroup v2 limits.
pub fn resources_from_linux(res: &LinuxResources) -> Resources {
    let mut out = Resources::default();
    if let Some(mem) = res.memory() {
        out.memory_limit = mem
            .limit()
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);
    }
    if let Some(cpu) = res.cpu() {
        out.cpu_quota = cpu.quota().filter(|q| *q > 0);
        out.cpu_period = cpu.period().filter(|p| *p > 0);
        out.cpu_weight = cpu.shares().filter(|s| *s > 0).map(shares_to_weight);
    }
    if let Some(pids) = res.pids() {
        out.pids_limit = Some(pids.limit()).filter(|l| *l > 0);
    }
    out
}

/// Parses the `LinuxResources` JSON containerd sends with `Update`.
pub fn resources_from_json(json: &[u8]) -> Result<Resources, serde_json::Error> {
    let res: LinuxResources = serde_json::from_slice(json)?;
    Ok(resources_from_linux(&res))
}

/// cgroup v1 `cpu.shares` (2..=262144) -> cgroup v2 `cpu.weight` (1..=10000), as runc does.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
    }

    #[test]
    fn update_json_maps_limits() {
        let json = br#"{"memory": {"limit": 268435456}, "cpu": {"shares": 1024,
            "quota": 50000, "period": 100000}, "pids": {"limit": 64}}"#;
        assert_eq!(
            resources_from_json(json).unwrap(),
            Resources {
                memory_limit: Some(268_435_456),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                cpu_weight: Some(39),
                pids_limit: Some(64),
            }
        );
        let unlimited = br#"{"memory": {"limit": -1}, "pids": {"limit": -1}}"#;
        assert_eq!(
            resources_from_json(unlimited).unwrap(),
            Resources::default()
        );
    }
}
