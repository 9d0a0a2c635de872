//! A hostile guest through the real shim and a real VM (docs/SECURITY.md, point 11).
//!
//! The guest runs `agentd/hostile/main.rs` (`msb-hostile-agent`) instead of agentd: agentd until the
//! container's init has started, then one misbehaviour, named by the container id (an oversized
//! frame, garbage, a reply of the wrong type, forged events, a 4 MiB exit, endless output,
//! silence). It boots from an initramfs of its own, named in a shim config passed with
//! `ctr run --runtime-config-path`. For each case: `ctr run` ends within a bound with the exact
//! status the lie earns, the shim still serves the task verbs, teardown leaves nothing (VMM,
//! state files, mounts), and a normal container in another VM, started before the first case
//! and checked after the last, keeps running and ends with its own output and status.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use msb_test_e2e::containerd::{Containerd, BUSYBOX};
use msb_test_e2e::ctr::*;
use msb_test_e2e::guest::{assets, GuestSlot, SLOTS};
use msb_test_e2e::ids::container_id;
use msb_test_e2e::paths::{profile_dir, workspace_root};

/// The hostile containers' namespace (nothing else runs there: the leak checks see only them).
const NS: &str = "hostile";
/// The normal container's.
const VICTIM_NS: &str = "hostile-victim";

/// A `ctr run` of a hostile container that takes longer has hung: boot under TCG on a busy
/// machine, the shim's 60 s deadline for Start, and margin.
const RUN_BOUND: Duration = Duration::from_secs(100);

/// The shim's deadline for a guest that does not answer a SIGKILL (30 s), and margin.
const KILL_BOUND: Duration = Duration::from_secs(45);

/// The hostile agent as `./hack/test` builds it.
fn hostile_agent_binary() -> PathBuf {
    profile_dir()
        .parent()
        .expect("the profile dir lives in target/")
        .join("x86_64-unknown-linux-musl/release/msb-hostile-agent")
}

/// Builds the hostile initramfs in `target/hostile-guest` with `hack/guest-assets` (the kernel
/// files it needs copied from the shared assets, which stay untouched) and writes a shim config
/// naming it; returns the config's path.
fn hostile_config(agent: &Path) -> PathBuf {
    let shared = msb_runtime::GuestAssets::dir();
    let dir = profile_dir().parent().unwrap().join("hostile-guest");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["kernel.release", "kernel.version"] {
        std::fs::copy(shared.join(f), dir.join(f)).unwrap();
    }
    let _ = std::fs::remove_dir_all(dir.join("modules"));
    let o = Command::new("cp")
        .arg("-r")
        .arg(shared.join("modules"))
        .arg(dir.join("modules"))
        .output()
        .unwrap();
    assert!(o.status.success(), "copy the modules: {}", text(&o));
    let o = Command::new(workspace_root().join("hack/guest-assets"))
        .arg("initramfs")
        .arg("--agentd")
        .arg(agent)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "hack/guest-assets: {}", text(&o));
    let config = dir.join("shim.toml");
    std::fs::write(
        &config,
        format!(
            "backend = \"qemu\"\nkernel = \"{}\"\ninitramfs = \"{}\"\n",
            shared.join("vmlinux").display(),
            dir.join("initramfs.cpio").display()
        ),
    )
    .unwrap();
    config
}

/// `ctr ARGS` in `ns`, killed after `bound`.
fn ctr(ctrd: &Containerd, ns: &str, bound: Duration, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(bound.as_secs().to_string())
        .arg(ctrd.ctr_binary())
        .arg("--address")
        .arg(ctrd.socket())
        .args(["--namespace", ns])
        .args(args);
    cmd
}

/// The normal container: in its own VM under the normal config, attached, until `/tmp/done`
/// appears in it. Removed if the test fails.
struct Victim<'a> {
    ctrd: &'a Containerd,
    id: String,
    run: Option<Child>,
}

impl<'a> Victim<'a> {
    fn start(ctrd: &'a Containerd) -> Victim<'a> {
        let id = container_id("victim");
        let script = "echo up; while [ ! -e /tmp/done ]; do sleep 1; done; echo done; exit 3";
        let run = ctr(
            ctrd,
            VICTIM_NS,
            Duration::from_secs(900),
            &[
                "run",
                "--runtime",
                RUNTIME,
                BUSYBOX,
                &id,
                "sh",
                "-c",
                script,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let victim = Victim {
            ctrd,
            id,
            run: Some(run),
        };
        assert!(
            eventually(120, || task_status(ctrd, VICTIM_NS, &victim.id).as_deref()
                == Some("RUNNING")),
            "the victim did not start\n{}",
            tail(&ctrd.log(), 40)
        );
        victim
    }

    fn assert_running(&self, after: &str) {
        assert_eq!(
            task_status(self.ctrd, VICTIM_NS, &self.id).as_deref(),
            Some("RUNNING"),
            "the victim after {after}"
        );
    }

    /// Ends it through an exec and checks its whole output and status.
    fn finish(mut self) {
        let ctrd = self.ctrd;
        let o = exec_in(ctrd, VICTIM_NS, &self.id, "fin", &["touch", "/tmp/done"]);
        assert!(o.status.success(), "exec in the victim: {}", text(&o));
        let o = self.run.take().unwrap().wait_with_output().unwrap();
        assert_eq!(
            (stdout(&o), o.status.code()),
            ("up\ndone\n".into(), Some(3)),
            "the victim: {}",
            text(&o)
        );
        let o = ctrd.ctr(VICTIM_NS, &["container", "rm", &self.id]);
        assert!(o.status.success(), "{}", text(&o));
        assert_nothing_left(VICTIM_NS, || ctrd.log());
    }
}

impl Drop for Victim<'_> {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            let _ = self
                .ctrd
                .ctr(VICTIM_NS, &["task", "delete", "--force", &self.id]);
            let _ = self.ctrd.ctr(VICTIM_NS, &["container", "rm", &self.id]);
            let _ = run.kill();
            let _ = run.wait();
        }
    }
}

/// A hostile container's id: the case word the agent picks its misbehaviour by, then hex.
fn hostile_id(case: &str) -> String {
    format!("{case}-{}", &container_id(case)[..40])
}

/// `ctr run` flags of every hostile container.
fn hostile_flags<'a>(config: &'a str, victim: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        config,
        "--env",
        victim,
    ]
}

/// Runs hostile container `id` attached with `cmd`; its output and status, within
/// [`RUN_BOUND`].
fn run_attached(ctrd: &Containerd, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
    let mut args = flags.to_vec();
    args.extend([BUSYBOX, id]);
    args.extend(cmd);
    let t = Instant::now();
    let o = ctr(ctrd, NS, RUN_BOUND, &args).output().unwrap();
    eprintln!("{id}: ctr run ended after {:?}", t.elapsed());
    o
}

/// Starts hostile container `id` detached with `sleep 600`.
fn run_detached(ctrd: &Containerd, flags: &[&str], id: &str) {
    let mut args = flags.to_vec();
    args.extend(["-d", BUSYBOX, id, "sleep", "600"]);
    let o = ctr(ctrd, NS, RUN_BOUND, &args).output().unwrap();
    assert!(o.status.success(), "{id}: {}", text(&o));
}

/// SIGKILLs detached container `id`: stopped within [`KILL_BOUND`].
fn kill(ctrd: &Containerd, id: &str) {
    let t = Instant::now();
    let o = ctrd.ctr(NS, &["task", "kill", "-s", "SIGKILL", id]);
    assert!(o.status.success(), "kill {id}: {}", text(&o));
    assert!(
        eventually(KILL_BOUND.as_secs(), || task_status(ctrd, NS, id)
            .as_deref()
            == Some("STOPPED")),
        "{id} did not stop within {KILL_BOUND:?}\n{}",
        tail(&ctrd.log(), 40)
    );
    eprintln!("{id}: stopped {:?} after SIGKILL", t.elapsed());
}

/// The shim of the hostile namespace, if one runs.
fn shim_pid() -> Option<i32> {
    let ps = Command::new("ps").args(["-eo", "pid,args"]).output().ok()?;
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .find(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            l.contains("containerd-shim-microsandbox-v1")
                && words.windows(2).any(|w| w == ["-namespace", NS])
        })
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
}

/// The peak resident memory of `pid` so far, KiB.
fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Processes whose command line mentions `needle`, other than ps itself.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.starts_with("ps "))
        .map(str::to_owned)
        .collect()
}

/// After an attached `ctr run`, which waits for the task and deletes it (both served by the
/// shim): `ctr task ls` no longer lists it, `ctr container rm` removes the container, and
/// nothing of it is left.
fn assert_run_cleaned_up(ctrd: &Containerd, id: &str) {
    let o = ctrd.ctr(NS, &["task", "ls"]);
    assert!(o.status.success(), "ctr task ls: {}", text(&o));
    assert_eq!(task_status(ctrd, NS, id), None, "{id}: ctr task ls");
    remove(ctrd, id);
}

/// A stopped detached task: its shim still serves it (`ctr task ls` shows it stopped, `ctr task
/// delete` reports `code`), `ctr container rm` removes it, and nothing of it is left.
fn assert_deleted(ctrd: &Containerd, id: &str, code: i32) {
    assert!(shim_pid().is_some(), "{id}: the shim is gone before Delete");
    assert_eq!(
        task_status(ctrd, NS, id).as_deref(),
        Some("STOPPED"),
        "{id}: ctr task ls"
    );
    let o = ctrd.ctr(NS, &["task", "delete", id]);
    assert!(o.status.success(), "delete {id}: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("exit code {code}")),
        "ctr task delete {id} does not report {code}: {}",
        text(&o)
    );
    remove(ctrd, id);
}

/// `ctr container rm`, then no VMM, virtiofsd, shim, state file or mount of `id` is left.
fn remove(ctrd: &Containerd, id: &str) {
    let o = ctrd.ctr(NS, &["container", "rm", id]);
    assert!(o.status.success(), "rm {id}: {}", text(&o));
    assert_nothing_left(NS, || ctrd.log());
    assert!(
        eventually(20, || processes_mentioning(id).is_empty()),
        "{id}: processes left: {:?}",
        processes_mentioning(id)
    );
    assert!(
        eventually(20, || shim_pid().is_none()),
        "{id}: the shim did not exit"
    );
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(id))
        .map(str::to_owned)
        .collect();
    assert!(mounts.is_empty(), "{id}: mounts left: {mounts:?}");
}

/// Removes container `id` of `ns` if the test fails while it exists, so that a failure leaves
/// no VM running (the shim kills a VMM that does not answer within its deadline).
struct RemoveOnPanic<'a> {
    ctrd: &'a Containerd,
    ns: &'static str,
    id: String,
}

impl Drop for RemoveOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .ctrd
                .ctr(self.ns, &["task", "delete", "--force", &self.id]);
            let _ = self.ctrd.ctr(self.ns, &["container", "rm", &self.id]);
        }
    }
}

/// Each case run attached: its script, the output and status the lie earns, and what the
/// shim logs about it (so a case whose lie never reached the host cannot pass). `flood` and
/// `silent` run detached and are killed instead (see the test).
const ATTACHED: &[(&str, &str, &str, i32, &str)] = &[
    // Frames that do not decode, or of a type nobody asked for on id 0, are dropped: the
    // session goes on to its real end.
    (
        "garbage",
        "sleep 2; echo real; exit 5",
        "real\n",
        5,
        "dropping a frame from the guest: frame 0: message type core.exec.stdout requires flags \
         none but carries terminal",
    ),
    // Exits and output on ids never opened are dropped; OOM events naming a container of
    // another pod (the victim) or none are dropped.
    (
        "forged",
        "sleep 2; echo real; exit 5",
        "real\n",
        5,
        "OOM event for a container not of this pod: dropped",
    ),
    // A terminal reply of another type ends that session as an error: to the host its process
    // is lost, as if the VM died under it (137). The shim logs nothing about it.
    ("wrongtype", "sleep 600", "", 137, ""),
    // A frame over the bound is a framing error: the connection closes, every process of the
    // VM is lost (137), and the VMM is stopped without the guest's help.
    (
        "oversized",
        "sleep 600",
        "",
        137,
        "frame length 4194305 exceeds the maximum of 4194304 bytes",
    ),
    // A 4 MiB exit frame is decoded within the bound and its code taken; what follows on the
    // finished session (output, a second start and exit) is dropped.
    ("hugeexit", "sleep 600", "", 42, ""),
];

/// containerd's log (where the shim logs) has a line with `needle` (each case's is its own).
fn assert_logged(ctrd: &Containerd, id: &str, needle: &str) {
    assert!(
        ctrd.log().contains(needle),
        "{id}: the shim did not log {needle:?}\n{}",
        tail(&ctrd.log(), 40)
    );
}

#[test]
fn a_hostile_guest_costs_only_its_own_pod() {
    let Some(_) = assets() else { return };
    let agent = hostile_agent_binary();
    if !agent.is_file() {
        msb_test_e2e::require(format!(
            "the hostile agent is not built at {}: cargo build --release --target \
             x86_64-unknown-linux-musl -p msb-agentd --features hostile-agent --bin msb-hostile-agent (./hack/test does)",
            agent.display()
        ));
        return;
    }
    let config = hostile_config(&agent);
    let config = config.to_str().unwrap();
    let ctrd = Containerd::start_with_shim().expect("containerd starts");
    ctrd.import_busybox(NS).expect("image imports");
    ctrd.import_busybox(VICTIM_NS).expect("image imports");
    // Two guests at once: the victim's and one hostile one.
    let _slots: Vec<GuestSlot> = (0..SLOTS).map(|_| GuestSlot::acquire()).collect();
    let events = EventStream::subscribe(&ctrd, NS);
    let victim = Victim::start(&ctrd);
    let victim_env = format!("HOSTILE_VICTIM={}", victim.id);
    let flags = hostile_flags(config, &victim_env);

    for &(case, script, want_out, want_code, logged) in ATTACHED {
        let id = hostile_id(case);
        let _guard = RemoveOnPanic {
            ctrd: &ctrd,
            ns: NS,
            id: id.clone(),
        };
        let o = run_attached(&ctrd, &flags, &id, &["sh", "-c", script]);
        assert_eq!(
            (stdout(&o), o.status.code()),
            (want_out.to_owned(), Some(want_code)),
            "{case}: {}\n{}",
            text(&o),
            tail(&ctrd.log(), 40)
        );
        if !logged.is_empty() {
            assert_logged(&ctrd, &id, logged);
        }
        assert_run_cleaned_up(&ctrd, &id);
        victim.assert_running(case);
    }

    // Endless output that nobody reads (`-d` leaves the FIFOs unread): past the shim's 5 s of
    // patience it is discarded, the shim's memory stays bounded, and SIGKILL still ends the
    // process with 137.
    let id = hostile_id("flood");
    let _guard = RemoveOnPanic {
        ctrd: &ctrd,
        ns: NS,
        id: id.clone(),
    };
    run_detached(&ctrd, &flags, &id);
    let shim = shim_pid().expect("the flood's shim");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(task_status(&ctrd, NS, &id).as_deref(), Some("RUNNING"));
    assert_logged(&ctrd, &id, "output not read for 5s: discarding it");
    kill(&ctrd, &id);
    let peak = peak_rss_kib(shim).expect("the shim's memory");
    assert!(
        peak < 256 << 10,
        "flood: the shim's peak resident set: {peak} KiB"
    );
    eprintln!("flood: the shim's peak resident set {} MiB", peak >> 10);
    assert_deleted(&ctrd, &id, 137);
    victim.assert_running("flood");

    // A guest that goes silent after Start: SIGKILL is not answered, the shim kills the VMM at
    // its deadline and reports 137.
    let id = hostile_id("silent");
    let _guard = RemoveOnPanic {
        ctrd: &ctrd,
        ns: NS,
        id: id.clone(),
    };
    run_detached(&ctrd, &flags, &id);
    kill(&ctrd, &id);
    assert_logged(
        &ctrd,
        &id,
        "no exit of the SIGKILLed sandbox init within 30s: killing the VMM",
    );
    assert_deleted(&ctrd, &id, 137);
    victim.assert_running("silent");

    // Nothing reached containerd for the victim, and no forged OOM for anyone.
    let leaked = events.wait_for_ms(1000, |l| {
        l.contains("/tasks/oom") || (l.contains("/tasks/exit") && l.contains(&victim.id))
    });
    assert_eq!(leaked, None, "a forged event reached containerd");
    victim.finish();
}
