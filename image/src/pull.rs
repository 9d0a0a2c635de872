//! Pulling an image from a registry into the [`Store`], as `docker pull` does.
//!
//! The manifest is always resolved anew; an image index (manifest list) is narrowed to the
//! platform asked for (this host's by default). Every blob, manifests included, is verified
//! by digest (and size) before it enters the store, and blobs the store has already are not
//! downloaded again: a pull cut short resumes at blob granularity on the next one (a partial
//! blob is never trusted, it starts again from its first byte). The image's record is written
//! last, once everything it names is in the store.
//!
//! Plain HTTP is used only for loopback registries and those the caller marks insecure.

mod credentials;
mod platform;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt as _;
use oci_distribution::client::{ClientConfig, ClientProtocol};
use oci_distribution::errors::{OciDistributionError, OciErrorCode};
use oci_distribution::manifest::{self as m, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_distribution::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

pub use platform::PlatformSpec;

use crate::store::{self, digest_hex, sha256_digest, ImageRecord, LayerRecord, Store, StoreError};
use credentials::Credentials;

/// Docker refuses manifests larger than this; so do we (it is held in memory).
const MAX_MANIFEST: usize = 4 << 20;
/// An image config is read whole into memory.
const MAX_CONFIG: u64 = 64 << 20;

const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDISTRIBUTABLE_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const DOCKER_SCHEMA1_UNSIGNED: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The layer media types an image may have: tar, tar+gzip and tar+zstd, OCI or Docker.
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    m::IMAGE_LAYER_MEDIA_TYPE,
    m::IMAGE_LAYER_GZIP_MEDIA_TYPE,
    OCI_LAYER_ZSTD,
    m::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    m::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
    DOCKER_LAYER_ZSTD,
];

const FOREIGN_LAYER_MEDIA_TYPES: &[&str] = &[
    DOCKER_FOREIGN_LAYER,
    m::IMAGE_LAYER_NONDISTRIBUTABLE_MEDIA_TYPE,
    m::IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE,
    OCI_NONDISTRIBUTABLE_ZSTD,
];

const MANIFEST_MEDIA_TYPES: &[&str] = &[
    m::OCI_IMAGE_INDEX_MEDIA_TYPE,
    m::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    m::OCI_IMAGE_MEDIA_TYPE,
    m::IMAGE_MANIFEST_MEDIA_TYPE,
];

/// How a pull goes.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// `os/arch[/variant]` to pick from an image index; `None`: this host's (linux/amd64 here).
    pub platform: Option<String>,
    /// Registries (`host[:port]`, as in references) reached over plain HTTP besides loopback
    /// ones.
    pub insecure_registries: Vec<String>,
    /// Layers downloaded at once (0 counts as 1).
    pub concurrency: usize,
    /// A request or download that receives nothing for this long fails.
    pub stall_timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            insecure_registries: Vec::new(),
            concurrency: 3,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// What a pull reports as it goes, for progress bars. Called from several tasks at once.
pub trait Progress: Send + Sync {
    /// The reference resolved to this digest (an index's, for a multi-platform image).
    fn resolved(&self, reference: &str, manifest_digest: &str);
    /// A blob (config or layer) the store has already: not downloaded.
    fn blob_cached(&self, digest: &str, size: u64);
    /// A blob (config or layer) starts downloading, `size` bytes.
    fn blob_started(&self, digest: &str, size: u64);
    /// `done` bytes of it so far.
    fn blob_progress(&self, digest: &str, done: u64);
    /// It is verified and in the store.
    fn blob_done(&self, digest: &str);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn resolved(&self, _: &str, _: &str) {}
    fn blob_cached(&self, _: &str, _: u64) {}
    fn blob_started(&self, _: &str, _: u64) {}
    fn blob_progress(&self, _: &str, _: u64) {}
    fn blob_done(&self, _: &str) {}
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_distribution::ParseError,
    },
    #[error("invalid platform {0:?}: expected os/arch[/variant], such as linux/arm64")]
    InvalidPlatform(String),
    #[error("cannot read registry credentials from {}", config.display())]
    ReadCredentials {
        config: std::path::PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("registry {registry} refused the credentials for user {user:?} (from {origin})")]
    CredentialsRefused {
        registry: String,
        user: String,
        origin: String,
    },
    #[error(
        "registry {registry} refused anonymous access to {repository}: it needs credentials \
         (none for {registry} in {config}; `docker login {registry}` writes them) or does not \
         exist"
    )]
    AuthenticationRequired {
        registry: String,
        repository: String,
        config: String,
    },
    #[error("{reference} not found in registry {registry}")]
    NotFound {
        reference: String,
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("cannot fetch {what} from registry {registry}")]
    Fetch {
        registry: String,
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("registry {registry} sent nothing for {secs} s while {what}", secs = timeout.as_secs())]
    Stalled {
        registry: String,
        what: String,
        timeout: Duration,
    },
    #[error("{what} from registry {registry}: expected digest {expected}, got {actual}")]
    ManifestDigest {
        registry: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} {digest} from registry {registry}: expected digest {digest}, got {actual}")]
    BlobDigest {
        registry: String,
        what: &'static str,
        digest: String,
        actual: String,
    },
    #[error("{what} {digest} from registry {registry}: expected {expected} bytes, got {actual}")]
    BlobSize {
        registry: String,
        what: &'static str,
        digest: String,
        expected: u64,
        actual: String,
    },
    #[error("{what} has an unsupported digest {digest:?} (only sha256:<hex> is)")]
    UnsupportedDigest { what: String, digest: String },
    #[error("{what} is larger than the {limit} bytes accepted")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: {reason}")]
    InvalidManifest { what: String, reason: String },
    #[error(
        "{reference} is a Docker image manifest of schema 1, which is not supported: push it \
         again with a current docker or skopeo"
    )]
    Schema1 { reference: String },
    #[error(
        "{reference} has no image for {wanted}; it offers {}",
        if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
    )]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        offered: Vec<String>,
    },
    #[error(
        "{reference}: layer {digest} is a foreign (non-distributable) layer of type \
         {media_type}, which is not downloaded from other places than the registry"
    )]
    ForeignLayer {
        reference: String,
        digest: String,
        media_type: String,
    },
    #[error("{reference}: {what} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        reference: String,
        what: String,
        media_type: String,
    },
    #[error("cannot parse the image config {digest}")]
    Config {
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "image config {digest} lists {diff_ids} diff ids (rootfs.diff_ids) for {layers} layers"
    )]
    DiffIdCount {
        digest: String,
        diff_ids: usize,
        layers: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {digest} to {}", path.display())]
    Write {
        digest: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the registry client")]
    Client(#[source] OciDistributionError),
    #[error("a pull task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Pulls `reference` into `store` and records it (see the module docs).
pub async fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<ImageRecord, PullError> {
    let image = store::parse_reference(reference).map_err(|e| match e {
        StoreError::InvalidReference { reference, source } => {
            PullError::InvalidReference { reference, source }
        }
        other => PullError::Store(other),
    })?;
    let wanted = match &opts.platform {
        Some(p) => PlatformSpec::parse(p).ok_or_else(|| PullError::InvalidPlatform(p.clone()))?,
        None => PlatformSpec::host(),
    };
    let registry = image.registry().to_owned();
    let creds = {
        let registry = registry.clone();
        blocking(move || credentials::lookup(&registry)).await??
    };
    let protocol = if plain_http(&image, &opts.insecure_registries) {
        ClientProtocol::HttpsExcept(vec![image.resolve_registry().to_owned()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::try_from(ClientConfig {
        protocol,
        // Platforms are chosen here, with an error that lists what the index offers.
        platform_resolver: None,
        ..Default::default()
    })
    .map_err(PullError::Client)?;
    // The record that keeps this pull's blobs from gc is written last: hold gc off until then.
    let _lock = {
        let store = store.clone();
        blocking(move || store.lock_shared()).await??
    };
    let puller = Puller {
        store: store.clone(),
        client,
        image,
        registry,
        creds,
        opts: opts.clone(),
    };
    puller.pull(&wanted, progress).await
}

/// Whether `image`'s registry is reached over plain HTTP: loopback ones and those listed.
fn plain_http(image: &Reference, insecure: &[String]) -> bool {
    let registry = image.registry();
    if insecure
        .iter()
        .any(|r| r == registry || r == image.resolve_registry())
    {
        return true;
    }
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(PullError::Task)
}

struct Puller {
    store: Store,
    client: Client,
    image: Reference,
    registry: String,
    creds: Credentials,
    opts: PullOptions,
}

/// A parsed manifest: an index to choose from, or an image.
enum Manifest {
    Index(OciImageIndex),
    Image(OciImageManifest, String),
}

impl Puller {
    async fn pull(
        self,
        wanted: &PlatformSpec,
        progress: &dyn Progress,
    ) -> Result<ImageRecord, PullError> {
        let reference = self.image.whole();
        // Fetches a bearer token if the registry asks for one; credentials the token server
        // refuses fail here, those of a basic-auth registry on the first request.
        let what = format!("the /v2/ endpoint for {reference}");
        tokio::time::timeout(
            self.opts.stall_timeout,
            self.client
                .auth(&self.image, &self.creds.auth, RegistryOperation::Pull),
        )
        .await
        .map_err(|_| self.stalled(format!("fetching {what}")))?
        .map_err(|e| self.registry_error(what, e))?;

        // The reference as given: by tag (resolved anew every time) or by digest.
        let (bytes, repo_digest) = self
            .manifest(&self.image, self.image.digest(), None, &reference)
            .await?;
        progress.resolved(&reference, &repo_digest);
        self.put_blob(&repo_digest, bytes.clone()).await?;
        let (manifest, manifest_digest, manifest_media_type) = match self
            .parse_manifest(&bytes, &reference)?
        {
            Manifest::Image(manifest, media_type) => (manifest, repo_digest.clone(), media_type),
            Manifest::Index(index) => {
                let entry = wanted.select(&index.manifests).ok_or_else(|| {
                    PullError::NoMatchingPlatform {
                        reference: reference.clone(),
                        wanted: wanted.to_string(),
                        offered: index
                            .manifests
                            .iter()
                            .filter_map(platform::describe)
                            .collect(),
                    }
                })?;
                let what = format!("the {wanted} manifest of {reference}");
                let by_digest = Reference::with_digest(
                    self.image.registry().to_owned(),
                    self.image.repository().to_owned(),
                    entry.digest.clone(),
                );
                let (bytes, digest) = self
                    .manifest(&by_digest, Some(&entry.digest), Some(entry.size), &what)
                    .await?;
                let Manifest::Image(manifest, media_type) = self.parse_manifest(&bytes, &what)?
                else {
                    return Err(PullError::InvalidManifest {
                        what,
                        reason: "an image index where an image manifest belongs".into(),
                    });
                };
                self.put_blob(&digest, bytes).await?;
                (manifest, digest, media_type)
            }
        };
        self.check_media_types(&manifest, &reference)?;

        // The config first: its diff ids must match the layers before any layer is fetched.
        let config_digest = manifest.config.digest.clone();
        self.fetch_blob(
            &manifest.config,
            "config",
            progress,
            &CancellationToken::new(),
        )
        .await?;
        let config = self.read_config(&config_digest).await?;
        let diff_ids = &config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(PullError::DiffIdCount {
                digest: config_digest,
                diff_ids: diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        let platform = match config.variant() {
            Some(v) => format!("{}/{}/{v}", config.os(), config.architecture()),
            None => format!("{}/{}", config.os(), config.architecture()),
        };
        if self.opts.platform.is_some() && PlatformSpec::parse(&platform).as_ref() != Some(wanted) {
            tracing::warn!(
                reference,
                image = platform,
                wanted = %wanted,
                "the image's platform is not the one asked for"
            );
        }

        let mut layers = Vec::with_capacity(manifest.layers.len());
        let mut size = 0u64;
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if digest_hex(diff_id).is_none() {
                return Err(PullError::UnsupportedDigest {
                    what: format!("a diff id of image config {config_digest}"),
                    digest: diff_id.clone(),
                });
            }
            let layer_size = descriptor_size(layer, "layer")?;
            size = size.saturating_add(layer_size);
            layers.push(LayerRecord {
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
                size: layer_size,
                diff_id: diff_id.clone(),
            });
        }
        // The same blob twice in one image (it happens) is fetched once.
        let mut seen = HashSet::new();
        let unique: Vec<&OciDescriptor> = manifest
            .layers
            .iter()
            .filter(|l| seen.insert(l.digest.as_str()))
            .collect();
        // On the first failure the others stop too, and the pull returns only once each has
        // ended and cleaned up after itself (its partial file removed): dropping them instead
        // would leave that to blocking tasks still running after the pull has returned.
        let stop = CancellationToken::new();
        let mut fetches = futures::stream::iter(unique)
            .map(|layer| self.fetch_blob(layer, "layer", progress, &stop))
            .buffer_unordered(self.opts.concurrency.max(1));
        let mut failed = None;
        while let Some(result) = fetches.next().await {
            if let (Err(e), None) = (result, &failed) {
                stop.cancel();
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }

        let record = ImageRecord {
            reference,
            repo_digest,
            manifest_digest,
            manifest_media_type,
            config_digest,
            platform,
            layers,
            config,
            size,
            pulled: store::rfc3339_now(),
        };
        let store = self.store.clone();
        let written = record.clone();
        blocking(move || store.put_image(&written)).await??;
        Ok(record)
    }

    /// Fetches a manifest and checks it: against `expected` (a reference by digest, an index
    /// entry) and the registry's `Docker-Content-Digest`. Returns it with its digest.
    async fn manifest(
        &self,
        image: &Reference,
        expected: Option<&str>,
        expected_size: Option<i64>,
        what: &str,
    ) -> Result<(Vec<u8>, String), PullError> {
        if let Some(d) = expected {
            if digest_hex(d).is_none() {
                return Err(PullError::UnsupportedDigest {
                    what: what.to_owned(),
                    digest: d.to_owned(),
                });
            }
        }
        let fetched = tokio::time::timeout(
            self.opts.stall_timeout,
            self.client
                .pull_manifest_raw(image, &self.creds.auth, MANIFEST_MEDIA_TYPES),
        )
        .await
        .map_err(|_| self.stalled(format!("fetching {what}")))?;
        let (bytes, header) =
            fetched.map_err(|e| self.registry_error(format!("the manifest of {what}"), e))?;
        if bytes.len() > MAX_MANIFEST {
            return Err(PullError::TooLarge {
                what: format!("the manifest of {what}"),
                limit: MAX_MANIFEST as u64,
            });
        }
        let actual = sha256_digest(&bytes);
        // Pulled by digest, the bytes must hash to it; by tag, to what the registry says
        // (`Docker-Content-Digest`, which oci-distribution returns when present).
        let expected = expected.unwrap_or(&header);
        if expected.starts_with("sha256:") && actual != expected {
            return Err(PullError::ManifestDigest {
                registry: self.registry.clone(),
                what: format!("the manifest of {what}"),
                expected: expected.to_owned(),
                actual,
            });
        }
        if let Some(size) = expected_size {
            if u64::try_from(size).ok() != Some(bytes.len() as u64) {
                return Err(PullError::InvalidManifest {
                    what: format!("the manifest of {what}"),
                    reason: format!("{} bytes where its index says {size}", bytes.len()),
                });
            }
        }
        Ok((bytes, actual))
    }

    fn parse_manifest(&self, bytes: &[u8], what: &str) -> Result<Manifest, PullError> {
        let invalid = |reason: String| PullError::InvalidManifest {
            what: format!("the manifest of {what}"),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let media_type = value
            .get("mediaType")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let media_type = media_type.as_deref();
        if value.get("schemaVersion").and_then(|v| v.as_i64()) == Some(1)
            || matches!(media_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_UNSIGNED))
        {
            return Err(PullError::Schema1 {
                reference: what.to_owned(),
            });
        }
        let is_index = match media_type {
            Some(m::OCI_IMAGE_INDEX_MEDIA_TYPE | m::IMAGE_MANIFEST_LIST_MEDIA_TYPE) => true,
            Some(m::OCI_IMAGE_MEDIA_TYPE | m::IMAGE_MANIFEST_MEDIA_TYPE) => false,
            // The OCI spec makes mediaType optional: tell by shape.
            None => value.get("manifests").is_some(),
            Some(other) => {
                return Err(PullError::UnsupportedMediaType {
                    reference: what.to_owned(),
                    what: "the manifest".into(),
                    media_type: other.to_owned(),
                })
            }
        };
        if is_index {
            serde_json::from_value(value)
                .map(Manifest::Index)
                .map_err(|e| invalid(format!("not an image index: {e}")))
        } else {
            let manifest: OciImageManifest = serde_json::from_value(value)
                .map_err(|e| invalid(format!("not an image manifest: {e}")))?;
            let media_type = media_type.unwrap_or(m::OCI_IMAGE_MEDIA_TYPE).to_owned();
            Ok(Manifest::Image(manifest, media_type))
        }
    }

    /// Refuses what is no container image, and foreign layers, before anything is fetched.
    fn check_media_types(
        &self,
        manifest: &OciImageManifest,
        reference: &str,
    ) -> Result<(), PullError> {
        let config_type = manifest.config.media_type.as_str();
        if config_type != m::IMAGE_CONFIG_MEDIA_TYPE
            && config_type != m::IMAGE_DOCKER_CONFIG_MEDIA_TYPE
        {
            return Err(PullError::UnsupportedMediaType {
                reference: reference.to_owned(),
                what: format!(
                    "the config {} (not a container image)",
                    manifest.config.digest
                ),
                media_type: config_type.to_owned(),
            });
        }
        for layer in &manifest.layers {
            let t = layer.media_type.as_str();
            if FOREIGN_LAYER_MEDIA_TYPES.contains(&t) {
                return Err(PullError::ForeignLayer {
                    reference: reference.to_owned(),
                    digest: layer.digest.clone(),
                    media_type: t.to_owned(),
                });
            }
            if !LAYER_MEDIA_TYPES.contains(&t) {
                return Err(PullError::UnsupportedMediaType {
                    reference: reference.to_owned(),
                    what: format!("layer {}", layer.digest),
                    media_type: t.to_owned(),
                });
            }
        }
        Ok(())
    }

    async fn read_config(
        &self,
        digest: &str,
    ) -> Result<oci_spec::image::ImageConfiguration, PullError> {
        let store = self.store.clone();
        let owned = digest.to_owned();
        let bytes = blocking(move || store.read_blob(&owned)).await??;
        let bytes = bytes.ok_or_else(|| {
            PullError::Store(StoreError::Io {
                what: "read",
                path: self.store.root().join("blobs/sha256"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("config {digest} vanished from the store"),
                ),
            })
        })?;
        serde_json::from_slice(&bytes).map_err(|source| PullError::Config {
            digest: digest.to_owned(),
            source,
        })
    }

    async fn put_blob(&self, digest: &str, bytes: Vec<u8>) -> Result<(), PullError> {
        let store = self.store.clone();
        let digest = digest.to_owned();
        blocking(move || store.put_blob(&digest, &bytes)).await??;
        Ok(())
    }

    /// Puts a blob in the store unless it is there: streamed, hashed as it comes and checked
    /// against the descriptor's digest and size before the rename into `blobs/`. Once `stop` is
    /// cancelled (another blob of the pull failed) it ends at once with `Ok`, its partial file
    /// removed.
    async fn fetch_blob(
        &self,
        desc: &OciDescriptor,
        what: &'static str,
        progress: &dyn Progress,
        stop: &CancellationToken,
    ) -> Result<(), PullError> {
        if stop.is_cancelled() {
            return Ok(()); // Another blob failed: the pull ends with its error.
        }
        let digest = desc.digest.as_str();
        if digest_hex(digest).is_none() {
            return Err(PullError::UnsupportedDigest {
                what: format!("{what} of {}", self.image.whole()),
                digest: digest.to_owned(),
            });
        }
        let size = descriptor_size(desc, what)?;
        if what == "config" && size > MAX_CONFIG {
            return Err(PullError::TooLarge {
                what: format!("image config {digest}"),
                limit: MAX_CONFIG,
            });
        }
        let size_error = |actual: String| PullError::BlobSize {
            registry: self.registry.clone(),
            what,
            digest: digest.to_owned(),
            expected: size,
            actual,
        };
        if let Some(have) = self.store.blob_size(digest) {
            // Content is named by its digest: a different size means the manifest is wrong.
            if have != size {
                return Err(size_error(have.to_string()));
            }
            progress.blob_cached(digest, size);
            return Ok(());
        }
        let ingest = {
            let store = self.store.clone();
            let digest = digest.to_owned();
            blocking(move || store.begin_ingest(&digest)).await??
        };
        let Some(ingest) = ingest else {
            // Another process wrote it while we waited for its lock.
            progress.blob_cached(digest, size);
            return Ok(());
        };
        progress.blob_started(digest, size);
        let fetching = format!("{what} {digest} of {}", self.image.whole());
        // Only from the registry: URLs in a descriptor are not followed.
        let plain = OciDescriptor {
            urls: None,
            ..desc.clone()
        };
        let stream = tokio::time::timeout(
            self.opts.stall_timeout,
            self.client.pull_blob_stream(&self.image, &plain),
        )
        .await
        .map_err(|_| self.stalled(format!("starting to send {fetching}")))?
        .map_err(|e| self.registry_error(fetching.clone(), e))?;
        let mut stream = std::pin::pin!(stream);
        let write_error = |source| PullError::Write {
            digest: digest.to_owned(),
            path: ingest.path().to_owned(),
            source,
        };
        let mut file = ingest.tokio_file()?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        loop {
            let next = tokio::select! {
                biased;
                // Another blob failed: the pull ends with its error, and dropping `ingest` on
                // the way out removes this partial file.
                _ = stop.cancelled() => return Ok(()),
                next = tokio::time::timeout(self.opts.stall_timeout, stream.next()) => {
                    next.map_err(|_| self.stalled(format!("sending {fetching}")))?
                }
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| PullError::Fetch {
                registry: self.registry.clone(),
                what: fetching.clone(),
                source: Box::new(e),
            })?;
            done += chunk.len() as u64;
            if done > size {
                return Err(size_error(format!("more than {size}")));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_error)?;
            progress.blob_progress(digest, done);
        }
        file.flush().await.map_err(write_error)?;
        drop(file);
        if done != size {
            return Err(size_error(done.to_string()));
        }
        let actual = format!("sha256:{:x}", hasher.finalize());
        if actual != digest {
            // Dropping `ingest` removes the partial file.
            return Err(PullError::BlobDigest {
                registry: self.registry.clone(),
                what,
                digest: digest.to_owned(),
                actual,
            });
        }
        blocking(move || ingest.commit(&actual)).await??;
        progress.blob_done(digest);
        Ok(())
    }

    fn stalled(&self, what: String) -> PullError {
        PullError::Stalled {
            registry: self.registry.clone(),
            what,
            timeout: self.opts.stall_timeout,
        }
    }

    /// Sorts a client error: refused credentials, missing ones, not found, or the rest (the
    /// network, a server error), each naming the registry and what was being fetched.
    fn registry_error(&self, what: String, e: OciDistributionError) -> PullError {
        let has_code = |codes: &[OciErrorCode]| match &e {
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|err| codes.contains(&err.code))
            }
            _ => false,
        };
        let unauthorized = match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => true,
            OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()) == Some(401),
            _ => has_code(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]),
        };
        if unauthorized {
            return match &self.creds.user {
                Some(user) => PullError::CredentialsRefused {
                    registry: self.registry.clone(),
                    user: user.clone(),
                    origin: self.creds.origin(),
                },
                None => PullError::AuthenticationRequired {
                    registry: self.registry.clone(),
                    repository: self.image.repository().to_owned(),
                    config: self.creds.config.display().to_string(),
                },
            };
        }
        if has_code(&[OciErrorCode::ManifestUnknown, OciErrorCode::NameUnknown]) {
            return PullError::NotFound {
                reference: self.image.whole(),
                registry: self.registry.clone(),
                source: e,
            };
        }
        PullError::Fetch {
            registry: self.registry.clone(),
            what,
            source: Box::new(e),
        }
    }
}

fn descriptor_size(desc: &OciDescriptor, what: &str) -> Result<u64, PullError> {
    u64::try_from(desc.size).map_err(|_| PullError::InvalidManifest {
        what: format!("{what} {}", desc.digest),
        reason: format!("negative size {}", desc.size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let insecure = vec!["registry.lan:5000".to_owned()];
        for (reference, plain) in [
            ("localhost:5000/app", true),
            ("localhost/app", true),
            ("127.0.0.1:5000/app", true),
            ("127.1.2.3:5000/app", true),
            ("registry.lan:5000/app", true),
            ("registry.lan/app", false),
            ("registry.example:5000/app", false),
            ("10.0.0.1:5000/app", false),
            ("busybox", false),
            ("localhost.example/app", false),
        ] {
            let image: Reference = reference.parse().unwrap();
            assert_eq!(plain_http(&image, &insecure), plain, "{reference}");
        }
        // oci-distribution 0.11 cannot parse an IPv6 literal in a reference ("[::1]:5000/app"),
        // so `[::1]` is handled above only for when it can.
        assert!("[::1]:5000/app".parse::<Reference>().is_err());
    }
}
