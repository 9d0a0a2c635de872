//! The shim under newer containerd and Docker than Debian 12's containerd 1.6 (which
//! `ctrd_shim.rs` covers in depth): containerd 1.7 (Debian 13), containerd 2.1 (Debian sid) and
//! Docker 26 (Debian 13) over each of them (1.6, 1.7, 2.1), all unpacked from Debian's packages by
//! `hack/lib/ctrd-versions.sh` (`./hack/test` runs it), never installed.
//!
//! For each containerd: `ctr run --rm` (exact output and status), a detached container with
//! `ctr task exec`, `ctr task kill -s SIGKILL` (137 at `ctr task delete`), and a two-container
//! pod in one VM; afterwards no VMM and no file in the shim state. For Docker: `docker run`,
//! `docker exec`, `docker kill`, `docker stop` of a process that ignores SIGTERM, `docker rm`,
//! with Docker's own ids and its overlay2 root passed as a directory.
//!
//! A test skips (saying why) when the guest assets or a download are missing, except under
//! `MSB_REQUIRE_GUESTS=1` (`.ci/run` sets it), where it fails.

use std::process::Output;
use std::time::{Duration, Instant};

use msb_test_e2e::containerd::{fetched_or_skip, Containerd, Docker, DockerBinaries, Version};
use msb_test_e2e::ctr::*;
use msb_test_e2e::guest::{assets, kernel_release, GuestSlot};
use msb_test_e2e::ids::container_id;

/// Guest assets, then containerd `version` (started, busybox imported into `ns`); `None` when
/// the test is skipped.
fn setup(version: Version, ns: &str) -> Option<Containerd> {
    assets()?;
    fetched_or_skip(version.check())?;
    let ctrd = Containerd::start_version(version).expect("containerd starts");
    ctrd.import_busybox(ns).expect("image imports");
    Some(ctrd)
}

/// Everything one containerd version is tested with.
fn containerd_version(version: Version, ns: &str) {
    let Some(ctrd) = setup(version, ns) else {
        return;
    };
    let v = ctrd.ctr(ns, &["version"]);
    assert!(
        stdout(&v).contains(&format!("Version:  {}.", version.number())),
        "not containerd {}: {}",
        version.number(),
        text(&v)
    );
    let (r1, d1, e1, p1, p2, pod) = (
        container_id("r1"),
        container_id("d1"),
        container_id("e1"),
        container_id("p1"),
        container_id("p2"),
        container_id("pod"),
    );
    let _slot = GuestSlot::acquire();

    // ctr run --rm: output and exit status exactly; the kernel is the guest's.
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm"],
        &r1,
        &["sh", "-c", "echo out; uname -r; exit 3"],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        (format!("out\n{}\n", kernel_release()), Some(3)),
        "{}\n{}",
        text(&o),
        tail(&ctrd.log(), 40)
    );

    // Detached: exec (output, status), SIGKILL, 137 at delete.
    let o = run_msb(&ctrd, ns, &["-d"], &d1, &["sleep", "600"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        tail(&ctrd.log(), 40)
    );
    assert_eq!(task_status(&ctrd, ns, &d1).as_deref(), Some("RUNNING"));
    let o = exec_in(&ctrd, ns, &d1, &e1, &["sh", "-c", "echo in-exec; exit 5"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("in-exec\n".into(), Some(5)),
        "{}\n{}",
        text(&o),
        tail(&ctrd.log(), 40)
    );
    kill_and_remove(&ctrd, ns, &d1);
    assert_eq!(stdout(&ctrd.ctr(ns, &["container", "ls", "-q"])), "");

    // A pod: two containers with one sandbox id share one VM (one boot id).
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    let o = run_msb(
        &ctrd,
        ns,
        &["-d", "--annotation", &annotation],
        &p1,
        &["sleep", "600"],
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        tail(&ctrd.log(), 40)
    );
    let o = exec_in(
        &ctrd,
        ns,
        &p1,
        "b1",
        &["cat", "/proc/sys/kernel/random/boot_id"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let first = stdout(&o);
    assert_eq!(first.trim().len(), 36, "a boot id: {first:?}");
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--annotation", &annotation],
        &p2,
        &["sh", "-c", "cat /proc/sys/kernel/random/boot_id; echo $$"],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        (format!("{first}1\n"), Some(0)),
        "{}\n{}",
        text(&o),
        tail(&ctrd.log(), 40)
    );
    assert_eq!(vmms_mentioning(&format!("/{ns}/")), 1, "one VM for the pod");
    kill_and_remove(&ctrd, ns, &p1);

    assert_nothing_left(ns, || ctrd.log());
    assert_eq!(stdout(&ctrd.ctr(ns, &["container", "ls", "-q"])), "");
}

#[test]
fn containerd_1_7() {
    containerd_version(Version::V1_7, "v17");
}

#[test]
fn containerd_2_1() {
    containerd_version(Version::V2_1, "v21");
}

/// A Docker container id: 64 hex characters on a line.
fn docker_id(o: &Output) -> String {
    let id = stdout(o).trim().to_owned();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a container id: {}",
        text(o)
    );
    id
}

#[test]
fn docker_26_over_containerd_1_6() {
    docker_over(Version::System);
}

#[test]
fn docker_26_over_containerd_1_7() {
    docker_over(Version::V1_7);
}

#[test]
fn docker_26_over_containerd_2_1() {
    docker_over(Version::V2_1);
}

/// Docker 26 with its own dockerd over containerd `version`: run, exec, kill, stop, rm.
fn docker_over(version: Version) {
    let ns = "docker";
    const IMAGE: &str = "msb-busybox:latest";
    if assets().is_none() {
        return;
    }
    let Some(()) = fetched_or_skip(version.check()) else {
        return;
    };
    let Some(bins) = fetched_or_skip(DockerBinaries::find()) else {
        return;
    };
    let ctrd = Containerd::start_version(version).expect("containerd starts");
    let docker = Docker::start(&ctrd, bins, ns).expect("dockerd starts");
    docker.import_busybox(IMAGE).expect("docker import");
    let logs = || {
        format!(
            "dockerd:\n{}\ncontainerd:\n{}",
            tail(&docker.log(), 20),
            tail(&ctrd.log(), 40)
        )
    };
    let run = |flags: &[&str], cmd: &[&str]| {
        let mut args = vec!["run", "--runtime", RUNTIME, "--network", "none"];
        args.extend(flags);
        args.push(IMAGE);
        args.extend(cmd);
        docker.docker(&args)
    };
    let _slot = GuestSlot::acquire();

    // docker run: output and status exactly, from the guest's kernel.
    let o = run(
        &["--name", "r1"],
        &["sh", "-c", "echo out; uname -r; exit 7"],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        (format!("out\n{}\n", kernel_release()), Some(7)),
        "{}\n{}",
        text(&o),
        logs()
    );
    let o = docker.docker(&["inspect", "-f", "{{.State.ExitCode}}", "r1"]);
    assert_eq!(stdout(&o), "7\n", "{}", text(&o));
    let o = docker.docker(&["rm", "r1"]);
    assert!(o.status.success(), "{}", text(&o));

    // Detached: exec, then docker kill (SIGKILL: 137 from wait and inspect), rm.
    let id = docker_id(&run(&["-d"], &["sleep", "600"]));
    let o = docker.docker(&["exec", &id, "sh", "-c", "echo in-exec; exit 5"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("in-exec\n".into(), Some(5)),
        "{}\n{}",
        text(&o),
        logs()
    );
    let o = docker.docker(&["kill", &id]);
    assert!(o.status.success(), "{}\n{}", text(&o), logs());
    let o = docker.docker(&["wait", &id]);
    assert_eq!(stdout(&o), "137\n", "{}\n{}", text(&o), logs());
    let o = docker.docker(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}} {{.State.Status}}",
        &id,
    ]);
    assert_eq!(stdout(&o), "137 exited\n", "{}", text(&o));
    let o = docker.docker(&["rm", &id]);
    assert!(o.status.success(), "{}\n{}", text(&o), logs());

    // docker stop -t 2 of a process that catches SIGTERM and carries on: SIGTERM arrives (the
    // trap says so), SIGKILL follows after the 2 s, 137.
    let id = docker_id(&run(
        &["-d"],
        &[
            "sh",
            "-c",
            "trap 'echo got-TERM' TERM; echo ready; while :; do sleep 0.2; done",
        ],
    ));
    assert!(
        eventually(30, || stdout(&docker.docker(&["logs", &id])) == "ready\n"),
        "{}",
        logs()
    );
    let started = Instant::now();
    let o = docker.docker(&["stop", "-t", "2", &id]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}\n{}", text(&o), logs());
    assert!(
        took >= Duration::from_secs(2),
        "docker stop -t 2 returned after {took:?}"
    );
    let o = docker.docker(&["wait", &id]);
    assert_eq!(stdout(&o), "137\n", "{}\n{}", text(&o), logs());
    let o = docker.docker(&["logs", &id]);
    assert_eq!(stdout(&o), "ready\ngot-TERM\n", "{}", text(&o));
    let o = docker.docker(&["rm", &id]);
    assert!(o.status.success(), "{}\n{}", text(&o), logs());

    let o = docker.docker(&["ps", "-aq"]);
    assert_eq!(stdout(&o), "", "{}", text(&o));
    assert_nothing_left(ns, logs);
}
