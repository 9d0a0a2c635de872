//! Building OCI images for tests: layers from entry lists (well-formed or malicious), image
//! configs with their diff ids, an OCI layout directory, and a push with `skopeo`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::store::sha256_digest;

/// A fixed mtime for every entry: the same entries make the same layer digest.
const MTIME: u64 = 1_700_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// One tar entry of a [`Layer`].
#[derive(Debug, Clone)]
pub enum Entry {
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
        /// PAX `SCHILY.xattr.<name>` records.
        xattrs: Vec<(String, Vec<u8>)>,
    },
    Dir {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
    /// Deletes `path` of the layers below: written as `dir/.wh.name`.
    Whiteout {
        path: String,
    },
    /// Hides what the layers below have in `dir`: written as `dir/.wh..wh..opq`.
    Opaque {
        dir: String,
    },
    /// Name and link name copied byte for byte into the header (at most 100 bytes each), for
    /// what tar's `set_path` refuses: `../x`, `/abs`.
    Raw {
        name: Vec<u8>,
        kind: tar::EntryType,
        link: Option<Vec<u8>>,
        content: Vec<u8>,
        mode: u32,
    },
}

/// A layer: entries in order, and how its blob is compressed.
#[derive(Debug, Clone)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
}

impl Layer {
    pub fn new(compression: Compression) -> Layer {
        Layer {
            entries: Vec::new(),
            compression,
        }
    }

    pub fn entry(mut self, entry: Entry) -> Layer {
        self.entries.push(entry);
        self
    }

    /// A file, 0644 root:root.
    pub fn file(self, path: &str, content: impl Into<Vec<u8>>) -> Layer {
        self.file_with(path, content, 0o644, 0, 0)
    }

    pub fn file_with(
        self,
        path: &str,
        content: impl Into<Vec<u8>>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Layer {
        self.entry(Entry::File {
            path: path.into(),
            content: content.into(),
            mode,
            uid,
            gid,
            xattrs: Vec::new(),
        })
    }

    /// A directory, 0755 root:root.
    pub fn dir(self, path: &str) -> Layer {
        self.dir_with(path, 0o755, 0, 0)
    }

    pub fn dir_with(self, path: &str, mode: u32, uid: u64, gid: u64) -> Layer {
        self.entry(Entry::Dir {
            path: path.into(),
            mode,
            uid,
            gid,
        })
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.entry(Entry::Symlink {
            path: path.into(),
            target: target.into(),
        })
    }

    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.entry(Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        })
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Layer {
        self.entry(Entry::CharDevice {
            path: path.into(),
            major,
            minor,
            mode: 0o666,
        })
    }

    pub fn whiteout(self, path: &str) -> Layer {
        self.entry(Entry::Whiteout { path: path.into() })
    }

    pub fn opaque(self, dir: &str) -> Layer {
        self.entry(Entry::Opaque { dir: dir.into() })
    }

    /// A regular file (or any `kind`) under a name written into the header as is.
    pub fn raw(
        self,
        name: impl Into<Vec<u8>>,
        kind: tar::EntryType,
        link: Option<&[u8]>,
        content: impl Into<Vec<u8>>,
    ) -> Layer {
        self.entry(Entry::Raw {
            name: name.into(),
            kind,
            link: link.map(<[u8]>::to_vec),
            content: content.into(),
            mode: 0o644,
        })
    }

    /// The uncompressed tar: its digest is the layer's diff id.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            append(&mut b, entry).expect("a tar in memory");
        }
        b.into_inner().expect("a tar in memory")
    }

    /// The blob as pushed: the tar, compressed.
    pub fn blob(&self) -> Vec<u8> {
        compress(&self.tar(), self.compression)
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, entry: &Entry) -> io::Result<()> {
    let len = |c: &[u8]| c.len() as u64;
    match entry {
        Entry::File {
            path,
            content,
            mode,
            uid,
            gid,
            xattrs,
        } => {
            if !xattrs.is_empty() {
                let records: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                    .collect();
                b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
            }
            let mut h = header(tar::EntryType::Regular, *mode, *uid, *gid, len(content));
            b.append_data(&mut h, path, content.as_slice())
        }
        Entry::Dir {
            path,
            mode,
            uid,
            gid,
        } => {
            let mut h = header(tar::EntryType::Directory, *mode, *uid, *gid, 0);
            b.append_data(&mut h, path, io::empty())
        }
        Entry::Symlink { path, target } => {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
            b.append_link(&mut h, path, target)
        }
        Entry::Hardlink { path, target } => {
            let mut h = header(tar::EntryType::Link, 0o644, 0, 0, 0);
            b.append_link(&mut h, path, target)
        }
        Entry::CharDevice {
            path,
            major,
            minor,
            mode,
        } => {
            let mut h = header(tar::EntryType::Char, *mode, 0, 0, 0);
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
            b.append_data(&mut h, path, io::empty())
        }
        Entry::Whiteout { path } => {
            let path = path.trim_end_matches('/');
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            let wh = if dir.is_empty() {
                format!(".wh.{name}")
            } else {
                format!("{dir}/.wh.{name}")
            };
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
            b.append_data(&mut h, wh, io::empty())
        }
        Entry::Opaque { dir } => {
            let dir = dir.trim_end_matches('/');
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
            b.append_data(&mut h, format!("{dir}/.wh..wh..opq"), io::empty())
        }
        Entry::Raw {
            name,
            kind,
            link,
            content,
            mode,
        } => {
            let mut h = header(*kind, *mode, 0, 0, len(content));
            let old = h.as_old_mut();
            assert!(
                name.len() <= old.name.len(),
                "raw names are at most 100 bytes"
            );
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                assert!(
                    link.len() <= old.linkname.len(),
                    "raw links are at most 100 bytes"
                );
                old.linkname = [0; 100];
                old.linkname[..link.len()].copy_from_slice(link);
            }
            h.set_cksum();
            b.append(&h, content.as_slice())
        }
    }
}

fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip in memory");
            e.finish().expect("gzip in memory")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd in memory"),
    }
}

/// The parts of the image config a runtime honours, and its platform.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            entrypoint: None,
            cmd: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            user: None,
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

/// An image to build: layers bottom first.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: ImageConfig,
}

impl Image {
    pub fn new(layers: Vec<Layer>, config: ImageConfig) -> Image {
        Image { layers, config }
    }
}

/// A layer as built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// An image as built into an [`OciLayout`].
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
    /// `os/arch[/variant]`.
    pub platform: String,
}

impl BuiltImage {
    /// The compressed layers' sizes added up.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A multi-platform image as built.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub digest: String,
    pub images: Vec<BuiltImage>,
}

/// The manifest format `skopeo` pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// As built (OCI); digests preserved.
    #[default]
    Oci,
    /// Converted to Docker v2 schema 2 (`--format v2s2`): new manifest digests.
    DockerV2S2,
}

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// `(user, password)` for the registry.
    pub creds: Option<(String, String)>,
    pub format: ManifestFormat,
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    refs: Vec<Value>,
}

impl OciLayout {
    /// A new layout in a temporary directory.
    pub fn new() -> io::Result<OciLayout> {
        let tmp = tempfile::Builder::new().prefix("msb-oci-").tempdir()?;
        let mut layout = OciLayout::at(tmp.path())?;
        layout._tmp = Some(tmp);
        Ok(layout)
    }

    /// A new layout in `dir` (created).
    pub fn at(dir: &Path) -> io::Result<OciLayout> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let layout = OciLayout {
            dir: dir.to_owned(),
            _tmp: None,
            refs: Vec::new(),
        };
        layout.write_index()?;
        Ok(layout)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Adds a blob; returns its digest and size.
    pub fn write_blob(&self, data: &[u8]) -> io::Result<(String, u64)> {
        let digest = sha256_digest(data);
        let path = self.blob_path(&digest);
        fs::write(path, data)?;
        Ok((digest, data.len() as u64))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Builds `image` into the layout, tagged `tag`.
    pub fn add_image(&mut self, tag: &str, image: &Image) -> io::Result<BuiltImage> {
        let built = self.build_image(image)?;
        self.add_ref(
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &built.manifest_digest,
            built.manifest_size,
        )?;
        Ok(built)
    }

    /// Builds a multi-platform image (an OCI image index over `images`, each with its config's
    /// platform) into the layout, tagged `tag`.
    pub fn add_index(&mut self, tag: &str, images: &[Image]) -> io::Result<BuiltIndex> {
        let mut built = Vec::new();
        let mut manifests = Vec::new();
        for image in images {
            let b = self.build_image(image)?;
            let mut platform = json!({
                "architecture": image.config.architecture,
                "os": image.config.os,
            });
            if let Some(v) = &image.config.variant {
                platform["variant"] = json!(v);
            }
            manifests.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": b.manifest_digest,
                "size": b.manifest_size,
                "platform": platform,
            }));
            built.push(b);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let (digest, size) = self.write_blob(&serde_json::to_vec(&index)?)?;
        self.add_ref(
            tag,
            "application/vnd.oci.image.index.v1+json",
            &digest,
            size,
        )?;
        Ok(BuiltIndex {
            digest,
            images: built,
        })
    }

    fn build_image(&self, image: &Image) -> io::Result<BuiltImage> {
        let mut layers = Vec::new();
        for layer in &image.layers {
            let tar = layer.tar();
            let diff_id = sha256_digest(&tar);
            let (digest, size) = self.write_blob(&compress(&tar, layer.compression))?;
            layers.push(BuiltLayer {
                digest,
                diff_id,
                size,
                media_type: layer.compression.media_type().to_owned(),
            });
        }
        let c = &image.config;
        let mut exec = serde_json::Map::new();
        if let Some(v) = &c.entrypoint {
            exec.insert("Entrypoint".into(), json!(v));
        }
        if let Some(v) = &c.cmd {
            exec.insert("Cmd".into(), json!(v));
        }
        if !c.env.is_empty() {
            exec.insert("Env".into(), json!(c.env));
        }
        if let Some(v) = &c.working_dir {
            exec.insert("WorkingDir".into(), json!(v));
        }
        if let Some(v) = &c.user {
            exec.insert("User".into(), json!(v));
        }
        let mut config = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": c.architecture,
            "os": c.os,
            "config": exec,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({
                "created": "2023-11-14T22:13:20Z",
                "created_by": "msb-image test support",
            })).collect::<Vec<_>>(),
        });
        let platform = match &c.variant {
            Some(v) => {
                config["variant"] = json!(v);
                format!("{}/{}/{v}", c.os, c.architecture)
            }
            None => format!("{}/{}", c.os, c.architecture),
        };
        let (config_digest, config_size) = self.write_blob(&serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let (manifest_digest, manifest_size) = self.write_blob(&serde_json::to_vec(&manifest)?)?;
        Ok(BuiltImage {
            manifest_digest,
            manifest_size,
            config_digest,
            layers,
            platform,
        })
    }

    fn add_ref(&mut self, tag: &str, media_type: &str, digest: &str, size: u64) -> io::Result<()> {
        const REF_NAME: &str = "org.opencontainers.image.ref.name";
        self.refs.retain(|r| r["annotations"][REF_NAME] != tag);
        self.refs.push(json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": { REF_NAME: tag },
        }));
        self.write_index()
    }

    fn write_index(&self) -> io::Result<()> {
        let index = json!({ "schemaVersion": 2, "manifests": self.refs });
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)
    }

    /// Pushes the image (or every image of the index) tagged `tag` to `dest`
    /// (`ADDR/NAME:TAG`) over plain HTTP with `skopeo copy --all`.
    pub fn push(&self, tag: &str, dest: &str, opts: &PushOptions) -> io::Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-tls-verify=false",
        ]);
        match opts.format {
            ManifestFormat::Oci => {
                cmd.arg("--preserve-digests");
            }
            ManifestFormat::DockerV2S2 => {
                cmd.args(["--format", "v2s2"]);
            }
        }
        if let Some((user, password)) = &opts.creds {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg(format!("oci:{}:{tag}", self.dir.display()))
            .arg(format!("docker://{dest}"));
        let out = cmd.output().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run skopeo (Debian package skopeo): {e}"),
            )
        })?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy to {dest} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// Writes `DIR/config.json` as `docker login REGISTRY` would (an `auths` entry with the
/// base64 of `user:password`); returns its path. Point `DOCKER_CONFIG` at `dir`.
pub fn docker_config(
    dir: &Path,
    registry: &str,
    user: &str,
    password: &str,
) -> io::Result<PathBuf> {
    let auth = base64(format!("{user}:{password}").as_bytes());
    let config = json!({ "auths": { registry: { "auth": auth } } });
    let path = dir.join("config.json");
    fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(path)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let six = usize::try_from((n >> (18 - 6 * i)) & 63).expect("6 bits");
                out.push(char::from(ALPHABET[six]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn raw_names_go_in_as_written() {
        let layer = Layer::new(Compression::None)
            .raw("../x", tar::EntryType::Regular, None, "evil")
            .raw("/abs", tar::EntryType::Regular, None, "")
            .raw("l", tar::EntryType::Link, Some(b"../../etc/passwd"), "")
            .whiteout("a/b")
            .opaque("c/");
        let tar = layer.tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<(Vec<u8>, Option<Vec<u8>>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    h.path_bytes().into_owned(),
                    h.link_name_bytes().map(|l| l.into_owned()),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                (b"../x".to_vec(), None),
                (b"/abs".to_vec(), None),
                (b"l".to_vec(), Some(b"../../etc/passwd".to_vec())),
                (b"a/.wh.b".to_vec(), None),
                (b"c/.wh..wh..opq".to_vec(), None),
            ]
        );
    }
}
