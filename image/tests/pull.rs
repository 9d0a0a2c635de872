//! `pull` against a real registry (Debian's `docker-registry` on 127.0.0.1), images built here
//! and pushed with `skopeo`. No mocks: tampering, interruption and auth happen at the registry.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use msb_image::pull::{pull, NoProgress, Progress, PullError, PullOptions};
use msb_image::store::{sha256_digest, Store};
use msb_image::testing::{
    docker_config, missing_tools, BuiltImage, Compression, Image, ImageConfig, Layer,
    ManifestFormat, OciLayout, PushOptions, Registry, RegistryOptions, Relay,
};

/// Skips (or fails, in CI) when the registry or skopeo is not installed.
fn tools() -> bool {
    match missing_tools() {
        Some(why) => {
            msb_test_e2e::require(why);
            false
        }
        None => true,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Resolved(String, String),
    Cached(String, u64),
    Started(String, u64),
    Done(String),
}

/// Called with every `blob_progress`.
type OnProgress = Box<dyn Fn(&str, u64) + Send + Sync>;

/// Records what a pull reports; `blob_progress` is kept as the last count per blob.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    progress: Mutex<BTreeMap<String, u64>>,
    on_progress: Option<OnProgress>,
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn started(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Started(d, s) => Some((d, s)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn cached(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Cached(d, s) => Some((d, s)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn done(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Done(d) => Some(d),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }
}

impl Progress for Recorder {
    fn resolved(&self, reference: &str, digest: &str) {
        let e = Event::Resolved(reference.into(), digest.into());
        self.events.lock().unwrap().push(e);
    }
    fn blob_cached(&self, digest: &str, size: u64) {
        let e = Event::Cached(digest.into(), size);
        self.events.lock().unwrap().push(e);
    }
    fn blob_started(&self, digest: &str, size: u64) {
        let e = Event::Started(digest.into(), size);
        self.events.lock().unwrap().push(e);
    }
    fn blob_progress(&self, digest: &str, done: u64) {
        self.progress.lock().unwrap().insert(digest.into(), done);
        if let Some(f) = &self.on_progress {
            f(digest, done);
        }
    }
    fn blob_done(&self, digest: &str) {
        let e = Event::Done(digest.into());
        self.events.lock().unwrap().push(e);
    }
}

fn sorted(mut v: Vec<(String, u64)>) -> Vec<(String, u64)> {
    v.sort();
    v
}

/// The config and the layers of an image, as (digest, size), sorted.
fn blobs_of(image: &BuiltImage, layout: &OciLayout) -> Vec<(String, u64)> {
    let config_size = fs::metadata(layout.blob_path(&image.config_digest))
        .unwrap()
        .len();
    let mut v = vec![(image.config_digest.clone(), config_size)];
    v.extend(image.layers.iter().map(|l| (l.digest.clone(), l.size)));
    sorted(v)
}

fn ingest_entries(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn two_layer_image() -> Image {
    Image::new(
        vec![
            Layer::new(Compression::Gzip)
                .dir("etc")
                .file("etc/motd", "hello from the first layer\n")
                .dir("data")
                .file("data/a", "a"),
            Layer::new(Compression::Zstd)
                .whiteout("etc/motd")
                .opaque("data")
                .file_with("bin/tool", "#!/bin/sh\necho tool\n", 0o4755, 0, 0),
        ],
        ImageConfig {
            entrypoint: Some(vec!["/bin/tool".into()]),
            cmd: Some(vec!["--help".into()]),
            env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
            working_dir: Some("/data".into()),
            user: Some("1000:1000".into()),
            ..ImageConfig::default()
        },
    )
}

/// Every directory under the store is 0700 and every file 0600.
fn assert_private(dir: &Path) {
    let meta = fs::symlink_metadata(dir).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o700,
        "{}",
        dir.display()
    );
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            assert_private(&path);
        } else {
            assert!(meta.is_file(), "{}", path.display());
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                0o600,
                "{}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn pull_records_the_image_and_a_second_pull_downloads_nothing() {
    if !tools() {
        return;
    }
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let built = layout.add_image("v1", &two_layer_image()).unwrap();
    let reference = format!("{}/test/two-layers:v1", registry.addr());
    layout
        .push("v1", &reference, &PushOptions::default())
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    // Whatever the umask, the store's files are private: pull under the most permissive one.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let store = Store::open(&root.path().join("store")).unwrap();
    let progress = Recorder::default();
    let pulled = pull(&store, &reference, &PullOptions::default(), &progress).await;
    nix::sys::stat::umask(old_umask);
    let record = pulled.unwrap();

    assert_eq!(record.reference, reference);
    assert_eq!(record.repo_digest, built.manifest_digest);
    assert_eq!(record.manifest_digest, built.manifest_digest);
    assert_eq!(
        record.manifest_media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(record.config_digest, built.config_digest);
    assert_eq!(record.platform, "linux/amd64");
    assert_eq!(record.size, built.size());
    let layers: Vec<_> = record
        .layers
        .iter()
        .map(|l| (&l.digest, &l.media_type, l.size, &l.diff_id))
        .collect();
    let want: Vec<_> = built
        .layers
        .iter()
        .map(|l| (&l.digest, &l.media_type, l.size, &l.diff_id))
        .collect();
    assert_eq!(layers, want);
    assert_eq!(
        want.iter().map(|l| l.1).collect::<Vec<_>>(),
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ]
    );
    let exec = record.config.config().as_ref().unwrap();
    assert_eq!(
        exec.entrypoint().as_deref(),
        Some(&["/bin/tool".to_owned()][..])
    );
    assert_eq!(exec.cmd().as_deref(), Some(&["--help".to_owned()][..]));
    assert_eq!(
        exec.env().as_deref(),
        Some(&["PATH=/bin".to_owned(), "GREETING=hi".to_owned()][..])
    );
    assert_eq!(exec.working_dir().as_deref(), Some("/data"));
    assert_eq!(exec.user().as_deref(), Some("1000:1000"));
    assert_eq!(
        record.config.rootfs().diff_ids(),
        &built
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        record.pulled.len() == 20 && record.pulled.ends_with('Z'),
        "{}",
        record.pulled
    );

    // Every blob in the store is the one pushed, byte for byte.
    for (digest, _) in blobs_of(&built, &layout) {
        let stored = fs::read(store.blob(&digest).unwrap()).unwrap();
        assert_eq!(sha256_digest(&stored), digest);
        assert_eq!(stored, fs::read(layout.blob_path(&digest)).unwrap());
    }
    let manifest = fs::read(store.blob(&built.manifest_digest).unwrap()).unwrap();
    assert_eq!(sha256_digest(&manifest), built.manifest_digest);

    assert_eq!(
        progress.events()[0],
        Event::Resolved(reference.clone(), built.manifest_digest.clone())
    );
    assert_eq!(progress.started(), blobs_of(&built, &layout));
    assert_eq!(progress.cached(), vec![]);
    let mut all: Vec<String> = blobs_of(&built, &layout).into_iter().map(|b| b.0).collect();
    all.sort();
    assert_eq!(progress.done(), all);
    for (digest, size) in blobs_of(&built, &layout) {
        assert_eq!(progress.progress.lock().unwrap().get(&digest), Some(&size));
    }
    assert_eq!(ingest_entries(&store), Vec::<String>::new());
    assert_eq!(store.image(&reference).unwrap().as_ref(), Some(&record));
    assert_eq!(store.images().unwrap(), vec![record.clone()]);
    assert_private(store.root());

    // Again: the manifest is resolved anew, no blob is downloaded.
    let again = Recorder::default();
    let second = pull(&store, &reference, &PullOptions::default(), &again)
        .await
        .unwrap();
    assert_eq!(
        again.events()[0],
        Event::Resolved(reference.clone(), built.manifest_digest.clone())
    );
    assert_eq!(again.started(), vec![]);
    assert_eq!(again.done(), Vec::<String>::new());
    assert_eq!(again.cached(), blobs_of(&built, &layout));
    assert_eq!(second.layers, record.layers);
    assert_eq!(second.config, record.config);
    assert_private(store.root());
}

#[tokio::test]
async fn docker_v2_schema2_manifests_pull_too() {
    if !tools() {
        return;
    }
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let image = Image::new(
        vec![
            Layer::new(Compression::Gzip).file("a", "docker format\n"),
            Layer::new(Compression::None).file("b", "an uncompressed layer\n"),
        ],
        ImageConfig::default(),
    );
    let built = layout.add_image("v1", &image).unwrap();
    let reference = format!("{}/test/docker-format:v1", registry.addr());
    let opts = PushOptions {
        format: ManifestFormat::DockerV2S2,
        ..PushOptions::default()
    };
    layout.push("v1", &reference, &opts).unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let record = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        record.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // Converted manifest, same config; skopeo gzips the uncompressed layer (Docker's format
    // has no place for one), so its blob is new and its diff id the same.
    assert_ne!(record.manifest_digest, built.manifest_digest);
    assert_eq!(record.config_digest, built.config_digest);
    let layers: Vec<_> = record
        .layers
        .iter()
        .map(|l| (l.media_type.as_str(), l.diff_id.as_str()))
        .collect();
    assert_eq!(
        layers,
        vec![
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                built.layers[0].diff_id.as_str()
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                built.layers[1].diff_id.as_str()
            ),
        ]
    );
    assert_eq!(record.layers[0].digest, built.layers[0].digest);
    assert_ne!(record.layers[1].digest, built.layers[1].digest);
    for layer in &record.layers {
        let blob = fs::read(store.blob(&layer.digest).unwrap()).unwrap();
        assert_eq!(sha256_digest(&blob), layer.digest);
        assert_eq!(blob.len() as u64, layer.size);
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar)
            .unwrap();
        assert_eq!(sha256_digest(&tar), layer.diff_id);
    }
    let manifest = fs::read(store.blob(&record.manifest_digest).unwrap()).unwrap();
    assert_eq!(sha256_digest(&manifest), record.manifest_digest);
}

fn platform_image(arch: &str) -> Image {
    Image::new(
        vec![Layer::new(Compression::Gzip).file("arch", format!("{arch}\n"))],
        ImageConfig {
            architecture: arch.into(),
            variant: (arch == "arm64").then(|| "v8".to_owned()),
            cmd: Some(vec![format!("/bin/{arch}")]),
            ..ImageConfig::default()
        },
    )
}

#[tokio::test]
async fn a_multi_platform_index_picks_amd64_or_the_platform_asked_for() {
    if !tools() {
        return;
    }
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    // arm64 first: taking the first entry would be wrong.
    let index = layout
        .add_index("multi", &[platform_image("arm64"), platform_image("amd64")])
        .unwrap();
    let (arm64, amd64) = (&index.images[0], &index.images[1]);
    assert_ne!(arm64.layers[0].digest, amd64.layers[0].digest);
    let reference = format!("{}/test/multi:multi", registry.addr());
    layout
        .push("multi", &reference, &PushOptions::default())
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let progress = Recorder::default();
    let record = pull(&store, &reference, &PullOptions::default(), &progress)
        .await
        .unwrap();
    assert_eq!(
        progress.events()[0],
        Event::Resolved(reference.clone(), index.digest.clone())
    );
    assert_eq!(record.repo_digest, index.digest);
    assert_eq!(record.manifest_digest, amd64.manifest_digest);
    assert_eq!(record.config_digest, amd64.config_digest);
    assert_eq!(record.platform, "linux/amd64");
    assert_eq!(record.layers.len(), 1);
    assert_eq!(record.layers[0].digest, amd64.layers[0].digest);
    assert_eq!(
        record.config.config().as_ref().unwrap().cmd().as_deref(),
        Some(&["/bin/amd64".to_owned()][..])
    );
    // Only amd64's blobs were fetched; the index and the manifest are stored too.
    assert_eq!(progress.started(), blobs_of(amd64, &layout));
    assert!(store.blob(&index.digest).is_some());
    assert!(store.blob(&amd64.manifest_digest).is_some());
    assert_eq!(store.blob(&arm64.layers[0].digest), None);
    assert_eq!(store.blob(&arm64.manifest_digest), None);

    let opts = PullOptions {
        platform: Some("linux/arm64".into()),
        ..PullOptions::default()
    };
    let record = pull(&store, &reference, &opts, &NoProgress).await.unwrap();
    assert_eq!(record.repo_digest, index.digest);
    assert_eq!(record.manifest_digest, arm64.manifest_digest);
    assert_eq!(record.platform, "linux/arm64/v8");
    assert_eq!(record.layers[0].digest, arm64.layers[0].digest);
    assert_eq!(
        fs::read(store.blob(&arm64.layers[0].digest).unwrap()).unwrap(),
        fs::read(layout.blob_path(&arm64.layers[0].digest)).unwrap()
    );

    let opts = PullOptions {
        platform: Some("linux/s390x".into()),
        ..PullOptions::default()
    };
    let err = pull(&store, &reference, &opts, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("{reference} has no image for linux/s390x; it offers linux/arm64/v8, linux/amd64")
    );
    let opts = PullOptions {
        platform: Some("linux".into()),
        ..PullOptions::default()
    };
    let err = pull(&store, &reference, &opts, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid platform \"linux\": expected os/arch[/variant], such as linux/arm64"
    );
}

/// Overwrites bytes in the middle of a file, keeping its length.
fn tamper(path: &Path) -> Vec<u8> {
    let mut data = fs::read(path).unwrap();
    let mid = data.len() / 2;
    let end = data.len().min(mid + 4);
    for b in &mut data[mid..end] {
        *b ^= 0xff;
    }
    fs::write(path, &data).unwrap();
    data
}

#[tokio::test]
async fn tampered_blobs_are_refused_and_nothing_of_them_is_stored() {
    if !tools() {
        return;
    }
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let image = Image::new(
        vec![
            Layer::new(Compression::Gzip).file("ok", "an honest layer\n"),
            Layer::new(Compression::None).file("victim", vec![b'x'; 100_000]),
        ],
        ImageConfig::default(),
    );
    let built = layout.add_image("v1", &image).unwrap();
    let reference = format!("{}/test/tampered:v1", registry.addr());
    layout
        .push("v1", &reference, &PushOptions::default())
        .unwrap();
    let victim = &built.layers[1].digest;
    let tampered = tamper(&registry.blob_data_path(victim));
    let actual = sha256_digest(&tampered);

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let err = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::BlobDigest { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "layer {victim} from registry {}: expected digest {victim}, got {actual}",
            registry.addr()
        )
    );
    assert_eq!(store.blob(victim), None);
    assert_eq!(ingest_entries(&store), Vec::<String>::new());
    assert_eq!(store.image(&reference).unwrap(), None);
    assert_eq!(store.images().unwrap(), vec![]);

    // A tampered config is refused the same way, before any layer is fetched.
    let image = Image::new(
        vec![Layer::new(Compression::Gzip).file("c", "config victim\n")],
        ImageConfig {
            cmd: Some(vec!["/c".into()]),
            ..ImageConfig::default()
        },
    );
    let built = layout.add_image("config", &image).unwrap();
    let reference = format!("{}/test/tampered:config", registry.addr());
    layout
        .push("config", &reference, &PushOptions::default())
        .unwrap();
    let config = &built.config_digest;
    let actual = sha256_digest(&tamper(&registry.blob_data_path(config)));
    let progress = Recorder::default();
    let err = pull(&store, &reference, &PullOptions::default(), &progress)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "config {config} from registry {}: expected digest {config}, got {actual}",
            registry.addr()
        )
    );
    assert_eq!(
        progress.started(),
        vec![(config.clone(), built_config_size(&layout, config))]
    );
    assert_eq!(store.blob(config), None);
    assert_eq!(ingest_entries(&store), Vec::<String>::new());
    assert_eq!(store.image(&reference).unwrap(), None);

    // A tampered manifest: by tag (the registry's Docker-Content-Digest) and by digest.
    let image = Image::new(
        vec![Layer::new(Compression::Gzip).file("m", "manifest victim\n")],
        ImageConfig::default(),
    );
    let built = layout.add_image("manifest", &image).unwrap();
    let by_tag = format!("{}/test/tampered:manifest", registry.addr());
    layout
        .push("manifest", &by_tag, &PushOptions::default())
        .unwrap();
    let path = registry.blob_data_path(&built.manifest_digest);
    // Still JSON, one byte longer: the registry serves it.
    let mut manifest = fs::read(&path).unwrap();
    manifest.insert(1, b' ');
    fs::write(&path, &manifest).unwrap();
    let actual = sha256_digest(&manifest);
    let by_digest = format!(
        "{}/test/tampered@{}",
        registry.addr(),
        built.manifest_digest
    );
    for reference in [&by_tag, &by_digest] {
        let err = pull(&store, reference, &PullOptions::default(), &NoProgress)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::ManifestDigest { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "the manifest of {reference} from registry {}: expected digest {}, got {actual}",
                registry.addr(),
                built.manifest_digest
            )
        );
        assert_eq!(store.blob(&built.manifest_digest), None);
        assert_eq!(store.blob(&actual), None);
        assert_eq!(store.image(reference).unwrap(), None);
    }
    assert_eq!(store.images().unwrap(), vec![]);
    assert_eq!(ingest_entries(&store), Vec::<String>::new());
}

fn built_config_size(layout: &OciLayout, digest: &str) -> u64 {
    fs::metadata(layout.blob_path(digest)).unwrap().len()
}

/// Bytes that do not compress, the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_resumes_without_fetching_complete_blobs_again() {
    if !tools() {
        return;
    }
    const BIG: usize = 16 << 20;
    const STOP_AT: u64 = 1 << 20;
    let mut registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let image = Image::new(
        vec![
            Layer::new(Compression::None).file("big", noise(BIG)),
            Layer::new(Compression::Gzip).file("small", "small\n"),
        ],
        ImageConfig::default(),
    );
    let built = layout.add_image("v1", &image).unwrap();
    layout
        .push(
            "v1",
            &format!("{}/test/interrupted:v1", registry.addr()),
            &PushOptions::default(),
        )
        .unwrap();
    let (big, small) = (built.layers[0].clone(), built.layers[1].clone());

    // Through a relay at 4 MiB/s: the big layer takes seconds, the rest comes at once.
    let relay = Relay::start(
        format!("127.0.0.1:{}", registry.port()).parse().unwrap(),
        4 << 20,
    )
    .unwrap();
    let reference = format!("{}/test/interrupted:v1", relay.addr());
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();

    let mid_layer = Arc::new(tokio::sync::Notify::new());
    let progress = Recorder {
        on_progress: Some({
            let (mid_layer, big) = (mid_layer.clone(), big.digest.clone());
            Box::new(move |digest, done| {
                if digest == big && done >= STOP_AT {
                    mid_layer.notify_one();
                }
            })
        }),
        ..Recorder::default()
    };
    let opts = PullOptions::default();
    let (result, ()) = tokio::join!(pull(&store, &reference, &opts, &progress), async {
        mid_layer.notified().await;
        registry.stop();
    });
    let err = result.unwrap_err();
    assert!(
        matches!(&err, PullError::Fetch { what, .. } if what.contains(&big.digest)),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "cannot fetch layer {} of {reference} from registry {}",
            big.digest,
            relay.addr()
        )),
        "{err}"
    );
    let got = progress.progress.lock().unwrap()[&big.digest];
    assert!(got >= STOP_AT && got < big.size, "{got} of {}", big.size);
    // Cleanly: the complete blobs kept, no partial one, no record.
    assert!(
        progress.done().contains(&small.digest),
        "{:?}",
        progress.events()
    );
    assert!(store.blob(&small.digest).is_some());
    assert!(store.blob(&built.config_digest).is_some());
    assert_eq!(store.blob(&big.digest), None);
    assert_eq!(ingest_entries(&store), Vec::<String>::new());
    assert_eq!(store.image(&reference).unwrap(), None);

    registry.start_again().unwrap();
    relay.set_rate(0);
    let again = Recorder::default();
    let record = pull(&store, &reference, &PullOptions::default(), &again)
        .await
        .unwrap();
    assert_eq!(again.started(), vec![(big.digest.clone(), big.size)]);
    assert_eq!(again.done(), vec![big.digest.clone()]);
    assert_eq!(
        again.cached(),
        sorted(vec![
            (
                built.config_digest.clone(),
                built_config_size(&layout, &built.config_digest)
            ),
            (small.digest.clone(), small.size),
        ])
    );
    assert_eq!(record.manifest_digest, built.manifest_digest);
    assert_eq!(
        record.layers.iter().map(|l| &l.digest).collect::<Vec<_>>(),
        [&big.digest, &small.digest]
    );
    let stored = fs::read(store.blob(&big.digest).unwrap()).unwrap();
    assert_eq!(sha256_digest(&stored), big.digest);
    assert_eq!(ingest_entries(&store), Vec::<String>::new());
}

#[tokio::test]
async fn basic_auth_with_credentials_from_docker_config() {
    // The only test that sets DOCKER_CONFIG and PATH (process-wide): the others never match
    // its registry, so they stay anonymous whatever they read.
    if !tools() {
        return;
    }
    let (user, password) = ("alice", "s3cret-Pa55");
    let registry = Registry::start_with(&RegistryOptions {
        htpasswd: Some((user.into(), password.into())),
    })
    .unwrap();
    let mut layout = OciLayout::new().unwrap();
    let built = layout.add_image("v1", &two_layer_image()).unwrap();
    let reference = format!("{}/private/app:v1", registry.addr());
    let push = PushOptions {
        creds: Some((user.into(), password.into())),
        ..PushOptions::default()
    };
    layout.push("v1", &reference, &push).unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(&root.path().join("store")).unwrap();
    let config_dir = root.path().join("docker");
    fs::create_dir(&config_dir).unwrap();
    std::env::set_var("DOCKER_CONFIG", &config_dir);
    let config = config_dir.join("config.json");

    // No config.json: anonymous, refused.
    let err = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::AuthenticationRequired { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "registry {0} refused anonymous access to private/app: it needs credentials (none \
             for {0} in {1}; `docker login {0}` writes them) or does not exist",
            registry.addr(),
            config.display()
        )
    );

    // A wrong password: refused, and said so without the secret.
    docker_config(&config_dir, &registry.addr(), user, "wrong-password").unwrap();
    let err = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::CredentialsRefused { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "registry {} refused the credentials for user \"alice\" (from {})",
            registry.addr(),
            config.display()
        )
    );
    assert!(!format!("{err:?}").contains("wrong-password"), "{err:?}");

    // Credentials for another registry only: anonymous again.
    docker_config(&config_dir, "other.example:5000", user, password).unwrap();
    let err = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::AuthenticationRequired { .. }),
        "{err:?}"
    );

    // The right ones, as `docker login` writes them.
    docker_config(&config_dir, &registry.addr(), user, password).unwrap();
    let record = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(record.manifest_digest, built.manifest_digest);
    assert_eq!(record.layers.len(), 2);
    for layer in &built.layers {
        assert!(store.blob(&layer.digest).is_some());
    }

    // From a credential helper named in credHelpers (docker-credential-<name> on PATH).
    let bin = root.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-msbtest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n\
             [ \"$server\" = {addr} ] || {{ echo credentials not found in native keychain; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n",
            addr = registry.addr()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(paths).unwrap());
    fs::write(
        &config,
        format!(r#"{{"credHelpers": {{"{}": "msbtest"}}}}"#, registry.addr()),
    )
    .unwrap();
    let other = Store::open(&root.path().join("store2")).unwrap();
    let record = pull(&other, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(record.manifest_digest, built.manifest_digest);

    // A helper with wrong credentials: refused, naming the helper.
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"nope\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    let err = pull(&other, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "registry {} refused the credentials for user \"alice\" (from credential helper \
             docker-credential-msbtest (configured in {}))",
            registry.addr(),
            config.display()
        )
    );
    std::env::set_var("PATH", path);
    std::env::remove_var("DOCKER_CONFIG");
}

#[tokio::test]
async fn gc_removes_the_blobs_of_removed_images_and_keeps_shared_ones() {
    if !tools() {
        return;
    }
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let base = Layer::new(Compression::Gzip).file("base", "shared by both\n");
    let a = layout
        .add_image(
            "a",
            &Image::new(
                vec![
                    base.clone(),
                    Layer::new(Compression::Gzip).file("a", "only a\n"),
                ],
                ImageConfig::default(),
            ),
        )
        .unwrap();
    let b = layout
        .add_image(
            "b",
            &Image::new(
                vec![base, Layer::new(Compression::Zstd).file("b", "only b\n")],
                ImageConfig::default(),
            ),
        )
        .unwrap();
    assert_eq!(a.layers[0].digest, b.layers[0].digest);
    let ref_a = format!("{}/test/gc:a", registry.addr());
    let ref_b = format!("{}/test/gc:b", registry.addr());
    layout.push("a", &ref_a, &PushOptions::default()).unwrap();
    layout.push("b", &ref_b, &PushOptions::default()).unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    pull(&store, &ref_a, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    let progress = Recorder::default();
    pull(&store, &ref_b, &PullOptions::default(), &progress)
        .await
        .unwrap();
    // The shared layer came with a.
    assert_eq!(
        progress.cached(),
        vec![(a.layers[0].digest.clone(), a.layers[0].size)]
    );
    assert_eq!(
        store
            .images()
            .unwrap()
            .iter()
            .map(|r| r.reference.as_str())
            .collect::<Vec<_>>(),
        [ref_a.as_str(), ref_b.as_str()]
    );

    // Things gc leaves alone: layers/, an ingest file being written, a fresh one.
    fs::create_dir(store.layers_dir()).unwrap();
    fs::write(store.layers_dir().join("keep.erofs"), "not the store's").unwrap();
    let ingest = root.path().join("ingest");
    let old = SystemTime::now() - Duration::from_secs(3600);
    let stale = ingest.join(format!("{}.partial", "1".repeat(64)));
    let locked = ingest.join(format!("{}.partial", "2".repeat(64)));
    let fresh = ingest.join(format!("{}.partial", "3".repeat(64)));
    for path in [&stale, &locked, &fresh] {
        fs::write(path, "partial").unwrap();
    }
    for path in [&stale, &locked] {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let writer = nix::fcntl::Flock::lock(
        fs::File::open(&locked).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();

    // Nothing to collect while both records are there (but the stale ingest file).
    let gc = store.gc().unwrap();
    assert_eq!(
        (gc.blobs_removed, gc.ingest_removed, gc.ingest_bytes_freed),
        (0, 1, 7)
    );
    assert!(!stale.exists());
    assert!(locked.exists() && fresh.exists());

    assert!(store.remove_image(&ref_a).unwrap());
    assert!(!store.remove_image(&ref_a).unwrap());
    assert_eq!(store.image(&ref_a).unwrap(), None);
    let only_a = [
        (a.manifest_digest.clone(), a.manifest_size),
        (
            a.config_digest.clone(),
            built_config_size(&layout, &a.config_digest),
        ),
        (a.layers[1].digest.clone(), a.layers[1].size),
    ];
    let gc = store.gc().unwrap();
    assert_eq!(gc.blobs_removed, 3);
    assert_eq!(gc.blob_bytes_freed, only_a.iter().map(|b| b.1).sum::<u64>());
    assert_eq!(gc.ingest_removed, 0);
    for (digest, _) in &only_a {
        assert_eq!(store.blob(digest), None, "{digest}");
    }
    for digest in [
        &b.manifest_digest,
        &b.config_digest,
        &b.layers[0].digest,
        &b.layers[1].digest,
    ] {
        assert!(store.blob(digest).is_some(), "{digest}");
    }
    assert_eq!(
        fs::read_to_string(store.layers_dir().join("keep.erofs")).unwrap(),
        "not the store's"
    );
    drop(writer);
    assert!(locked.exists() && fresh.exists());
    // The writer is gone: its old file goes now, the fresh one stays.
    let gc = store.gc().unwrap();
    assert_eq!((gc.blobs_removed, gc.ingest_removed), (0, 1));
    assert!(!locked.exists() && fresh.exists());

    // b still pulls from the store alone.
    let again = Recorder::default();
    pull(&store, &ref_b, &PullOptions::default(), &again)
        .await
        .unwrap();
    assert_eq!(again.started(), vec![]);
}

/// The errors' text down to the root cause, as a binary prints it.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

#[tokio::test]
async fn network_failures_name_the_registry_and_what_was_fetched() {
    // Nothing listens: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let reference = format!("127.0.0.1:{port}/nobody/home:v1");
    let err = pull(&store, &reference, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Fetch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot fetch the /v2/ endpoint for {reference} from registry 127.0.0.1:{port}")
    );
    assert!(
        chain(&err).contains(&format!("http://127.0.0.1:{port}/v2/"))
            && chain(&err).contains("Connection refused"),
        "{}",
        chain(&err)
    );

    if !tools() {
        return;
    }
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    layout
        .add_image(
            "v1",
            &Image::new(
                vec![Layer::new(Compression::Gzip).file("f", "f\n")],
                ImageConfig::default(),
            ),
        )
        .unwrap();
    layout
        .push(
            "v1",
            &format!("{}/test/net:v1", registry.addr()),
            &PushOptions::default(),
        )
        .unwrap();

    // A tag the registry does not have.
    let missing = format!("{}/test/net:v2", registry.addr());
    let err = pull(&store, &missing, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{missing} not found in registry {}", registry.addr())
    );

    // A registry that accepts connections and then says nothing.
    registry.pause();
    let opts = PullOptions {
        stall_timeout: Duration::from_secs(1),
        ..PullOptions::default()
    };
    let reference = format!("{}/test/net:v1", registry.addr());
    let started = std::time::Instant::now();
    let err = pull(&store, &reference, &opts, &NoProgress)
        .await
        .unwrap_err();
    registry.resume();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, PullError::Stalled { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry {} sent nothing for 1 s while fetching the /v2/ endpoint for {reference}",
            registry.addr()
        )
    );
    pull(&store, &reference, &opts, &NoProgress).await.unwrap();
    assert_eq!(store.images().unwrap().len(), 1);
}
