//! The cache of layer images: one read-only EROFS image per snapshot layer directory, reused by
//! every container of the same image, and pruned once its layer is gone.
//!
//! An image is named by a hash of its layer's path, inode and change time (to the nanosecond), so
//! a replaced directory never reuses a stale image. Next to it, `<hash>.src` records the layer's
//! path: that is how [`prune`] tells an image whose layer containerd removed (the snapshot went
//! with its image) from one still in use.
//!
//! Removing an image is always safe for running VMs: a VMM keeps its disk open, and a pod's share
//! holds its own hard link. Its layer exists as long as a container uses it (containerd does not
//! remove a snapshot under a container), so no container being created can lose its image.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::RootfsError;
use crate::disks;

/// A record or temporary file younger than this is never pruned: another shim may be building
/// that image right now.
const BUILD_GRACE: Duration = Duration::from_secs(600);

/// The cached EROFS image of `layer`, built on first use. Built under a unique name and renamed,
/// so concurrent shims never see half an image; the `.src` record is in place before the image.
pub fn image_for(cache_dir: &Path, layer: &Path) -> Result<PathBuf, RootfsError> {
    let hash = key_of(layer).map_err(RootfsError::io("read layer", layer))?;
    let image = cache_dir.join(format!("{hash:016x}.erofs"));
    if image.is_file() {
        return Ok(image);
    }
    crate::private::create_dir(cache_dir).map_err(RootfsError::io("create", cache_dir))?;
    let pid = std::process::id();
    let src_tmp = cache_dir.join(format!(".{pid}.{hash:016x}.src.tmp"));
    let src = cache_dir.join(format!("{hash:016x}.src"));
    crate::private::create_file(&src_tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, layer.as_os_str().as_encoded_bytes()))
        .and_then(|()| std::fs::rename(&src_tmp, &src))
        .map_err(RootfsError::io("record", &src))?;
    let tmp = cache_dir.join(format!(".{pid}.{hash:016x}.tmp"));
    disks::make_lower(layer, &tmp)?;
    std::fs::rename(&tmp, &image).map_err(RootfsError::io("rename", &tmp))?;
    Ok(image)
}

/// The cache key of a layer directory as it is now.
fn key_of(layer: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(layer)?;
    let key = format!(
        "{}\0{}\0{}.{:09}",
        layer.display(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    Ok(fnv1a(key.as_bytes()))
}

/// FNV-1a, 64 bits: a stable file name from a key (not a security boundary).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What [`prune`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Images removed (their layer is gone or was replaced, or they have no record).
    pub images: usize,
    /// Bytes those images held on disk.
    pub bytes: u64,
    /// Images kept.
    pub kept: usize,
}

/// Removes the images whose layer directory no longer exists (or is another directory now),
/// images without a record (made before records existed), and records and temporary files left
/// by shims that died while building. A missing cache directory is an empty cache.
pub fn prune(cache_dir: &Path) -> std::io::Result<Pruned> {
    let mut done = Pruned::default();
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        let young = now
            .duration_since(meta.modified().unwrap_or(now))
            .is_ok_and(|age| age < BUILD_GRACE);
        if let Some(hash) = name.strip_suffix(".erofs") {
            if still_wanted(cache_dir, hash) {
                done.kept += 1;
            } else if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(cache_dir.join(format!("{hash}.src")));
                done.images += 1;
                done.bytes += meta.blocks() * 512;
            }
        } else if let Some(hash) = name.strip_suffix(".src") {
            // A record whose image is not there yet may belong to a build in progress.
            if !young && !cache_dir.join(format!("{hash}.erofs")).exists() {
                let _ = std::fs::remove_file(&path);
            }
        } else if name.starts_with('.') && name.ends_with(".tmp") && !young {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(done)
}

/// Whether the image `<hash>.erofs` still belongs to an existing layer directory.
fn still_wanted(cache_dir: &Path, hash: &str) -> bool {
    let Ok(layer) = std::fs::read(cache_dir.join(format!("{hash}.src"))) else {
        return false;
    };
    let layer = Path::new(OsStr::from_bytes(&layer));
    key_of(layer).is_ok_and(|now| format!("{now:016x}") == hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, name: &str) -> PathBuf {
        let l = root.join(name);
        std::fs::create_dir(&l).unwrap();
        std::fs::write(l.join("f"), name).unwrap();
        l
    }

    #[test]
    fn images_are_cached_by_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let l = layer(tmp.path(), "layer");
        let cache = tmp.path().join("cache");
        let a = image_for(&cache, &l).unwrap();
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        let b = image_for(&cache, &l).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            std::fs::metadata(&b).unwrap().modified().unwrap(),
            mtime,
            "reused, not rebuilt"
        );
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn prune_removes_what_no_layer_wants_and_keeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let (kept, gone, replaced) = (
            layer(tmp.path(), "kept"),
            layer(tmp.path(), "gone"),
            layer(tmp.path(), "replaced"),
        );
        let kept_img = image_for(&cache, &kept).unwrap();
        let gone_img = image_for(&cache, &gone).unwrap();
        let replaced_img = image_for(&cache, &replaced).unwrap();
        std::fs::remove_dir_all(&gone).unwrap();
        std::fs::remove_dir_all(&replaced).unwrap();
        layer(tmp.path(), "replaced");
        // An image from before records existed, and a fresh build in progress.
        std::fs::write(cache.join("00000000000000aa.erofs"), b"old").unwrap();
        std::fs::write(cache.join(".1.00000000000000bb.tmp"), b"building").unwrap();
        std::fs::write(cache.join("00000000000000bb.src"), b"/somewhere").unwrap();

        let p = prune(&cache).unwrap();
        assert_eq!((p.images, p.kept), (3, 1), "{p:?}");
        assert!(kept_img.is_file() && kept_img.with_extension("src").is_file());
        for img in [&gone_img, &replaced_img] {
            assert!(!img.exists() && !img.with_extension("src").exists());
        }
        assert!(!cache.join("00000000000000aa.erofs").exists());
        assert!(
            cache.join(".1.00000000000000bb.tmp").exists(),
            "a build in progress"
        );
        assert!(
            cache.join("00000000000000bb.src").exists(),
            "a build in progress"
        );
        assert_eq!(prune(&tmp.path().join("none")).unwrap(), Pruned::default());
    }
}
