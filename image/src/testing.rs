//! Test support, shared with test-e2e (feature `test-support`): a real registry (Debian's
//! `docker-registry`, distribution 2.8) on 127.0.0.1, an OCI image builder whose layers can hold
//! what no well-behaved tool writes (whiteouts, `../x`, absolute names), pushed with `skopeo`,
//! and a throttled TCP relay that makes "the registry stopped mid-layer" deterministic.
//!
//! Tests first check [`missing_tools`] and skip (`msb_test_e2e::require`) with its reason.

mod oci;
mod registry;
mod relay;

pub use oci::{
    docker_config, BuiltImage, BuiltIndex, BuiltLayer, Compression, Entry, Image, ImageConfig,
    Layer, ManifestFormat, OciLayout, PushOptions,
};
pub use registry::{Registry, RegistryOptions};
pub use relay::Relay;

/// The tools these helpers run, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[("docker-registry", "docker-registry"), ("skopeo", "skopeo")];

/// `Some(reason)` when a tool the registry tests need is not installed.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    (!missing.is_empty()).then(|| format!("not installed: {}", missing.join(", ")))
}

/// The tool's path on `$PATH`.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
