//! What the containerd tests check with, shared by every suite that drives `ctr`: the shim's
//! runtime name, `ctr` verbs with our runtime, and the leak checks (no VMM, no state file).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::containerd::{Containerd, BUSYBOX};

/// The shim's state root (the default `state_dir`).
pub const STATE: &str = "/var/lib/microsandbox/shim";

/// The runtime name Docker and nerdctl use (containerd maps it to our binary, as it does
/// `io.microsandbox.v1`).
pub const RUNTIME: &str = "io.containerd.microsandbox.v1";

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every 100 ms until it holds or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// VMM processes whose command line mentions `needle`.
pub fn vmms_mentioning(needle: &str) -> usize {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.starts_with("qemu-system") && l.contains(needle))
        .count()
}

/// Files (not directories) under a namespace's shim state.
pub fn state_files(ns: &str) -> Vec<String> {
    let out = Command::new("find")
        .arg(Path::new(STATE).join(ns))
        .args(["-type", "f"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// No VMM of namespace `ns` is left and no file in its shim state (within 20 s each: a client
/// such as Docker does not wait for the task's Delete, and the shim removes the VM's directory
/// only after the VMM and its virtiofsd have exited).
pub fn assert_nothing_left(ns: &str, log: impl Fn() -> String) {
    assert!(
        eventually(20, || vmms_mentioning(&format!("/{ns}/")) == 0),
        "VMM left in namespace {ns}\n{}",
        tail(&log(), 40)
    );
    eventually(20, || state_files(ns).is_empty());
    assert_eq!(
        state_files(ns),
        Vec::<String>::new(),
        "files left in the shim state"
    );
}

pub fn task_status(ctrd: &Containerd, ns: &str, id: &str) -> Option<String> {
    let ls = stdout(&ctrd.ctr(ns, &["task", "ls"]));
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_owned)
}

/// `ctr task exec --exec-id EXEC_ID ID CMD...`.
pub fn exec_in(ctrd: &Containerd, ns: &str, id: &str, exec_id: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
    args.extend(cmd);
    ctrd.ctr(ns, &args)
}

/// SIGKILLs a detached container, waits until it stopped, checks that `ctr task delete` reports
/// 137, removes the container.
pub fn kill_and_remove(ctrd: &Containerd, ns: &str, id: &str) {
    let o = ctrd.ctr(ns, &["task", "kill", "-s", "SIGKILL", id]);
    assert!(o.status.success(), "kill {id}: {}", text(&o));
    assert!(
        eventually(30, || task_status(ctrd, ns, id).as_deref()
            == Some("STOPPED")),
        "{id} did not stop"
    );
    let o = ctrd.ctr(ns, &["task", "delete", id]);
    assert!(o.status.success(), "delete {id}: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("exit code 137"),
        "ctr task delete {id} does not report 137: {}",
        text(&o)
    );
    let o = ctrd.ctr(ns, &["container", "rm", id]);
    assert!(o.status.success(), "rm {id}: {}", text(&o));
}

/// `ctr run --runtime io.containerd.microsandbox.v1 FLAGS... BUSYBOX ID CMD...` in namespace `ns`.
pub fn run_msb(ctrd: &Containerd, ns: &str, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["run", "--runtime", RUNTIME];
    args.extend(flags);
    args.extend([BUSYBOX, id]);
    args.extend(cmd);
    ctrd.ctr(ns, &args)
}

/// `ctr events`, read line by line on a thread.
#[derive(Debug)]
pub struct EventStream {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl EventStream {
    /// Starts `ctr events` and returns once it demonstrably receives events: a namespace label
    /// change is made until its `/namespaces/update` shows up (ctr subscribes some time after it
    /// starts; an event published before that is lost).
    pub fn subscribe(ctrd: &Containerd, ns: &str) -> EventStream {
        let mut child = Command::new(ctrd.ctr_binary())
            .arg("--address")
            .arg(ctrd.socket())
            .arg("events")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let events = EventStream { child, lines };
        for i in 0..100 {
            let _ = ctrd.ctr(ns, &["namespaces", "label", ns, &format!("probe={i}")]);
            if events
                .wait_for_ms(200, |l| l.contains("/namespaces/update"))
                .is_some()
            {
                return events;
            }
        }
        panic!("ctr events never showed a namespace update");
    }

    pub fn wait_for_ms(&self, ms: u64, f: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if f(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// The first line within `secs` that satisfies `f`.
    pub fn wait_for(&self, secs: u64, f: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_ms(secs * 1000, f)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
