//! The read-only EROFS image of each layer of a pulled image, built once per layer and reused by
//! every later `msbox run` of any image that shares the layer.
//!
//! An image is named by the layer's diff id (the digest of its uncompressed tar, which the
//! image config lists and the unpack verifies), so the same layer pulled under two compressions
//! or two images is built once. It lives in the store's `layers/` directory next to the blobs it
//! comes from; the builder is the shim's (`disks::make_lower`), so the guest mounts these exactly
//! as it mounts the layers of a containerd image.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use msb_image::store::{ImageRecord, Store};

/// A build younger than this may still be running in another `msbox`: prune leaves it alone.
const BUILD_GRACE: Duration = Duration::from_secs(600);

/// The directory of the layer images.
fn dir(store: &Store) -> PathBuf {
    store.layers_dir().join("sha256")
}

/// The hex part of a `sha256:` diff id, checked: it names a file.
fn hex_of(diff_id: &str) -> Option<&str> {
    let hex = diff_id.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// The layer images of `image`, topmost first (the order `rootfs::single` takes), each built
/// from its blob on first use.
pub fn images_of(store: &Store, image: &ImageRecord) -> Result<Vec<PathBuf>> {
    let dir = dir(store);
    msb_runtime::private::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut images = Vec::with_capacity(image.layers.len());
    // Bottom first: a layer that cannot be unpacked leaves the ones below it built.
    for layer in &image.layers {
        let hex = hex_of(&layer.diff_id)
            .with_context(|| format!("layer {}: bad diff id {:?}", layer.digest, layer.diff_id))?;
        let path = dir.join(format!("{hex}.erofs"));
        if !path.is_file() {
            build(store, &dir, layer, hex, &path)
                .with_context(|| format!("layer {} of {}", layer.digest, image.reference))?;
        }
        images.push(path);
    }
    images.reverse();
    Ok(images)
}

/// Unpacks the layer's blob into a private directory, checks its diff id, turns it into an
/// EROFS image under a unique name and renames that into place (concurrent builds of the same
/// layer each finish with a whole image; the last rename wins).
fn build(
    store: &Store,
    dir: &Path,
    layer: &msb_image::store::LayerRecord,
    hex: &str,
    path: &Path,
) -> Result<()> {
    let blob = store
        .blob(&layer.digest)
        .context("its blob is not in the store (pull the image again)")?;
    let pid = std::process::id();
    let work = dir.join(format!(".{pid}.{hex}.unpack"));
    let _work = RemoveTree(work.clone());
    let root = work.join("root");
    msb_runtime::private::create_dir(&work)
        .and_then(|()| std::fs::create_dir(&root))
        .with_context(|| format!("create {}", root.display()))?;
    let unpacked = msb_image::unpack::unpack_layer(&blob, &root, &layer.digest)?;
    if unpacked.diff_id != layer.diff_id {
        anyhow::bail!(
            "its content has diff id {}, the image config says {}",
            unpacked.diff_id,
            layer.diff_id
        );
    }
    let tmp = dir.join(format!(".{pid}.{hex}.tmp"));
    msb_runtime::disks::make_lower(&root, &tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {}", tmp.display()))?;
    Ok(())
}

/// Removes a directory tree when dropped.
struct RemoveTree(PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What [`prune`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Layer images no pulled image uses.
    pub images: usize,
    /// Bytes they held.
    pub bytes: u64,
}

/// Removes the layer images of layers that no image record lists any more, and what builds
/// that died left behind.
pub fn prune(store: &Store) -> Result<Pruned> {
    let wanted: std::collections::HashSet<String> = store
        .images()?
        .iter()
        .flat_map(|r| r.layers.iter())
        .filter_map(|l| hex_of(&l.diff_id).map(str::to_owned))
        .collect();
    let mut done = Pruned::default();
    let dir = dir(store);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if let Some(hex) = name.strip_suffix(".erofs") {
            if !wanted.contains(hex) && std::fs::remove_file(entry.path()).is_ok() {
                done.images += 1;
                done.bytes += meta.blocks() * 512;
            }
        } else if name.starts_with('.') {
            let young = now
                .duration_since(meta.modified().unwrap_or(now))
                .is_ok_and(|age| age < BUILD_GRACE);
            if !young {
                let _ = if meta.is_dir() {
                    std::fs::remove_dir_all(entry.path())
                } else {
                    std::fs::remove_file(entry.path())
                };
            }
        }
    }
    Ok(done)
}
