//! A private containerd 1.6 for one test: its own config, root, state and socket under a short
//! directory in /run, our shim on its PATH through the `opt` plugin's `bin/`, stopped and removed
//! on drop.
//!
//! Starting containerd and building the busybox image are done by `hack/lib/containerd.sh`, the
//! same code the demo runs, so the demo and the tests cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

use crate::paths::{binary, workspace_root};

/// Name of the shim binary containerd looks up for `io.microsandbox.v1` and
/// `io.containerd.microsandbox.v1`.
pub const SHIM_BINARY: &str = "containerd-shim-microsandbox-v1";

/// The busybox image every containerd test imports.
pub const BUSYBOX: &str = "docker.io/library/msb-busybox:latest";

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    sock: PathBuf,
}

fn shell(dir: &Path, script: &str) -> Result<Output> {
    let lib = workspace_root().join("hack/lib/containerd.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; source {}; {script}",
            lib.display()
        ))
        .env("MSB_CTRD_DIR", dir)
        .env("MSB_CTRD_SOCK", dir.join("containerd.sock"))
        .output()
        .with_context(|| format!("running {script:?}"))?;
    if !out.status.success() {
        bail!(
            "{script:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl Containerd {
    /// Starts containerd with our shim binary on its PATH (linked there even before it is
    /// built: tests of the shim assert it exists with [`binary`]).
    pub fn start() -> Result<Self> {
        Self::start_linking(&crate::paths::profile_dir().join(SHIM_BINARY))
    }

    /// Starts containerd with `shim` linked into its PATH as [`SHIM_BINARY`] (benchmarks use the
    /// release build).
    pub fn start_linking(shim: &Path) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/run/msbt-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("opt/bin"))?;
        std::os::unix::fs::symlink(shim, dir.join("opt/bin").join(SHIM_BINARY))?;
        let ctrd = Containerd {
            sock: dir.join("containerd.sock"),
            dir,
        };
        shell(
            &ctrd.dir,
            &format!("ctrd_start {}", ctrd.dir.join("opt").display()),
        )?;
        Ok(ctrd)
    }

    /// Starts containerd after checking that the shim binary is built.
    pub fn start_with_shim() -> Result<Self> {
        binary(SHIM_BINARY);
        Self::start()
    }

    /// The directory holding config, root, state, socket and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports the busybox image into namespace `ns`.
    pub fn import_busybox(&self, ns: &str) -> Result<()> {
        shell(&self.dir, &format!("ctrd_import_busybox {ns} {BUSYBOX}")).map(drop)
    }

    /// Runs `ctr` against this containerd in namespace `ns`, killed after 120 s.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Output {
        self.ctr_command(ns, args).output().expect("ctr runs")
    }

    /// Like [`Containerd::ctr`], with `input` on ctr's stdin (then EOF).
    pub fn ctr_with_stdin(&self, ns: &str, args: &[&str], input: Vec<u8>) -> Output {
        let mut child = self
            .ctr_command(ns, args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ctr runs");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let feeder = std::thread::spawn(move || {
            // ctr may end without reading it all (a failure): that is for the caller to see.
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
        let out = child.wait_with_output().expect("ctr ends");
        let _ = feeder.join();
        out
    }

    fn ctr_command(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", "120", "ctr"])
            .arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(ns)
            .args(args);
        cmd
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// containerd's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = shell(&self.dir, "ctrd_stop");
        // containerd leaves its snapshot and shm mounts behind when killed: unmount them,
        // deepest first, before removing the directory.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = format!("{}/", self.dir.display());
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
