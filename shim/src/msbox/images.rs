//! `msbox pull`, `msbox images`, `msbox rmi` and `msbox prune`: the image store of `msbox`
//! (`msb_image::store`) as a user sees it, and the progress of a pull.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use msb_image::pull::{Progress, PullOptions};
use msb_image::store::{ImageRecord, Store};

use super::layers;

/// Where a pull comes from and which image of an index it takes.
#[derive(Debug, Clone, Args)]
pub struct PullFlags {
    /// The platform of a multi-platform image, OS/ARCH[/VARIANT] (default: this host's).
    #[arg(long)]
    pub platform: Option<String>,
    /// A registry (HOST[:PORT]) to reach over plain HTTP. Loopback registries always are.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
}

impl PullFlags {
    fn options(&self) -> PullOptions {
        PullOptions {
            platform: self.platform.clone(),
            insecure_registries: self.insecure_registry.clone(),
            ..PullOptions::default()
        }
    }
}

/// Arguments of `msbox pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Where the pull comes from.
    #[command(flatten)]
    pub flags: PullFlags,
    /// The image, as `docker pull` names it: `busybox`, `127.0.0.1:5000/app:1`, `NAME@sha256:...`.
    pub image: String,
}

/// Arguments of `msbox rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// The images to remove.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// The store at `root`, or the default one.
pub fn open_store(root: Option<&PathBuf>) -> Result<Store> {
    let root = root.cloned().unwrap_or_else(Store::default_root);
    Store::open(&root).with_context(|| format!("open the image store {}", root.display()))
}

/// `msbox pull`.
pub async fn pull(store: &Store, args: &PullArgs) -> Result<()> {
    let record = pull_image(store, &args.image, &args.flags).await?;
    println!("{}: {}", record.reference, record.manifest_digest);
    Ok(())
}

/// Pulls `image` into `store`, with progress on stderr.
pub async fn pull_image(store: &Store, image: &str, flags: &PullFlags) -> Result<ImageRecord> {
    let progress = PullProgress::new();
    let record = msb_image::pull::pull(store, image, &flags.options(), &progress)
        .await
        .with_context(|| format!("pull {image}"))?;
    progress.finish();
    Ok(record)
}

/// `msbox images`: one line per pulled image, as `docker images` lays them out.
pub fn images(store: &Store) -> Result<()> {
    let mut records = store.images().context("list images")?;
    records.sort_by(|a, b| a.reference.cmp(&b.reference));
    println!(
        "{:<40} {:<16} {:<14} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    );
    for r in records {
        let (repository, tag) = split_reference(&r.reference);
        let id = r.config_digest.trim_start_matches("sha256:");
        println!(
            "{:<40} {:<16} {:<14} {:>10}",
            repository,
            tag,
            &id[..id.len().min(12)],
            human_size(r.size)
        );
    }
    Ok(())
}

/// `msbox rmi`: forgets the images, then frees what no other image uses. An image that is not
/// there is an error (after the others are removed), as with `docker rmi`.
pub fn rmi(store: &Store, args: &RmiArgs) -> Result<()> {
    let mut missing = Vec::new();
    for image in &args.images {
        if store
            .remove_image(image)
            .with_context(|| format!("remove {image}"))?
        {
            println!("Untagged: {image}");
        } else {
            missing.push(image.as_str());
        }
    }
    prune(store)?;
    if !missing.is_empty() {
        anyhow::bail!("no such image: {}", missing.join(", "));
    }
    Ok(())
}

/// `msbox prune`: removes blobs and layer images that no pulled image uses any more.
pub fn prune(store: &Store) -> Result<()> {
    let gc = store.gc().context("remove unused blobs")?;
    let layers = layers::prune(store).context("remove unused layer images")?;
    println!(
        "Removed {} blobs and {} layer images, {} freed",
        gc.blobs_removed,
        layers.images,
        human_size(gc.blob_bytes_freed + gc.ingest_bytes_freed + layers.bytes)
    );
    Ok(())
}

/// `docker.io/library/busybox:latest` -> (`docker.io/library/busybox`, `latest`); a reference by
/// digest has the tag `<none>`.
fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((name, _digest)) = reference.split_once('@') {
        return (name, "<none>");
    }
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "<none>"),
    }
}

/// Sizes as docker prints them (decimal units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut unit = 0;
    let mut whole = bytes;
    let mut tenths = 0;
    while whole >= 1000 && unit + 1 < UNITS.len() {
        tenths = (whole % 1000) / 100;
        whole /= 1000;
        unit += 1;
    }
    if unit == 0 {
        format!("{whole}{}", UNITS[0])
    } else {
        format!("{whole}.{tenths}{}", UNITS[unit])
    }
}

/// A pull's progress on stderr: bars on a terminal, one line per blob otherwise (logs, CI).
#[derive(Debug)]
struct PullProgress {
    bars: Option<MultiProgress>,
    blobs: Mutex<HashMap<String, ProgressBar>>,
}

impl PullProgress {
    fn new() -> PullProgress {
        PullProgress {
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
            blobs: Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self) {
        if let Some(bars) = &self.bars {
            let _ = bars.clear();
        }
    }
}

/// The first 12 hex digits of a digest, as docker shows layers.
fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

impl Progress for PullProgress {
    fn resolved(&self, reference: &str, manifest_digest: &str) {
        if self.bars.is_none() {
            eprintln!("{reference}: resolved to {manifest_digest}");
        }
    }

    fn blob_cached(&self, digest: &str, _size: u64) {
        if self.bars.is_none() {
            eprintln!("{}: already present", short(digest));
        }
    }

    fn blob_started(&self, digest: &str, size: u64) {
        let Some(bars) = &self.bars else {
            eprintln!("{}: downloading {}", short(digest), human_size(size));
            return;
        };
        let bar = bars.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(short(digest).to_owned());
        if let Ok(mut blobs) = self.blobs.lock() {
            blobs.insert(digest.to_owned(), bar);
        }
    }

    fn blob_progress(&self, digest: &str, done: u64) {
        if let Some(bar) = self.blobs.lock().ok().and_then(|b| b.get(digest).cloned()) {
            bar.set_position(done);
        }
    }

    fn blob_done(&self, digest: &str) {
        match self.blobs.lock().ok().and_then(|mut b| b.remove(digest)) {
            Some(bar) => bar.finish(),
            None if self.bars.is_none() => eprintln!("{}: done", short(digest)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_as_docker_images_shows_them() {
        assert_eq!(
            split_reference("docker.io/library/busybox:latest"),
            ("docker.io/library/busybox", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/app:v1"),
            ("127.0.0.1:5000/app", "v1")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/app@sha256:00"),
            ("127.0.0.1:5000/app", "<none>")
        );
    }

    #[test]
    fn sizes_are_decimal_like_dockers() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500), "1.5kB");
        assert_eq!(human_size(4_260_000), "4.2MB");
    }
}
