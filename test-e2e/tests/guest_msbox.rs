//! `msbox run` against real guests under QEMU: exit statuses, streams, the upper disk.

use std::process::Command;
use std::time::Duration;

use msb_test_e2e::guest::{assets, busybox_rootfs, kernel_release, msbox, tool};

/// A guest that has not finished by then is stuck (the timeout reports its console).
const T: Duration = Duration::from_secs(120);
/// For the 100 MiB stream: about 35 s here under TCG when alone, more than 120 s was seen on a
/// slower 2-core CI machine with a second guest running beside it.
const T_BULK: Duration = Duration::from_secs(360);

fn rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    busybox_rootfs(d.path());
    d
}

fn run(root: &std::path::Path, script: &str) -> msb_test_e2e::guest::Run {
    msbox(
        &["run", root.to_str().unwrap(), "--", "sh", "-c", script],
        None,
        T,
    )
}

#[test]
fn guest_kernel_and_pid_1() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    let r = run(root.path(), "uname -r; echo $$");
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).into_owned(), r.code),
        (format!("{}\n1\n", kernel_release()), 0),
        "{}",
        r.stderr
    );
    assert_ne!(
        kernel_release(),
        String::from_utf8_lossy(&tool(Command::new("uname").arg("-r")).stdout).trim()
    );
}

#[test]
fn exit_statuses() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    assert_eq!(run(root.path(), "exit 7").code, 7);
    // A process killed by a signal reports 128+signal.
    assert_eq!(run(root.path(), "sh -c 'kill -9 $$'; exit $?").code, 137);
    // The container's PID 1 ignores signals it has no handler for, even its own SIGKILL,
    // exactly as under runc (measured: `ctr run` with runc prints "survived", status 0).
    let r = run(root.path(), "kill -9 $$; echo survived");
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.code),
        ("survived\n", 0)
    );
    // PID 1 killed by the kernel (OOM past its memory limit) is 137.
    let r = msbox(
        &[
            "run",
            "--memory-limit",
            "32",
            root.path().to_str().unwrap(),
            "--",
            "tail",
            "/dev/zero",
        ],
        None,
        T,
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    let r = msbox(
        &[
            "run",
            root.path().to_str().unwrap(),
            "--",
            "no-such-program",
        ],
        None,
        T,
    );
    assert_eq!(r.code, 127);
    assert_eq!(
        r.stderr.trim(),
        "msbox: exec: \"no-such-program\": executable file not found in $PATH"
    );
}

#[test]
fn streams_are_exact() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    let r = run(root.path(), "echo out; echo err >&2");
    assert_eq!(
        (
            String::from_utf8_lossy(&r.stdout).as_ref(),
            r.stderr.as_str(),
            r.code
        ),
        ("out\n", "err\n", 0)
    );

    // 10 MiB of random bytes through cat, byte for byte.
    let data: Vec<u8> = {
        let mut f = std::fs::File::open("/dev/urandom").unwrap();
        let mut v = vec![0u8; 10 << 20];
        std::io::Read::read_exact(&mut f, &mut v).unwrap();
        v
    };
    let r = msbox(
        &["run", "-i", root.path().to_str().unwrap(), "--", "cat"],
        Some(&data),
        T,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.len(), data.len());
    assert!(r.stdout == data, "stdin came back altered");

    // 100 MiB on stdout.
    let r = msbox(
        &[
            "run",
            root.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "yes 0123456789abcdef | head -c 104857600",
        ],
        None,
        T_BULK,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.len(), 104_857_600);
    assert!(
        r.stdout
            .chunks(17)
            .all(|c| c == &b"0123456789abcdef\n"[..c.len()]),
        "stdout altered"
    );
}

#[test]
fn writes_land_in_the_upper_disk_only() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    let snapshot = || {
        let list = tool(
            Command::new("find")
                .arg(root.path())
                .args(["-printf", "%P %y %s %m %T@ %l\\n"]),
        )
        .stdout;
        let sums = tool(Command::new("sh").arg("-c").arg(format!(
            "cd {} && find . -type f | sort | xargs sha256sum",
            root.path().display()
        )))
        .stdout;
        let mut lines: Vec<String> = String::from_utf8_lossy(&list)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        (lines, String::from_utf8_lossy(&sums).into_owned())
    };
    let before = snapshot();
    let work = tempfile::tempdir().unwrap();
    let upper = work.path().join("upper.ext4");
    let r = msbox(
        &[
            "run",
            "--keep-upper",
            upper.to_str().unwrap(),
            "--upper-size",
            "64",
            root.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo hello-upper > /data.txt && rm /etc/group",
        ],
        None,
        T,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let cat = tool(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /upper/data.txt")
            .arg(&upper),
    );
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello-upper\n");
    // The deletion is an overlay whiteout in the upper, not a change of the source.
    let stat = tool(
        Command::new("debugfs")
            .arg("-R")
            .arg("stat /upper/etc/group")
            .arg(&upper),
    );
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("Type: character special"),
        "whiteout expected"
    );
    assert!(snapshot() == before, "the source directory changed");
    let fsck = tool(Command::new("e2fsck").arg("-fn").arg(&upper));
    assert!(
        fsck.status.success(),
        "upper not clean after shutdown: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// `/dev/pts/N` followed by the terminal's line end, N a number.
fn is_pts_line(out: &str) -> bool {
    out.strip_prefix("/dev/pts/")
        .and_then(|rest| rest.strip_suffix("\r\n"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn a_terminal_is_the_containers_own() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    // As under runc, the terminal comes from the container's own devpts instance, so its name
    // resolves inside the container (`ttyname()`); a terminal of the VM's devpts printed
    // "not a tty" with status 1.
    let r = msbox(
        &["run", "-t", root.path().to_str().unwrap(), "--", "tty"],
        None,
        T,
    );
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        is_pts_line(&out) && r.code == 0,
        "tty printed {out:?} with status {}: {}",
        r.code,
        r.stderr
    );
}

/// The guest's host name: 12 hex digits by default, as Docker's short container id, different
/// for each run; `--hostname` sets it; a bad one is refused before any VM starts.
#[test]
fn host_names() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    let names: Vec<String> = (0..2)
        .map(|_| {
            let r = run(root.path(), "hostname");
            assert_eq!(r.code, 0, "{}", r.stderr);
            String::from_utf8_lossy(&r.stdout).trim_end().to_owned()
        })
        .collect();
    for n in &names {
        assert!(
            n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit()),
            "{names:?}"
        );
    }
    assert_ne!(names[0], names[1]);
    let r = msbox(
        &[
            "run",
            "--hostname",
            "web-1",
            root.path().to_str().unwrap(),
            "--",
            "hostname",
        ],
        None,
        T,
    );
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.code),
        ("web-1\n", 0),
        "{}",
        r.stderr
    );
    let r = msbox(
        &[
            "run",
            "--hostname",
            "a_b",
            root.path().to_str().unwrap(),
            "--",
            "true",
        ],
        None,
        T,
    );
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("--hostname \"a_b\""), "{}", r.stderr);
}

/// The VM's loopback is up: a server on 127.0.0.1 answers a client in the same container (it
/// failed with "Network is unreachable" while agentd left `lo` down).
#[test]
fn loopback_is_up() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    let r = run(
        root.path(),
        "mkdir /tmp/www && echo hello >/tmp/www/index.html && httpd -p 127.0.0.1:8080 -h /tmp/www \
         && wget -qO- http://127.0.0.1:8080/index.html",
    );
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.code),
        ("hello\n", 0),
        "{}",
        r.stderr
    );
}

/// `msbox run -v` and `--env-file`: a host directory read and written, a read-only one refusing
/// writes, a variable from a file (a secret need not be on the command line).
#[test]
fn volumes_and_env_files() {
    let Some(_) = assets() else { return };
    let root = rootfs();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in"), "from the host\n").unwrap();
    let env = host.path().join("env");
    std::fs::write(&env, "# secrets\nTOKEN=s3cr3t\n").unwrap();
    let rw = format!("{}:/data", host.path().display());
    let ro = format!("{}:/ro:ro", host.path().display());
    let r = msbox(
        &[
            "run",
            "-v",
            &rw,
            "-v",
            &ro,
            "--env-file",
            env.to_str().unwrap(),
            root.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "cat /data/in; echo out >/data/out; echo $TOKEN; touch /ro/x 2>&1; echo $?",
        ],
        None,
        T,
    );
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.code),
        (
            "from the host\ns3cr3t\ntouch: /ro/x: Read-only file system\n1\n",
            0
        ),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("out")).unwrap(),
        "out\n"
    );
    assert!(!host.path().join("x").exists());
}
