//! The containerd harness itself works: a private containerd starts, imports the busybox image
//! and runs it with runc (the baseline every microsandbox test compares against), and nothing of
//! it is left after drop.

use msb_test_e2e::containerd::{Containerd, BUSYBOX};

#[test]
fn private_containerd_runs_busybox_with_runc() {
    if std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_err()
    {
        msb_test_e2e::require("runc is not installed (Debian's containerd package brings it)");
        return;
    }
    let ctrd = Containerd::start().expect("containerd starts");
    ctrd.import_busybox("default").expect("image imports");
    let out = ctrd.ctr(
        "default",
        &[
            "run",
            "--rm",
            BUSYBOX,
            "harness-runc",
            "sh",
            "-c",
            "echo hello; exit 3",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}",
        ctrd.log()
    );
    assert_eq!(out.status.code(), Some(3));
    let dir = ctrd.dir().to_path_buf();
    drop(ctrd);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "mounts left behind"
    );
}
