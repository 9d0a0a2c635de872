//! Shim configuration: a TOML file, chosen by containerd's runtime options, then overridden per
//! container by `io.microsandbox.*` annotations.
//!
//! Where the file comes from, first match wins:
//! 1. `config_path` of the `runtimeoptions.v1.Options` containerd sends with `Create`
//!    (`ConfigPath` in a CRI runtime handler's `options`, or `ctr run --runtime-config-path`);
//! 2. the `MSB_SHIM_CONFIG` environment variable;
//! 3. `/etc/microsandbox/shim.toml` when it exists;
//! 4. built-in defaults.
//!
//! Annotations (`io.microsandbox.backend`, `.vcpus`, `.memory_mib`, `.upper_size`,
//! `.handoff_init`) override the file for one container; sandbox-wide keys (backend, vCPUs,
//! memory) only take effect on the container that boots the VM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/microsandbox/shim.toml";
/// Environment variable naming a config file.
pub const CONFIG_ENV: &str = "MSB_SHIM_CONFIG";
/// Prefix of our annotations.
pub const ANNOTATION_PREFIX: &str = "io.microsandbox.";
/// The CRI annotation grouping containers into one pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// Checks an id that names a path or a VMM argument (a container id, the pod's sandbox id from
/// its annotation) by containerd's own rules for identifiers: 1 to 76 characters, letters and
/// digits in runs joined by single `.`, `_` or `-`. So no `/`, no `..`, nothing a path or a QEMU
/// option could take for syntax.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let runs_ok = id
        .split(['.', '_', '-'])
        .all(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()));
    if id.is_empty() || id.len() > 76 || !runs_ok {
        return Err(format!(
            "{what} {id:?} is not a valid identifier (1 to 76 letters and digits, joined by \
             single '.', '_' or '-')"
        ));
    }
    Ok(())
}

/// Type URL of containerd's generic runtime options.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Why configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read config {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for us.
    #[error("parse config {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// An annotation has a value we cannot use.
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The runtime options could not be decoded.
    #[error("runtime options ({type_url}): {reason}")]
    Options {
        /// Their type URL.
        type_url: String,
        /// What is wrong.
        reason: String,
    },
}

/// The shim's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShimConfig {
    /// VMM backend: `auto`, `krun` or `qemu`.
    pub backend: String,
    /// vCPUs per VM.
    pub vcpus: u32,
    /// Memory per VM, MiB.
    pub memory_mib: u32,
    /// Size of each container's writable ext4 upper, bytes (sparse).
    pub upper_size: u64,
    /// Directory of guest assets (`vmlinux`, `initramfs.cpio`).
    pub asset_dir: PathBuf,
    /// Kernel image; default `<asset_dir>/vmlinux`.
    pub kernel: Option<PathBuf>,
    /// Initramfs; default `<asset_dir>/initramfs.cpio`.
    pub initramfs: Option<PathBuf>,
    /// Cache of EROFS lower images, one per layer directory.
    pub cache_dir: PathBuf,
    /// Run the image's init system as the container's PID 1 (`auto` or a path).
    pub handoff_init: Option<String>,
    /// The most vCPUs an annotation may ask for (annotations are untrusted: a pod spec sets them).
    pub max_vcpus: u32,
    /// The most memory an annotation may ask for, MiB.
    pub max_memory_mib: u32,
    /// The largest upper an annotation may ask for, bytes (sparse, but the guest may fill it).
    pub max_upper_size: u64,
    /// Per-VM state (sockets, logs, the ext4 upper images),
    /// `<state_dir>/<namespace>/sandboxes/<sandbox id>/vm/`. On a disk, not tmpfs: the uppers hold
    /// what containers write.
    pub state_dir: PathBuf,
    /// Start VMs by restoring a saved template where the backend and the VM allow
    /// (`msb_runtime::template`: QEMU, no shares, no network), instead of booting.
    pub templates: bool,
}

impl Default for ShimConfig {
    fn default() -> Self {
        Self {
            backend: "auto".into(),
            vcpus: 1,
            memory_mib: 512,
            upper_size: 4 << 30,
            asset_dir: PathBuf::from("/var/cache/microsandbox/assets"),
            kernel: None,
            initramfs: None,
            cache_dir: PathBuf::from("/var/lib/microsandbox/cache"),
            handoff_init: None,
            max_vcpus: 8,
            max_memory_mib: 16 << 10,
            max_upper_size: 64 << 30,
            state_dir: PathBuf::from("/var/lib/microsandbox/shim"),
            templates: true,
        }
    }
}

/// What one VM is booted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSettings {
    /// VMM backend.
    pub backend: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// Cache of EROFS lower images.
    pub cache_dir: PathBuf,
    /// Whether more containers may join this VM after it boots (the bundle names a pod with
    /// `io.kubernetes.cri.sandbox-id`). Such a VM gets its images through the runtime share and
    /// one upper disk on which each container has its own directory, since no disk can be
    /// added to a running VM.
    pub pod: bool,
    /// The pod's network namespace, prepared by CNI (the booting container's
    /// `linux.namespaces[network].path`); `None`: the VM has loopback only.
    pub netns: Option<PathBuf>,
    /// A pod in the host's network (`hostNetwork`: its sandbox spec lists no network
    /// namespace). The VM still has its own network; its listening ports are forwarded from
    /// the host's loopback instead of the pod namespace's, which is where the CRI's
    /// port-forward dials for such a pod.
    pub host_network: bool,
    /// The host cgroup of the VM's VMM and companions: the booting container's (a CRI pod's
    /// sandbox container's) `linux.cgroupsPath`; `None`: the shim's own cgroup.
    pub cgroup: Option<msb_runtime::cgroup::CgroupPath>,
    /// Restore a saved template instead of booting where possible ([`ShimConfig::templates`]).
    pub templates: bool,
}

/// Settings of one container after annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// For the VM, when this container boots it.
    pub vm: VmSettings,
    /// Its writable upper, bytes.
    pub upper_size: u64,
    /// Init system hand-off.
    pub handoff_init: Option<String>,
}

impl ShimConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Finds and reads the file (see the module docs for the order).
    pub fn discover(options_path: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(p) = options_path {
            return Self::load(p);
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV) {
            return Self::load(Path::new(&p));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            return Self::load(default);
        }
        Ok(Self::default())
    }

    /// The settings of one container: this file overridden by its annotations.
    pub fn for_container(
        &self,
        annotations: &HashMap<String, String>,
    ) -> Result<ContainerConfig, ConfigError> {
        let mut cfg = self.clone();
        let mut keys: Vec<_> = annotations
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(ANNOTATION_PREFIX).map(|s| (s, k, v)))
            .collect();
        keys.sort();
        for (name, key, value) in keys {
            let bad = |reason: &str| ConfigError::Annotation {
                key: key.clone(),
                value: value.clone(),
                reason: reason.to_owned(),
            };
            match name {
                "backend" => match msb_runtime::vmm::parse_backend(value) {
                    Ok(_) => cfg.backend = value.clone(),
                    Err(_) => return Err(bad("expected auto, krun or qemu")),
                },
                "vcpus" => {
                    let max = self.max_vcpus.min(255);
                    cfg.vcpus = value
                        .parse()
                        .ok()
                        .filter(|v| (1..=max).contains(v))
                        .ok_or_else(|| {
                            bad(&format!(
                                "expected an integer from 1 to {max} (max_vcpus in the shim's \
                                 configuration)"
                            ))
                        })?
                }
                "memory_mib" => {
                    let max = self.max_memory_mib;
                    cfg.memory_mib = value
                        .parse()
                        .ok()
                        .filter(|v| (64..=max).contains(v))
                        .ok_or_else(|| {
                            bad(&format!(
                                "expected an integer from 64 to {max} (max_memory_mib in the \
                                 shim's configuration)"
                            ))
                        })?
                }
                "upper_size" => {
                    let max = self.max_upper_size;
                    cfg.upper_size = parse_size(value)
                        .filter(|v| (16 << 20..=max).contains(v))
                        .ok_or_else(|| {
                            bad(&format!(
                                "expected a size from 16M to {max} bytes (bytes or K/M/G/T; \
                                 max_upper_size in the shim's configuration)"
                            ))
                        })?
                }
                "handoff_init" => {
                    cfg.handoff_init = (!value.is_empty()).then(|| value.clone());
                }
                // Unknown keys are left for newer shims; they are logged by the caller.
                _ => {}
            }
        }
        Ok(ContainerConfig {
            vm: VmSettings {
                backend: cfg.backend,
                vcpus: cfg.vcpus,
                memory_mib: cfg.memory_mib,
                kernel: cfg.kernel.unwrap_or_else(|| cfg.asset_dir.join("vmlinux")),
                initramfs: cfg
                    .initramfs
                    .unwrap_or_else(|| cfg.asset_dir.join("initramfs.cpio")),
                cache_dir: cfg.cache_dir,
                pod: annotations
                    .get(SANDBOX_ID_ANNOTATION)
                    .is_some_and(|s| !s.is_empty()),
                netns: None,
                host_network: false,
                cgroup: None,
                templates: cfg.templates,
            },
            upper_size: cfg.upper_size,
            handoff_init: cfg.handoff_init,
        })
    }
}

/// `4294967296`, `512M`, `4G`, `4GiB` -> bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// The `config_path` of containerd's `runtimeoptions.v1.Options` (`type_url` = 1,
/// `config_path` = 2, `config_body` = 3, all strings), decoded by hand: containerd-shim-protos
/// does not ship this message. Options of another type yield `None`.
pub fn runtime_options_config_path(
    type_url: &str,
    value: &[u8],
) -> Result<Option<PathBuf>, ConfigError> {
    if type_url.trim_start_matches("type.googleapis.com/") != RUNTIME_OPTIONS_TYPE {
        return Ok(None);
    }
    let err = |reason: String| ConfigError::Options {
        type_url: type_url.to_owned(),
        reason,
    };
    let mut input = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(value);
    let mut path = None;
    while !input.eof().map_err(|e| err(e.to_string()))? {
        let tag = input.read_raw_varint32().map_err(|e| err(e.to_string()))?;
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (2, 2) => path = Some(input.read_string().map_err(|e| err(e.to_string()))?),
            (_, 2) => {
                input.read_bytes().map_err(|e| err(e.to_string()))?;
            }
            (_, 0) => {
                input.read_raw_varint64().map_err(|e| err(e.to_string()))?;
            }
            _ => {
                return Err(err(format!(
                    "unexpected wire type {wire} for field {field}"
                )))
            }
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn toml_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shim.toml");
        std::fs::write(
            &p,
            "backend = \"qemu\"\nvcpus = 2\nasset_dir = \"/opt/msb\"\n",
        )
        .unwrap();
        let cfg = ShimConfig::load(&p).unwrap();
        assert_eq!(cfg.backend, "qemu");
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.memory_mib, 512);
        let c = cfg.for_container(&HashMap::new()).unwrap();
        assert_eq!(c.vm.kernel, PathBuf::from("/opt/msb/vmlinux"));
        assert_eq!(c.vm.initramfs, PathBuf::from("/opt/msb/initramfs.cpio"));
        assert_eq!(c.upper_size, 4 << 30);
        std::fs::write(&p, "vcpu = 2\n").unwrap();
        let err = ShimConfig::load(&p).unwrap_err();
        assert_eq!(err.to_string(), format!("parse config {}", p.display()));
    }

    #[test]
    fn annotations_override_the_file() {
        let c = ShimConfig::default()
            .for_container(&ann(&[
                ("io.microsandbox.backend", "qemu"),
                ("io.microsandbox.vcpus", "4"),
                ("io.microsandbox.memory_mib", "2048"),
                ("io.microsandbox.upper_size", "1G"),
                ("io.microsandbox.handoff_init", "auto"),
                ("io.microsandbox.future_key", "x"),
                ("io.kubernetes.cri.sandbox-id", "p"),
            ]))
            .unwrap();
        assert_eq!(c.vm.backend, "qemu");
        assert_eq!(c.vm.vcpus, 4);
        assert_eq!(c.vm.memory_mib, 2048);
        assert_eq!(c.upper_size, 1 << 30);
        assert_eq!(c.handoff_init.as_deref(), Some("auto"));
    }

    #[test]
    fn bad_annotations_name_key_and_value() {
        let err = ShimConfig::default()
            .for_container(&ann(&[("io.microsandbox.vcpus", "zero")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation io.microsandbox.vcpus=\"zero\": expected an integer from 1 to 8 \
             (max_vcpus in the shim's configuration)"
        );
        // Annotations are untrusted: the configuration bounds what they may ask for.
        for (key, value) in [
            ("io.microsandbox.vcpus", "9"),
            ("io.microsandbox.memory_mib", "16385"),
            ("io.microsandbox.upper_size", "65G"),
        ] {
            assert!(
                ShimConfig::default()
                    .for_container(&ann(&[(key, value)]))
                    .is_err(),
                "{key}={value} passed"
            );
        }
        let roomy = ShimConfig {
            max_vcpus: 32,
            ..ShimConfig::default()
        };
        assert_eq!(
            roomy
                .for_container(&ann(&[("io.microsandbox.vcpus", "9")]))
                .unwrap()
                .vm
                .vcpus,
            9
        );
        let err = ShimConfig::default()
            .for_container(&ann(&[("io.microsandbox.backend", "kvm")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation io.microsandbox.backend=\"kvm\": expected auto, krun or qemu"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn runtime_options_config_path_decodes() {
        // type_url = "x" (field 1), config_path = "/etc/msb.toml" (field 2).
        let mut bytes = vec![0x0a, 1, b'x', 0x12, 13];
        bytes.extend_from_slice(b"/etc/msb.toml");
        assert_eq!(
            runtime_options_config_path("runtimeoptions.v1.Options", &bytes).unwrap(),
            Some(PathBuf::from("/etc/msb.toml"))
        );
        assert_eq!(
            runtime_options_config_path("containerd.runc.v1.Options", &bytes).unwrap(),
            None
        );
        assert!(runtime_options_config_path("runtimeoptions.v1.Options", &[0x12, 50]).is_err());
    }
}
