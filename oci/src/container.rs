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

use msb_protocol::types::{ContainerCreate, ContainerMount, NamespaceSpec, Resources, RootfsSpec};
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
}

impl HostBindMount {
    /// Whether the spec asks for a read-only bind.
    pub fn readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
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
        let options = m.options().clone().unwrap_or_default();
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind =
            typ == "bind" || typ == "rbind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if is_bind {
            out.host_binds.push(HostBindMount {
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                destination,
                options,
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
        out.sysctls = sysctls;
        if let Some(sandbox) = sandbox_id.filter(|s| *s != id) {
            for ns in linux.namespaces().as_deref().unwrap_or_default() {
                if ns
                    .path()
                    .as_ref()
                    .map_or(true, |p| p.as_os_str().is_empty())
                {
                    continue;
                }
                let slot = match ns.typ() {
                    LinuxNamespaceType::Pid => &mut out.namespaces.share_pid_with,
                    LinuxNamespaceType::Ipc => &mut out.namespaces.share_ipc_with,
                    LinuxNamespaceType::Uts => &mut out.namespaces.share_uts_with,
                    _ => continue,
                };
                *slot = Some(sandbox.to_owned());
            }
        }
    }
    Ok(out)
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
