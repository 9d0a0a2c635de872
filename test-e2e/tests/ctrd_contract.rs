//! The containerd contract, checked in seconds: the real shim binary over the scripted fake VM
//! (`shim/examples/fake_shim.rs`, built by `./hack/test`) under a real containerd 1.6. stdio,
//! exact exit statuses, exec, pause and resume, kill, delete, the events containerd publishes
//! and their order, pods sharing one shim process, SIGKILL on a guest that stopped answering
//! (137 all the same), and a bad configuration's error. Nothing runs in a VM here (the fake's
//! processes act out a tiny script: `echo`, `exit N`, `cat`, `hang` (the guest stops answering),
//! anything else runs until a fatal signal); the same verbs with real guests are in
//! `ctrd_shim.rs`.

use std::path::PathBuf;
use std::process::Command;

use msb_test_e2e::containerd::Containerd;
use msb_test_e2e::ctr::*;
use msb_test_e2e::ids::container_id;
use msb_test_e2e::paths::profile_dir;

/// The fake shim, linked into containerd's PATH under our shim's name.
fn fake_shim() -> PathBuf {
    let path = profile_dir().join("examples/containerd-shim-msbfake-v1");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p msb-shim --features test-utils --example \
         containerd-shim-msbfake-v1` (./hack/test does)",
        path.display()
    );
    path
}

/// Shim processes serving `ctrd` (the daemon runs as the resolved path of the binary, whatever
/// name containerd started it by).
fn shims_of(ctrd: &Containerd) -> usize {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let address = format!("-address {} ", ctrd.socket().display());
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains("containerd-shim-") && l.contains(&address))
        .count()
}

/// Kills the processes whose command line matches its pattern when dropped.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("pkill").arg("-f").arg(&self.0).status();
    }
}

#[test]
fn containerd_contract_through_the_fake_vm() {
    let ns = "contract";
    let ctrd = Containerd::start_linking(&fake_shim()).expect("containerd starts");
    // Fake shims outlive a failed assertion otherwise (nothing else would end them).
    let _reap = KillOnDrop(format!("-address {} ", ctrd.socket().display()));
    ctrd.import_busybox(ns).expect("image imports");
    let events = EventStream::subscribe(&ctrd, ns);

    // stdout and exact statuses.
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm"],
        &container_id("a"),
        &["echo", "hello", "world"],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("hello world\n".into(), Some(0)),
        "{}",
        text(&o)
    );
    let o = run_msb(&ctrd, ns, &["--rm"], &container_id("b"), &["exit", "3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // stdin through the FIFO, its end through CloseIO.
    let c = container_id("c");
    let o = ctrd.ctr_with_stdin(
        ns,
        &[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            msb_test_e2e::containerd::BUSYBOX,
            &c,
            "cat",
        ],
        b"some input\n".to_vec(),
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("some input\n".into(), Some(0)),
        "{}",
        text(&o)
    );

    // A detached container: exec, ps, pause and resume, SIGTERM, a kill after the end, delete.
    let d = container_id("d");
    let o = run_msb(&ctrd, ns, &["-d"], &d, &["sleep", "600"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = exec_in(&ctrd, ns, &d, "e1", &["exit", "5"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let o = exec_in(&ctrd, ns, &d, "e2", &["echo", "in-exec"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("in-exec\n".into(), Some(0)),
        "{}",
        text(&o)
    );
    let ps = stdout(&ctrd.ctr(ns, &["task", "ps", &d]));
    assert!(ps.lines().count() >= 2, "task ps lists the init: {ps}");
    assert!(ctrd.ctr(ns, &["task", "pause", &d]).status.success());
    assert_eq!(task_status(&ctrd, ns, &d).as_deref(), Some("PAUSED"));
    assert!(ctrd.ctr(ns, &["task", "resume", &d]).status.success());
    assert_eq!(task_status(&ctrd, ns, &d).as_deref(), Some("RUNNING"));
    assert!(ctrd
        .ctr(ns, &["task", "kill", "-s", "SIGTERM", &d])
        .status
        .success());
    assert!(eventually(10, || task_status(&ctrd, ns, &d).as_deref()
        == Some("STOPPED")));
    let o = ctrd.ctr(ns, &["task", "kill", "-s", "SIGTERM", &d]);
    assert!(
        !o.status.success(),
        "a kill after the end must fail: {}",
        text(&o)
    );
    let o = ctrd.ctr(ns, &["task", "delete", &d]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("exit code 143"),
        "{}",
        text(&o)
    );
    assert!(ctrd.ctr(ns, &["container", "rm", &d]).status.success());

    // The events of the detached container, in containerd's order.
    let mut seen = Vec::new();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        let line = events
            .wait_for(10, |l| l.contains(topic) && l.contains(&d))
            .unwrap_or_else(|| panic!("no {topic} for {d} after {seen:?}"));
        seen.push(topic);
        if seen.len() == 9 {
            assert!(line.contains("\"exit_status\":143"), "{line}");
        }
    }

    // A guest that stops answering (the fake's `hang`): SIGKILL of the init, which is its own
    // sandbox, kills the fake VMM after its 1 s kill grace, and containerd gets 137 and deletes
    // the task (before, Kill waited on the guest forever).
    let h = container_id("h");
    let o = run_msb(&ctrd, ns, &["-d"], &h, &["hang"]);
    assert!(o.status.success(), "{}", text(&o));
    let started = std::time::Instant::now();
    kill_and_remove(&ctrd, ns, &h);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Two containers of one pod: one shim process.
    let pod = format!("io.kubernetes.cri.sandbox-id={}", container_id("p1"));
    let (p1, p2) = (container_id("p1"), container_id("p2"));
    for id in [&p1, &p2] {
        let o = run_msb(
            &ctrd,
            ns,
            &["-d", "--annotation", &pod],
            id,
            &["sleep", "600"],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(shims_of(&ctrd), 1, "the pod's containers share one shim");
    for id in [&p2, &p1] {
        kill_and_remove(&ctrd, ns, id);
    }
    assert!(
        eventually(10, || shims_of(&ctrd) == 0),
        "a shim outlived its last container"
    );

    // A bad configuration fails Create naming the file and the key.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shim.toml");
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--runtime-config-path", cfg.to_str().unwrap()],
        &container_id("x"),
        &["echo"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1)
            && err.contains(&format!("parse config {}", cfg.display()))
            && err.contains("no_such_key"),
        "{}",
        text(&o)
    );
    assert_eq!(stdout(&ctrd.ctr(ns, &["container", "ls", "-q"])), "");
}
