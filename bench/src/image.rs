//! `msbox run IMAGE` from a local registry (Debian's `docker-registry` on 127.0.0.1): the first
//! run of an image (pull, unpack, one EROFS image per layer, boot) against later runs of the same
//! image (nothing pulled, nothing built), and `msbox run ROOTFS` of the same files for the boot
//! alone. A busybox image in two layers (busybox, then a small file); `-- true` each time.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use msb_image::testing::{
    Compression, Image, ImageConfig, Layer, OciLayout, PushOptions, Registry,
};
use serde::Serialize;

use crate::boot::{stats, Stats};

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    runs: usize,
    /// Compressed size of the image's layers.
    image_bytes: u64,
    /// `msbox pull` into an empty store.
    pull_ms: f64,
    /// The first `msbox run IMAGE -- true` after that pull: unpack + EROFS per layer + boot.
    first_run_after_pull_ms: f64,
    /// `msbox run IMAGE -- true` into an empty store: pull + unpack + EROFS + boot.
    first_run_cold_ms: Stats,
    /// Later runs of the stored image: boot only.
    cached_run_ms: Stats,
    /// `msbox run ROOTFS_DIR -- true` of the same files (one EROFS image made each time).
    rootfs_dir_run_ms: Stats,
}

fn msbox(bin: &Path, args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new(bin).args(args).output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        out.status.success(),
        "msbox {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(ms)
}

/// Runs the series `n` times.
pub fn run(n: usize) -> Result<Report> {
    ensure!(n > 0, "at least one run");
    let bin = crate::setup::next_to_this("msbox", "cargo build --release -p msb-shim --bin msbox")?;
    let registry = Registry::start().context("docker-registry (Debian package docker-registry)")?;
    let busybox = std::fs::read("/bin/busybox").context("busybox-static must be installed")?;
    let mut bottom = Layer::new(Compression::Gzip)
        .dir("bin")
        .dir("etc")
        .file_with("bin/busybox", busybox, 0o755, 0, 0)
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    for applet in ["sh", "true"] {
        bottom = bottom.symlink(&format!("bin/{applet}"), "busybox");
    }
    let top = Layer::new(Compression::Gzip).file("etc/motd", "hello\n");
    let image = Image::new(vec![bottom, top], ImageConfig::default());
    let mut layout = OciLayout::new()?;
    let built = layout.add_image("latest", &image)?;
    let reference = format!("{}/bench:latest", registry.addr());
    layout.push("latest", &reference, &PushOptions::default())?;

    let work = tempfile::tempdir()?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs)?;
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-xzf")
        .arg(layout.blob_path(&built.layers[0].digest))
        .status()?;
    ensure!(status.success(), "tar: {status}");

    let store = work.path().join("pulled");
    let root = store.to_str().context("a UTF-8 path")?;
    let pull_ms = msbox(&bin, &["--data-root", root, "pull", &reference])?;
    let first_run_after_pull_ms = msbox(
        &bin,
        &["--data-root", root, "run", &reference, "--", "true"],
    )?;
    let (mut cold, mut cached, mut dir) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let fresh = work.path().join(format!("cold{i}"));
        let fresh = fresh.to_str().context("a UTF-8 path")?;
        cold.push(msbox(
            &bin,
            &["--data-root", fresh, "run", &reference, "--", "true"],
        )?);
        cached.push(msbox(
            &bin,
            &["--data-root", root, "run", &reference, "--", "true"],
        )?);
        let rootfs = rootfs.to_str().context("a UTF-8 path")?;
        dir.push(msbox(&bin, &["run", rootfs, "--", "true"])?);
    }
    Ok(Report {
        benchmark: "image",
        runs: n,
        image_bytes: built.size(),
        pull_ms,
        first_run_after_pull_ms,
        first_run_cold_ms: stats(cold),
        cached_run_ms: stats(cached),
        rootfs_dir_run_ms: stats(dir),
    })
}
