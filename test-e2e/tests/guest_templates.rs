//! Templates (`msb_runtime::template`) against real guests: the first sandbox builds the
//! template and is restored from it, later ones only restore; each clone is a sandbox of its own
//! (its hostname, its random stream, the host's clock, its own disks); with templates off the
//! VM boots; a template that does not restore is discarded, the sandbox boots, and the next one
//! builds the template anew.
//!
//! One test function: the template directory is process-wide (`$MSB_TEMPLATE_DIR`, set here to a
//! directory of this test's own, so the test builds its template whatever the machine holds).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msb_protocol::boot::Hostname;
use msb_protocol::types::*;
use msb_runtime::vmm::{BackendKind, DiskSpec};
use msb_runtime::{disks, Vm, VmConfig};
use msb_test_e2e::guest::{assets, busybox_rootfs, container, GuestSlot};
use msb_test_e2e::ids::container_id;

/// What one sandbox reported.
#[derive(Debug)]
struct Seen {
    from_template: bool,
    hostname: String,
    /// Guest wall clock, seconds, and the host's when it was read.
    guest_time: u64,
    host_time: u64,
    random: String,
    /// The container's root is the sandbox's own: its lower's marker and what it wrote to its
    /// upper.
    files: String,
    /// `/proc/sys/kernel/random/boot_id`.
    boot_id: String,
}

/// Starts a sandbox on `lower` (read-only, shared) and a fresh upper, runs a probe in a
/// container, shuts it down.
async fn sandbox(lower: &Path, name: &str, templates: bool) -> Seen {
    let _slot = GuestSlot::acquire();
    let mut cfg = VmConfig::new(container_id(name));
    cfg.backend = Some(BackendKind::Qemu);
    cfg.templates = templates;
    cfg.boot_env.hostname = Some(Hostname::parse(name).unwrap());
    let dir = cfg.dir();
    std::fs::create_dir_all(&dir).unwrap();
    disks::make_upper(&dir.join("upper.img"), 64 << 20).unwrap();
    cfg.disks = vec![
        DiskSpec {
            serial: "lower".into(),
            path: lower.to_path_buf(),
            read_only: true,
        },
        DiskSpec {
            serial: "upper".into(),
            path: dir.join("upper.img"),
            read_only: false,
        },
    ];
    let sb = Vm::start(cfg).await.expect("the sandbox starts");
    let agent = sb.agent().clone();
    agent
        .container_create(&container(
            StorageRef::Serial("lower".into()),
            StorageRef::Serial("upper".into()),
        ))
        .await
        .expect("a container on the sandbox's disks");
    let script = format!(
        "hostname; date +%s; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
         echo {name} > /written; cat /marker /written | tr '\\n' ' '; echo; \
         cat /proc/sys/kernel/random/boot_id"
    );
    let (out, err, code) = agent
        .exec(&ExecRequest {
            cmd: "sh".into(),
            args: vec!["-c".into(), script],
            container: Some("c".into()),
            stdin: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let host_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        code,
        Ok(0),
        "probe in {name}: {out} {}",
        String::from_utf8_lossy(&err)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "probe output of {name}: {out:?}");
    let seen = Seen {
        from_template: sb.from_template(),
        hostname: lines[0].to_owned(),
        guest_time: lines[1].parse().unwrap(),
        host_time,
        random: lines[2].to_owned(),
        files: lines[3].trim().to_owned(),
        boot_id: lines[4].to_owned(),
    };
    let exit = sb.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!(exit.code, Some(0), "{name} powers off cleanly");
    assert!(!dir.exists(), "{name}'s directory is removed");
    seen
}

/// The template directories under `root` (not the lock files).
fn templates(root: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_template_are_sandboxes_of_their_own() {
    let Some(_) = assets() else { return };
    let root = tempfile::tempdir().unwrap();
    let templates_root = root.path().join("templates");
    // The only test of this process: nothing else reads the environment meanwhile.
    std::env::set_var("MSB_TEMPLATE_DIR", &templates_root);
    let rootfs = root.path().join("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("marker"), "lower\n").unwrap();
    let lower = root.path().join("lower.img");
    disks::make_lower(&rootfs, &lower).unwrap();

    // The first sandbox builds the template, then is restored from it like every later one.
    let a = sandbox(&lower, "clone-a", true).await;
    let built = templates(&templates_root);
    assert_eq!(built.len(), 1, "one template: {built:?}");
    let t = &built[0];
    assert_eq!(
        (
            mode(&templates_root),
            mode(t),
            mode(&t.join("state")),
            mode(&t.join("key"))
        ),
        (0o700, 0o700, 0o600, 0o600)
    );
    let key = std::fs::read_to_string(t.join("key")).unwrap();
    assert!(key.contains("disks=2\n"), "{key}");
    assert!(key.contains("cmdline=MSB_TEMPLATE=1\n"), "{key}");
    let b = sandbox(&lower, "clone-b", true).await;
    assert_eq!(templates(&templates_root), built, "the second reuses it");
    for (s, name) in [(&a, "clone-a"), (&b, "clone-b")] {
        assert!(s.from_template, "{name} is restored: {s:?}");
        assert_eq!(s.hostname, name);
        assert_eq!(s.files, format!("lower {name}"));
        assert!(
            s.guest_time.abs_diff(s.host_time) <= 2,
            "{name}'s clock is the host's: {s:?}"
        );
        assert_eq!(s.random.len(), 64, "{s:?}");
    }
    assert_ne!(a.random, b.random, "clones draw different random streams");
    assert_ne!(a.boot_id, b.boot_id, "each clone has a boot id of its own");
    assert_eq!(a.boot_id.len(), 36, "{a:?}");

    // Off: a boot.
    let c = sandbox(&lower, "booted-c", false).await;
    assert!(!c.from_template);
    assert_eq!(
        (c.hostname.as_str(), c.files.as_str()),
        ("booted-c", "lower booted-c")
    );
    assert!(c.guest_time.abs_diff(c.host_time) <= 2, "{c:?}");

    // A template QEMU cannot restore: discarded, the sandbox boots, the next one rebuilds it.
    std::fs::write(t.join("state"), b"not a saved VM").unwrap();
    let d = sandbox(&lower, "fallback-d", true).await;
    assert!(!d.from_template, "{d:?}");
    assert_eq!(d.hostname, "fallback-d");
    assert!(
        templates(&templates_root).is_empty(),
        "the bad template is gone"
    );
    let e = sandbox(&lower, "rebuilt-e", true).await;
    assert!(e.from_template, "{e:?}");
    assert_eq!(
        templates(&templates_root),
        built,
        "rebuilt under the same name"
    );
    assert_ne!(e.random, a.random);
    assert_ne!(e.random, b.random);
}
