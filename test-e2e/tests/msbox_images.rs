//! `msbox pull` and `msbox run IMAGE` against Debian's `docker-registry` on 127.0.0.1 (images
//! built here and pushed with `skopeo`) and real guests under QEMU: what the image says is what
//! runs, whiteouts and opaque directories hold across layers, a second run asks no registry and
//! builds nothing, and bad images fail before any VM with errors that name what was wrong.
//! The pull's own cases (platforms, digests, interrupted pulls, auth) are in
//! `image/tests/pull.rs`; the unpack's in `image/tests/unpack.rs`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_image::testing::{
    missing_tools, Compression, Image, ImageConfig, Layer, OciLayout, PushOptions, Registry,
};
use msb_test_e2e::guest::{assets, msbox, Run};

/// A guest that has not finished by then is stuck (the timeout reports its console).
const T: Duration = Duration::from_secs(120);

/// The registry, or `None` after saying why the test cannot run.
fn registry() -> Option<Registry> {
    if let Some(reason) = missing_tools() {
        msb_test_e2e::require(reason);
        return None;
    }
    Some(Registry::start().expect("docker-registry starts"))
}

/// Debian's static busybox with the applets the tests use, and a passwd naming uid 1000.
fn busybox_layer() -> Layer {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut layer = Layer::new(Compression::Gzip)
        .dir("bin")
        .dir("etc")
        .dir("tmp")
        .file_with("bin/busybox", busybox, 0o755, 0, 0);
    for applet in ["sh", "id", "ls", "wc", "cat", "true"] {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/work:/bin/sh\n",
    )
}

/// Pushes `image` as `NAME:latest` to `registry`; returns the reference.
fn push(registry: &Registry, name: &str, image: &Image) -> String {
    let mut layout = OciLayout::new().expect("an OCI layout");
    layout.add_image("latest", image).expect("the image builds");
    let reference = format!("{}/{name}:latest", registry.addr());
    layout
        .push("latest", &reference, &PushOptions::default())
        .expect("skopeo pushes");
    reference
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `msbox --data-root ROOT ARGS...`.
fn msbox_in(root: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--data-root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    msbox(&all, None, T)
}

/// Every file under `dir` with its inode and modification time: what a second run must leave
/// exactly as it was.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                all.insert(e.path(), (m.ino(), m.mtime(), m.mtime_nsec()));
            }
        }
    }
    all
}

/// The report the image's entrypoint prints: its arguments, who and where it runs, its
/// environment, and what the second layer deleted and emptied.
const REPORT: &str = r#"#!/bin/sh
echo "args=$*"
echo "user=$(id -u):$(id -g)"
echo "pwd=$(pwd)"
echo "greeting=$GREETING"
if [ -e /data/gone.txt ]; then echo gone=present; else echo gone=absent; fi
echo "emptied=$(ls -A /data/emptied | wc -l)"
echo "kept=$(cat /data/kept.txt)"
"#;

#[test]
fn an_image_runs_as_its_config_says_and_a_second_run_asks_no_registry() {
    let Some(_) = assets() else { return };
    let Some(mut registry) = registry() else {
        return;
    };
    let bottom = busybox_layer()
        .dir("data")
        .file("data/gone.txt", "deleted by the layer above\n")
        .file("data/kept.txt", "from the bottom layer\n")
        .dir("data/emptied")
        .file("data/emptied/a", "a\n")
        .file("data/emptied/b", "b\n");
    let top = Layer::new(Compression::Zstd)
        .whiteout("data/gone.txt")
        .opaque("data/emptied")
        .dir_with("work", 0o755, 1000, 1000)
        .file_with("bin/report", REPORT, 0o755, 0, 0);
    let image = Image::new(
        vec![bottom, top],
        ImageConfig {
            entrypoint: Some(vec!["/bin/report".into()]),
            cmd: Some(vec!["from-image".into()]),
            env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
            working_dir: Some("/work".into()),
            user: Some("1000:1000".into()),
            ..ImageConfig::default()
        },
    );
    let reference = push(&registry, "layered", &image);
    let data = tempfile::tempdir().unwrap();
    let root = data.path();

    let expected = |args: &str| {
        format!(
            "args={args}\nuser=1000:1000\npwd=/work\ngreeting=hello\ngone=absent\nemptied=0\n\
             kept=from the bottom layer\n"
        )
    };
    let r = msbox_in(root, &["run", &reference]);
    assert_eq!(
        (text(&r.stdout), r.code),
        (expected("from-image"), 0),
        "{}",
        r.stderr
    );
    // Plain lines on a pipe: each blob downloaded, once.
    assert_eq!(
        r.stderr.matches(": downloading ").count(),
        3,
        "{}",
        r.stderr
    );

    // `-- ARGS` replaces Cmd only; the store and the layer images stay exactly as they were,
    // with the registry gone: nothing is pulled and nothing is built.
    let before = snapshot(root);
    assert_eq!(
        before
            .keys()
            .filter(|p| p.extension().is_some_and(|e| e == "erofs"))
            .count(),
        2
    );
    registry.stop();
    let r = msbox_in(root, &["run", &reference, "--", "one", "two"]);
    assert_eq!(
        (text(&r.stdout), r.code),
        (expected("one two"), 0),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr, "",
        "a run of a stored image prints nothing of a pull"
    );
    assert_eq!(snapshot(root), before);

    // --entrypoint drops Cmd; -e, -w and -u override the config.
    let r = msbox_in(
        root,
        &[
            "run",
            "--entrypoint",
            "/bin/sh",
            "-e",
            "GREETING=bye",
            "-w",
            "/data",
            "-u",
            "0:0",
            &reference,
            "--",
            "-c",
            "echo $GREETING $(id -u) $(pwd) $PATH",
        ],
    );
    assert_eq!(
        (text(&r.stdout), r.code),
        ("bye 0 /data /bin\n".to_owned(), 0),
        "{}",
        r.stderr
    );

    // The store as `msbox images` shows it; rmi frees the blobs and the layer images.
    let r = msbox_in(root, &["images"]);
    let lines: Vec<&str> = std::str::from_utf8(&r.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].starts_with(&format!(
            "{:<40} {:<16} ",
            reference.trim_end_matches(":latest"),
            "latest"
        )),
        "{lines:?}"
    );
    let r = msbox_in(root, &["rmi", &reference]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let left: Vec<PathBuf> = snapshot(root)
        .into_keys()
        .filter(|p| !p.ends_with("lock"))
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new());
    let r = msbox_in(root, &["run", "--pull", "never", &reference]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("not in the image store"), "{}", r.stderr);
}

#[test]
fn bad_images_fail_before_any_vm_and_name_what_was_wrong() {
    let Some(registry) = registry() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let root = data.path();

    // A layer that plants a symlink to a host directory and then writes through it.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap();
    let evil = Layer::new(Compression::Gzip)
        .symlink("evil", target)
        .file("evil/planted", "through the symlink\n");
    let reference = push(
        &registry,
        "escape",
        &Image::new(vec![busybox_layer(), evil], ImageConfig::default()),
    );
    let r = msbox_in(root, &["run", &reference, "--", "true"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("\"evil/planted\""), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // Nothing half-built is left to be taken for a layer image later.
    let erofs: Vec<PathBuf> = snapshot(root)
        .into_keys()
        .filter(|p| p.to_string_lossy().contains("/layers/"))
        .collect();
    assert_eq!(erofs.len(), 1, "only the busybox layer's image: {erofs:?}");

    // A blob changed in the registry after the push: refused by digest, nothing of it kept.
    let image = Image::new(
        vec![Layer::new(Compression::None).file("hello", "hello\n")],
        ImageConfig::default(),
    );
    let mut layout = OciLayout::new().unwrap();
    let built = layout.add_image("latest", &image).unwrap();
    let tampered = format!("{}/tampered:latest", registry.addr());
    layout
        .push("latest", &tampered, &PushOptions::default())
        .unwrap();
    let layer = &built.layers[0].digest;
    let blob = registry.blob_data_path(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let r = msbox_in(root, &["pull", &tampered]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("expected digest {layer}")),
        "{}",
        r.stderr
    );
    let hex = layer.trim_start_matches("sha256:");
    assert!(!root.join("blobs/sha256").join(hex).exists());
    assert_eq!(std::fs::read_dir(root.join("ingest")).unwrap().count(), 0);
}
