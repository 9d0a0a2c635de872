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
