//! The guest kernel and initramfs, built by `hack/guest-assets`.

use std::path::{Path, PathBuf};

/// Default asset directory; `MSB_ASSET_DIR` overrides it.
pub const DEFAULT_ASSET_DIR: &str = "/var/cache/microsandbox/assets";

/// Paths of the guest assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAssets {
    /// Uncompressed kernel (`vmlinux`), booted with PVH by QEMU.
    pub kernel: PathBuf,
    /// The initramfs: agentd as `/init` plus kernel modules.
    pub initramfs: PathBuf,
}

/// A missing asset, named with the command that creates it.
#[derive(Debug, thiserror::Error)]
#[error("guest {what} not found at {}: build the guest assets with `hack/guest-assets` (./hack/test and ./hack/demo do)", path.display())]
pub struct MissingAsset {
    /// Which asset.
    pub what: &'static str,
    /// Where it was looked for.
    pub path: PathBuf,
}

impl GuestAssets {
    /// The assets in `dir`.
    pub fn in_dir(dir: &Path) -> GuestAssets {
        GuestAssets {
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
        }
    }

    /// The assets in `$MSB_ASSET_DIR` or the default directory.
    pub fn default_location() -> GuestAssets {
        Self::in_dir(&Self::dir())
    }

    /// `$MSB_ASSET_DIR` or the default directory.
    pub fn dir() -> PathBuf {
        std::env::var_os("MSB_ASSET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ASSET_DIR))
    }

    /// Checks that both files exist.
    pub fn check(&self) -> Result<(), MissingAsset> {
        for (what, path) in [("kernel", &self.kernel), ("initramfs", &self.initramfs)] {
            if !path.is_file() {
                return Err(MissingAsset {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}
