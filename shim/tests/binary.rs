//! The shim binary's containerd-facing actions, run as containerd runs them: `start` prints only
//! the socket address and leaves the daemon with no pipe to us; `delete` cleans up after a dead
//! shim from the bundle record and answers a `DeleteResponse` on stdout.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim::api::{ConnectRequest, DeleteResponse, ShutdownRequest};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim_async::TaskClient;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::r#async::Client;
use msb_shim::record::{BundleRecord, VmmRecord};

const BIN: &str = env!("CARGO_BIN_EXE_containerd-shim-microsandbox-v1");

fn shim(bundle: &Path, ttrpc: &Path, id: &str, action: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(bundle)
        .env("TTRPC_ADDRESS", ttrpc)
        .args(["-namespace", "msb-test", "-id", id, "-address"])
        .arg(ttrpc.with_extension("grpc"))
        .args(["-publish-binary", "/bin/false", "-bundle"])
        .arg(bundle)
        .arg(action);
    cmd
}

fn bundle(dir: &Path) -> std::path::PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../oci/tests/fixtures/ctr-run.json"
        ),
        b.join("config.json"),
    )
    .unwrap();
    b
}

#[test]
fn delete_action_cleans_up_after_a_dead_shim() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let state = tmp.path().join("state/msb-test/sandboxes/c1");
    std::fs::create_dir_all(state.join("vm")).unwrap();
    std::fs::write(state.join("vm/upper.ext4"), b"").unwrap();
    let mut vmm = Command::new("sleep").arg("60").spawn().unwrap();
    BundleRecord {
        namespace: "msb-test".into(),
        container_id: "c1".into(),
        sandbox_id: "c1".into(),
        vm_dir: state.clone(),
        owned_files: vec![state.join("vm/upper.ext4")],
        vmm: VmmRecord::of_pid(vmm.id()),
    }
    .write(&b)
    .unwrap();
    let out = shim(&b, &tmp.path().join("ttrpc"), "c1", "delete")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(resp.exit_status, 137);
    assert!(resp.exited_at.is_some());
    let status = vmm.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!state.exists());
}

#[tokio::test]
async fn start_prints_only_the_address_and_detaches() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: start binds under /run/containerd/s, which needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    // containerd's side: the log FIFO it reads and its ttrpc socket for events.
    let log = b.join("log");
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let _log_reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .unwrap();
    let ttrpc = tmp.path().join("ttrpc");
    let _events = std::os::unix::net::UnixListener::bind(&ttrpc).unwrap();
    let id = format!("start-{}", std::process::id());

    let mut child = shim(&b, &ttrpc, &id, "start")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "start did not return");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let address = String::from_utf8(out.stdout).unwrap();
    let hash = address
        .strip_prefix("unix:///run/containerd/s/")
        .unwrap_or_else(|| panic!("unexpected start output {address:?}"));
    assert_eq!(hash.len(), 64, "{address:?}");
    assert!(hash.bytes().all(|c| c.is_ascii_hexdigit()), "{address:?}");
    assert_eq!(std::fs::read_to_string(b.join("address")).unwrap(), address);

    let client = TaskClient::new(Client::connect(&address).await.unwrap());
    let conn = client
        .connect(Context::default(), &ConnectRequest::default())
        .await
        .unwrap();
    let pid = conn.shim_pid;
    // The daemon holds no pipe of ours: stdin, stdout and stderr are /dev/null.
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
    client
        .shutdown(Context::default(), &ShutdownRequest::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        // Not our child: it was re-parented; poll until it is gone (zombies show state Z).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            break;
        }
        assert!(Instant::now() < deadline, "shim {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!Path::new(hash).exists());
    assert!(!Path::new(&format!("/run/containerd/s/{hash}")).exists());
}
