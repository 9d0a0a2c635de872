//! containerd's rootfs mounts -> an [`OciRootfsSource`].
//!
//! containerd hands the shim the snapshot as mounts instead of a mounted directory:
//!
//! | snapshotter | mounts |
//! |---|---|
//! | overlayfs, container snapshot | one `overlay` with `lowerdir=top:...:bottom,upperdir=..,workdir=..` |
//! | overlayfs, single-layer view | one `bind` of `.../snapshots/<id>/fs`, `ro` |
//! | native (and others that copy) | one `bind` of a whole directory, `rw` |
//! | none (`ctr run --rootfs`, hand-made bundles) | no mounts; the bundle's `root.path` |
//!
//! We never mount anything on the host: each lower becomes a read-only EROFS image (cached per
//! layer directory by the runtime) and the container writes to a fresh ext4 upper image. The
//! snapshotter's own `upperdir` and `workdir` are ignored: a new container's upperdir is empty,
//! and nothing the guest writes lands on the host.

use std::path::{Path, PathBuf};

/// One rootfs mount as containerd passes it (`containerd.types.Mount`), free of ttrpc types.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RootfsMount {
    /// `overlay`, `bind`, ...
    pub typ: String,
    /// Source (a path for `bind`, `overlay` for overlay).
    pub source: String,
    /// mount(8) options.
    pub options: Vec<String>,
}

/// Where a container's root comes from on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRootfsSource {
    /// Read-only layer directories, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The mounts asked for a read-only root (`ro`).
    pub readonly: bool,
}

/// Why the rootfs mounts cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// More than one mount: stacked mounts are not supported.
    #[error("bundle {}: {count} rootfs mounts given, expected at most one", bundle.display())]
    TooManyMounts {
        /// The bundle.
        bundle: PathBuf,
        /// How many.
        count: usize,
    },
    /// A mount type we cannot turn into layers.
    #[error("bundle {}: unsupported rootfs mount type {typ:?} (source {source_path:?})", bundle.display())]
    UnsupportedType {
        /// The bundle.
        bundle: PathBuf,
        /// The type.
        typ: String,
        /// Its source.
        source_path: String,
    },
    /// An overlay without `lowerdir=`.
    #[error("bundle {}: overlay rootfs mount has no lowerdir= option", bundle.display())]
    NoLowerdir {
        /// The bundle.
        bundle: PathBuf,
    },
    /// A path that is not absolute.
    #[error("bundle {}: rootfs {what} {path:?} is not an absolute path", bundle.display())]
    RelativePath {
        /// The bundle.
        bundle: PathBuf,
        /// Which option or field.
        what: &'static str,
        /// The path.
        path: String,
    },
    /// No mounts and no root directory.
    #[error("bundle {}: no rootfs mounts and no root directory at {}", bundle.display(), root.display())]
    NoRootfs {
        /// The bundle.
        bundle: PathBuf,
        /// The root path looked at.
        root: PathBuf,
    },
}

impl OciRootfsSource {
    /// Maps containerd's rootfs `mounts` for the bundle at `bundle`; `root_path` is the spec's
    /// `root.path` made absolute, used when there are no mounts.
    pub fn from_mounts(
        bundle: &Path,
        mounts: &[RootfsMount],
        root_path: &Path,
    ) -> Result<Self, RootfsError> {
        match mounts {
            [] => {
                if !root_path.is_dir() {
                    return Err(RootfsError::NoRootfs {
                        bundle: bundle.to_path_buf(),
                        root: root_path.to_path_buf(),
                    });
                }
                Ok(Self {
                    lowers: vec![root_path.to_path_buf()],
                    readonly: false,
                })
            }
            [m] => Self::from_one(bundle, m),
            _ => Err(RootfsError::TooManyMounts {
                bundle: bundle.to_path_buf(),
                count: mounts.len(),
            }),
        }
    }

    fn from_one(bundle: &Path, m: &RootfsMount) -> Result<Self, RootfsError> {
        let readonly = m.options.iter().any(|o| o == "ro");
        let abs = |what: &'static str, p: &str| -> Result<PathBuf, RootfsError> {
            let path = PathBuf::from(p);
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(RootfsError::RelativePath {
                    bundle: bundle.to_path_buf(),
                    what,
                    path: p.to_owned(),
                })
            }
        };
        let is_bind = m.typ == "bind"
            || m.typ == "rbind"
            || m.options.iter().any(|o| o == "bind" || o == "rbind");
        if m.typ == "overlay" {
            let mut lowers = None;
            for opt in &m.options {
                if let Some(v) = opt.strip_prefix("lowerdir=") {
                    lowers = Some(
                        v.split(':')
                            .filter(|s| !s.is_empty())
                            .map(|s| abs("lowerdir", s))
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                }
            }
            let lowers =
                lowers
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| RootfsError::NoLowerdir {
                        bundle: bundle.to_path_buf(),
                    })?;
            Ok(Self { lowers, readonly })
        } else if is_bind {
            let dir = abs("bind source", &m.source)?;
            Ok(Self {
                lowers: vec![dir],
                readonly,
            })
        } else {
            Err(RootfsError::UnsupportedType {
                bundle: bundle.to_path_buf(),
                typ: m.typ.clone(),
                source_path: m.source.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAP: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";

    fn overlay(opts: &[&str]) -> RootfsMount {
        RootfsMount {
            typ: "overlay".into(),
            source: "overlay".into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_snapshot_maps_lowers_topmost_first() {
        let lower = format!("lowerdir={SNAP}/3/fs:{SNAP}/2/fs:{SNAP}/1/fs");
        let upper = format!("upperdir={SNAP}/4/fs");
        let work = format!("workdir={SNAP}/4/work");
        let m = overlay(&["index=off", &work, &upper, &lower]);
        let src =
            OciRootfsSource::from_mounts(Path::new("/b"), &[m], Path::new("/b/rootfs")).unwrap();
        assert_eq!(
            src.lowers,
            vec![
                PathBuf::from(format!("{SNAP}/3/fs")),
                PathBuf::from(format!("{SNAP}/2/fs")),
                PathBuf::from(format!("{SNAP}/1/fs")),
            ]
        );
        assert!(!src.readonly);
    }

    #[test]
    fn bind_mounts_of_native_and_view_snapshots() {
        let native = RootfsMount {
            typ: "bind".into(),
            source: "/var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/9".into(),
            options: vec!["rbind".into(), "rw".into()],
        };
        let src = OciRootfsSource::from_mounts(Path::new("/b"), &[native], Path::new("/b/rootfs"))
            .unwrap();
        assert_eq!(
            src.lowers,
            vec![PathBuf::from(
                "/var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/9"
            )]
        );
        assert!(!src.readonly);
        let view = RootfsMount {
            typ: "bind".into(),
            source: format!("{SNAP}/1/fs"),
            options: vec!["ro".into(), "rbind".into()],
        };
        let src =
            OciRootfsSource::from_mounts(Path::new("/b"), &[view], Path::new("/b/rootfs")).unwrap();
        assert_eq!(src.lowers, vec![PathBuf::from(format!("{SNAP}/1/fs"))]);
        assert!(src.readonly);
    }

    #[test]
    fn no_mounts_uses_the_bundle_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let err = OciRootfsSource::from_mounts(dir.path(), &[], &root).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "bundle {}: no rootfs mounts and no root directory at {}",
                dir.path().display(),
                root.display()
            )
        );
        std::fs::create_dir(&root).unwrap();
        let src = OciRootfsSource::from_mounts(dir.path(), &[], &root).unwrap();
        assert_eq!(src.lowers, vec![root]);
    }

    #[test]
    fn errors_name_the_bundle_and_the_problem() {
        let b = Path::new("/run/b");
        let r = Path::new("/run/b/rootfs");
        let err = OciRootfsSource::from_mounts(b, &[overlay(&["upperdir=/u"])], r).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bundle /run/b: overlay rootfs mount has no lowerdir= option"
        );
        let err = OciRootfsSource::from_mounts(b, &[overlay(&["lowerdir=rel/fs"])], r).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bundle /run/b: rootfs lowerdir \"rel/fs\" is not an absolute path"
        );
        let zfs = RootfsMount {
            typ: "zfs".into(),
            source: "pool/ds".into(),
            options: vec![],
        };
        let err = OciRootfsSource::from_mounts(b, std::slice::from_ref(&zfs), r).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bundle /run/b: unsupported rootfs mount type \"zfs\" (source \"pool/ds\")"
        );
        let err = OciRootfsSource::from_mounts(b, &[zfs.clone(), zfs], r).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bundle /run/b: 2 rootfs mounts given, expected at most one"
        );
    }
}
