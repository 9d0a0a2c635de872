//! Loading an OCI bundle: its directory and `config.json`.
//!
//! We read the file ourselves (rather than `Spec::load`) so that every error names the bundle
//! path and tells a missing file from malformed JSON.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use msb_protocol::types::{ContainerCreate, ExecRequest, RootfsSpec};
use oci_spec::runtime::Spec;

use crate::container::{container_spec, ContainerSpec};
use crate::process::{exec_request_from_process, ProcessError};

/// The spec file of a bundle.
pub const CONFIG_FILE: &str = "config.json";

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// `config.json` could not be read.
    #[error("read {}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a valid runtime spec.
    #[error("parse {}", path.display())]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A field the container needs is absent.
    #[error("{}: {field} is missing", path.display())]
    MissingField {
        /// The field, JSON-path style (`process`, `process.args`).
        field: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The process cannot be mapped.
    #[error("{}: process", path.display())]
    Process {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ProcessError,
    },
    /// A mount of a type the guest cannot provide.
    #[error("{}: mounts[{index}] ({destination}): unsupported type {typ:?}", path.display())]
    UnsupportedMount {
        /// The file.
        path: PathBuf,
        /// Index in `mounts`.
        index: usize,
        /// Its destination.
        destination: String,
        /// Its type.
        typ: String,
    },
    /// A value the guest must not act on (a sysctl name or a path that could leave its tree).
    #[error("{}: {field}: {value:?} {why}", path.display())]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The field, JSON-path style (`linux.maskedPaths[2]`).
        field: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// An OCI bundle: a directory holding `config.json` (and maybe `rootfs/`).
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    spec: Spec,
}

impl Bundle {
    /// Reads `dir/config.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(CONFIG_FILE);
        let bytes = std::fs::read(&path).map_err(|source| BundleError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        let spec = serde_json::from_slice(&bytes)
            .map_err(|source| BundleError::ParseConfig { path, source })?;
        Ok(Self { dir, spec })
    }

    /// Wraps an already parsed spec (tests, the standalone CLI).
    pub fn from_spec(dir: impl Into<PathBuf>, spec: Spec) -> Self {
        Self {
            dir: dir.into(),
            spec,
        }
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `config.json`, for messages.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// The parsed spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The spec's annotations (empty when absent).
    pub fn annotations(&self) -> HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }

    /// `root.path` made absolute against the bundle (default `rootfs`).
    pub fn root_path(&self) -> PathBuf {
        let rel = self
            .spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        self.dir.join(rel)
    }

    /// `root.readonly`.
    pub fn root_readonly(&self) -> bool {
        self.spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false)
    }

    /// The container's first process as an exec request in container `id`.
    pub fn init_exec(&self, id: &str) -> Result<ExecRequest, BundleError> {
        let process = self
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| BundleError::MissingField {
                field: "process",
                path: self.config_path(),
            })?;
        exec_request_from_process(process, Some(id.to_owned())).map_err(|source| {
            BundleError::Process {
                path: self.config_path(),
                source,
            }
        })
    }

    /// Everything of the spec the guest needs to prepare the container except its root.
    ///
    /// `sandbox_id` is the pod's sandbox container (CRI annotation); namespaces the spec joins
    /// by path are shared with it.
    pub fn container_spec(
        &self,
        id: &str,
        sandbox_id: Option<&str>,
    ) -> Result<ContainerSpec, BundleError> {
        container_spec(&self.spec, id, sandbox_id, &self.config_path())
    }

    /// Settings of the spec that confine a process through the host's kernel and so do not
    /// apply in the guest, each as `field=value`: AppArmor and SELinux (the guest kernel has
    /// neither; the VM boundary stands in for them, as in Kata) and the host's devices (a
    /// privileged CRI container lists every device of the node, which the VM does not have).
    /// The caller logs them; they are not errors, so specs written for runc run unchanged.
    pub fn ignored_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = self.spec.process() {
            if let Some(a) = p.apparmor_profile().as_deref().filter(|a| !a.is_empty()) {
                out.push(format!("process.apparmorProfile={a}"));
            }
            if let Some(l) = p.selinux_label().as_deref().filter(|l| !l.is_empty()) {
                out.push(format!("process.selinuxLabel={l}"));
            }
        }
        if let Some(linux) = self.spec.linux() {
            if let Some(l) = linux.mount_label().as_deref().filter(|l| !l.is_empty()) {
                out.push(format!("linux.mountLabel={l}"));
            }
            let devices = linux.devices().as_deref().unwrap_or_default();
            if !devices.is_empty() {
                out.push(format!("linux.devices=<{} host devices>", devices.len()));
            }
        }
        out
    }

    /// The network namespace the spec joins by path (`linux.namespaces[network].path`): for
    /// a CRI pod's sandbox container, the namespace CNI prepared. `None` for a new namespace,
    /// none at all (the host's), or an empty path: the VM then has loopback only.
    pub fn network_namespace(&self) -> Option<PathBuf> {
        self.spec
            .linux()
            .as_ref()?
            .namespaces()
            .as_deref()?
            .iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
            .path()
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The spec's `linux.cgroupsPath` as given (`None` when absent or empty): the host cgroup
    /// the VM's VMM joins when this container boots it.
    pub fn cgroups_path(&self) -> Option<PathBuf> {
        self.spec
            .linux()
            .as_ref()?
            .cgroups_path()
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// Whether the spec lists no network namespace at all: the process would run in the
    /// host's network (a CRI pod with `hostNetwork`, `ctr run --net-host`).
    pub fn joins_host_network(&self) -> bool {
        !self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_deref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            })
    }

    /// The whole `core.container.create` for container `id` on the given root.
    pub fn container_create(
        &self,
        id: &str,
        sandbox_id: Option<&str>,
        rootfs: RootfsSpec,
    ) -> Result<ContainerCreate, BundleError> {
        Ok(self.container_spec(id, sandbox_id)?.into_create(id, rootfs))
    }
}
