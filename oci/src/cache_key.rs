//! The key of a layer chain (used by the shim's test double; the real layer cache keys each
//! layer directory on its own, `shim/src/layer_cache.rs`).
//!
//! containerd's overlayfs snapshotter stores each committed layer under
//! `.../snapshots/<id>/fs`; ids come from a persistent sequence and are not reused while the
//! snapshotter's database lives. The key hashes, in order (topmost first), each lower's path, its
//! snapshot id and, when the directory exists, its inode and change time, so a snapshotter wiped
//! and refilled with the same ids does not hit a stale image.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A sha256 over an ordered chain of lower directories, as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerChainKey(String);

impl LayerChainKey {
    /// The key of `lowers` (topmost first).
    pub fn of(lowers: &[PathBuf]) -> Self {
        let mut h = Sha256::new();
        h.update(b"msb-layer-chain-v1\n");
        for lower in lowers {
            h.update(lower.as_os_str().as_encoded_bytes());
            h.update(b"\0");
            h.update(snapshot_id(lower).unwrap_or_default().as_bytes());
            h.update(b"\0");
            if let Ok(md) = std::fs::metadata(lower) {
                h.update(md.ino().to_le_bytes());
                h.update(md.ctime().to_le_bytes());
                h.update(md.ctime_nsec().to_le_bytes());
            }
            h.update(b"\n");
        }
        let digest = h.finalize();
        Self(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LayerChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The snapshot id of an overlayfs-snapshotter layer path (`.../snapshots/<id>/fs`).
pub(crate) fn snapshot_id(path: &Path) -> Option<String> {
    let mut comps = path.components().rev();
    let last = comps.next()?.as_os_str();
    let id = if last == "fs" {
        comps.next()?.as_os_str()
    } else {
        last
    };
    let parent = comps.next()?.as_os_str();
    (parent == "snapshots").then(|| id.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_come_from_the_snapshotter_layout() {
        let p =
            Path::new("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/42/fs");
        assert_eq!(snapshot_id(p).as_deref(), Some("42"));
        let native =
            Path::new("/var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/7");
        assert_eq!(snapshot_id(native).as_deref(), Some("7"));
        assert_eq!(snapshot_id(Path::new("/tmp/bundle/rootfs")), None);
    }

    #[test]
    fn key_depends_on_order_and_members() {
        let a = PathBuf::from("/nonexistent/snapshots/2/fs");
        let b = PathBuf::from("/nonexistent/snapshots/1/fs");
        let k1 = LayerChainKey::of(&[a.clone(), b.clone()]);
        assert_eq!(k1, LayerChainKey::of(&[a.clone(), b.clone()]));
        assert_eq!(k1.as_str().len(), 64);
        assert_ne!(k1, LayerChainKey::of(&[b.clone(), a.clone()]));
        assert_ne!(k1, LayerChainKey::of(&[a]));
    }

    #[test]
    fn key_changes_when_a_directory_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("snapshots/1/fs");
        std::fs::create_dir_all(&layer).unwrap();
        let before = LayerChainKey::of(std::slice::from_ref(&layer));
        assert_eq!(before, LayerChainKey::of(std::slice::from_ref(&layer)));
        std::fs::remove_dir(&layer).unwrap();
        // Occupy the old inode number so the recreated directory gets another one.
        let _hold = std::fs::File::create(dir.path().join("hold")).unwrap();
        std::fs::create_dir(&layer).unwrap();
        assert_ne!(before, LayerChainKey::of(&[layer]));
    }
}
