//! A private containerd for one test: its own config, root, state and socket under a short
//! directory in /run, our shim on its PATH through the `opt` plugin's `bin/`, stopped and removed
//! on drop. Debian 12's containerd 1.6 by default; [`Version`] picks a newer one unpacked by
//! `hack/lib/ctrd-versions.sh` (1.7 from Debian 13, 2.1 from sid), and [`Docker`] runs a private
//! dockerd (Docker 26, Debian 13) over such a containerd.
//!
//! Starting containerd (its config for each version) and building the busybox image are done by
//! `hack/lib/containerd.sh`, the same code the demo runs, so the demo and the tests cannot drift
//! apart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::paths::{binary, workspace_root};

/// Name of the shim binary containerd looks up for `io.microsandbox.v1` and
/// `io.containerd.microsandbox.v1`.
pub const SHIM_BINARY: &str = "containerd-shim-microsandbox-v1";

/// The busybox image every containerd test imports.
pub const BUSYBOX: &str = "docker.io/library/msb-busybox:latest";

/// The pause image of CRI pods (`sandbox_image`, `$MSB_CTRD_PAUSE` in `hack/lib/containerd.sh`):
/// the busybox layer with entrypoint `tail -f /dev/null` (not `sleep`: critest looks for a
/// left-over `sleep` in the PID namespace containers share with the sandbox by default).
pub const PAUSE: &str = "docker.io/library/msb-pause:latest";

/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Where `hack/lib/ctrd-versions.sh` unpacks newer containerd and Docker packages:
/// `$MSB_CTRD_CACHE`, by default `/var/cache/microsandbox/ctrd`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MSB_CTRD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/microsandbox/ctrd"))
}

/// Which containerd a test starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Debian 12's containerd 1.6 (the `containerd` and `ctr` on PATH).
    System,
    /// containerd 1.7 from Debian 13 ("trixie"), unpacked into [`cache_dir`]`/1.7`.
    V1_7,
    /// containerd 2.1 from Debian sid, unpacked into [`cache_dir`]`/2.1`.
    V2_1,
}

impl Version {
    /// The major.minor version, as `containerd --version` reports it.
    pub fn number(self) -> &'static str {
        match self {
            Version::System => "1.6",
            Version::V1_7 => "1.7",
            Version::V2_1 => "2.1",
        }
    }

    /// The directory holding this version's `containerd` and `ctr`; `None` for the ones on PATH.
    pub fn bin_dir(self) -> Option<PathBuf> {
        match self {
            Version::System => None,
            v => Some(cache_dir().join(v.number()).join("root/usr/bin")),
        }
    }

    /// Whether this version is there to run; otherwise why not and how to get it.
    pub fn check(self) -> std::result::Result<(), String> {
        match self.bin_dir() {
            None => Ok(()),
            Some(bin) => unpacked(
                &bin.join("containerd"),
                &format!("containerd {}", self.number()),
            ),
        }
    }

    fn ctr(self) -> PathBuf {
        self.bin_dir()
            .map_or_else(|| PathBuf::from("ctr"), |d| d.join("ctr"))
    }
}

fn unpacked(path: &Path, what: &str) -> std::result::Result<(), String> {
    if path.is_file() {
        return Ok(());
    }
    Err(format!(
        "{what} is not unpacked at {}: run `bash -c 'source hack/lib/ctrd-versions.sh; \
         ctrd_versions_fetch'` (./hack/test does)",
        path.display()
    ))
}

/// `Some(value)` when a newer containerd or Docker is there; otherwise [`crate::require`]: a
/// failure under `MSB_REQUIRE_GUESTS=1` (CI fetches them: missing, they are a broken set-up),
/// elsewhere a printed skip and `None`.
pub fn fetched_or_skip<T>(found: std::result::Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(reason) => {
            crate::require(reason);
            None
        }
    }
}

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    sock: PathBuf,
    version: Version,
}

/// `bash -c SCRIPT` with `hack/lib/containerd.sh` sourced, for the containerd in `dir`.
fn shell_command(dir: &Path, version: Version, script: &str) -> Command {
    let lib = workspace_root().join("hack/lib/containerd.sh");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "set -euo pipefail; source {}; {script}",
            lib.display()
        ))
        .env("MSB_CTRD_DIR", dir)
        .env("MSB_CTRD_SOCK", dir.join("containerd.sock"));
    match version.bin_dir() {
        Some(bin) => cmd.env("MSB_CTRD_BIN", bin),
        None => cmd.env_remove("MSB_CTRD_BIN"),
    };
    cmd
}

fn shell(dir: &Path, version: Version, script: &str) -> Result<Output> {
    let out = shell_command(dir, version, script)
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
        Self::start_version_linking(Version::System, shim)
    }

    /// Starts containerd `version` with the shim on its PATH, after checking that the shim
    /// binary is built (and that `version` is unpacked: see [`Version::check`]).
    pub fn start_version(version: Version) -> Result<Self> {
        binary(SHIM_BINARY);
        if let Err(e) = version.check() {
            bail!(e);
        }
        Self::start_version_linking(version, &crate::paths::profile_dir().join(SHIM_BINARY))
    }

    /// Starts containerd `version` with `shim` linked into its PATH as [`SHIM_BINARY`].
    pub fn start_version_linking(version: Version, shim: &Path) -> Result<Self> {
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
            version,
        };
        shell(
            &ctrd.dir,
            version,
            &format!("ctrd_start {}", ctrd.dir.join("opt").display()),
        )?;
        Ok(ctrd)
    }

    /// containerd `version` set up for CRI clients, one per test process, shared by all its
    /// tests: `ctrd_start OPT cri` (runtime handlers `runc` and `microsandbox`, a loopback-only
    /// CNI network, see `hack/lib/containerd.sh`) with [`BUSYBOX`] and the pause image
    /// [`PAUSE`] in namespace [`CRI_NAMESPACE`]. The first call starts it; a failed start is
    /// every caller's error.
    ///
    /// It is never dropped: a keeper shell started it and waits on a pipe from this process,
    /// so when the process ends, however it ends (a panic, a signal), the keeper stops
    /// containerd, unmounts what is left under its directory and removes it. Tests share it, so
    /// each must look only at its own pods.
    pub fn shared_cri(version: Version) -> std::result::Result<&'static Containerd, String> {
        binary(SHIM_BINARY);
        Self::shared_cri_linking(version, &crate::paths::profile_dir().join(SHIM_BINARY))
    }

    /// [`Containerd::shared_cri`] with `shim` linked into its PATH as [`SHIM_BINARY`]
    /// (benchmarks use the release build). The first call's `shim` is the one every caller
    /// gets.
    pub fn shared_cri_linking(
        version: Version,
        shim: &Path,
    ) -> std::result::Result<&'static Containerd, String> {
        static SHARED: std::sync::OnceLock<std::result::Result<SharedCri, String>> =
            std::sync::OnceLock::new();
        let shared = SHARED
            .get_or_init(|| SharedCri::start(version, shim).map_err(|e| format!("{e:#}")))
            .as_ref()?;
        if shared.ctrd.version != version {
            return Err(format!(
                "this process shares containerd {} already, not {}",
                shared.ctrd.version.number(),
                version.number()
            ));
        }
        Ok(&shared.ctrd)
    }

    /// Which containerd this is.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Its `ctr` (a path, or `ctr` to look up on PATH).
    pub fn ctr_binary(&self) -> PathBuf {
        self.version.ctr()
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
        shell(
            &self.dir,
            self.version,
            &format!("ctrd_import_busybox {ns} {BUSYBOX}"),
        )
        .map(drop)
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
        cmd.args(["--kill-after=5", "120"])
            .arg(self.ctr_binary())
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
        let _ = shell(&self.dir, self.version, "ctrd_stop");
        // containerd leaves its snapshot and shm mounts behind when killed: unmount them,
        // deepest first, before removing the directory.
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The process-wide CRI containerd of [`Containerd::shared_cri`] and the pipe its keeper waits
/// on (open for as long as this process lives).
#[derive(Debug)]
struct SharedCri {
    ctrd: Containerd,
    _keeper: std::process::ChildStdin,
}

/// The keeper of [`Containerd::shared_cri`]: starts containerd and imports the images, says
/// `ready`, then waits for EOF on its stdin (this process's end) and cleans up: stops
/// containerd, unmounts what is left below its directory (deepest first) and removes it. A
/// failed start cleans up the same way, after showing containerd's log.
const CRI_KEEPER: &str = r#"
cleanup() {
  ctrd_stop
  awk -v p="$MSB_CTRD_DIR/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf "$MSB_CTRD_DIR"
}
if ! { ctrd_start "$MSB_CTRD_DIR/opt" cri && ctrd_import_busybox "$1" "$2" "$3"; }; then
  tail -20 "$MSB_CTRD_DIR/containerd.log" >&2 || true
  cleanup
  exit 1
fi
echo ready
exec >/dev/null 2>&1
read -r _ || true
cleanup
"#;

impl SharedCri {
    fn start(version: Version, shim: &Path) -> Result<SharedCri> {
        if let Err(e) = version.check() {
            bail!(e);
        }
        let dir = PathBuf::from(format!("/run/msbt-{}-cri", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("opt/bin"))?;
        std::os::unix::fs::symlink(shim, dir.join("opt/bin").join(SHIM_BINARY))?;
        let mut child = shell_command(&dir, version, CRI_KEEPER)
            .arg("keeper")
            .args([CRI_NAMESPACE, BUSYBOX, PAUSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the CRI containerd's keeper")?;
        let keeper = child.stdin.take().context("keeper stdin")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("keeper stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line)?;
        if line.trim() != "ready" {
            drop(keeper);
            let out = child.wait_with_output()?;
            bail!(
                "containerd {} with CRI did not start ({}): {line}{}",
                version.number(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The keeper outlives nothing of ours: it is reaped by init once this process is gone.
        drop(child);
        Ok(SharedCri {
            ctrd: Containerd {
                sock: dir.join("containerd.sock"),
                dir,
                version,
            },
            _keeper: keeper,
        })
    }
}

/// Lazily unmounts every mount below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
}

/// The unpacked Docker 26 (Debian 13's `docker.io` and `docker-cli`): `dockerd` and `docker`.
#[derive(Clone, Debug)]
pub struct DockerBinaries {
    /// `dockerd`.
    pub dockerd: PathBuf,
    /// The `docker` client of the same version (never whichever `docker` is on PATH).
    pub docker: PathBuf,
}

impl DockerBinaries {
    /// The binaries in [`cache_dir`]`/docker-26`, or why they are missing.
    pub fn find() -> std::result::Result<Self, String> {
        let root = cache_dir().join("docker-26/root");
        let bins = DockerBinaries {
            dockerd: root.join("usr/sbin/dockerd"),
            docker: root.join("usr/bin/docker"),
        };
        unpacked(&bins.dockerd, "Docker 26")?;
        unpacked(&bins.docker, "Docker 26's client")?;
        Ok(bins)
    }
}

/// A private dockerd over a private [`Containerd`]: data root, exec root, socket, pid file and
/// daemon config in `<containerd dir>/d`, no network set-up of the host (no iptables, no bridge,
/// no userland proxy), its containers in containerd namespace `namespace`. Stopped on drop (it
/// borrows the containerd, which must outlive it).
#[derive(Debug)]
pub struct Docker<'a> {
    ctrd: &'a Containerd,
    bins: DockerBinaries,
    dir: PathBuf,
    namespace: String,
    child: Child,
}

impl<'a> Docker<'a> {
    /// Starts dockerd and waits until it answers (at most 60 s).
    pub fn start(
        ctrd: &'a Containerd,
        bins: DockerBinaries,
        namespace: &str,
    ) -> Result<Docker<'a>> {
        let dir = ctrd.dir().join("d");
        std::fs::create_dir_all(dir.join("cli"))?;
        std::fs::write(dir.join("daemon.json"), "{}\n")?;
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new(&bins.dockerd)
            .arg("--containerd")
            .arg(ctrd.socket())
            .arg("--containerd-namespace")
            .arg(namespace)
            .arg("--containerd-plugins-namespace")
            .arg(format!("{namespace}-plugins"))
            .arg("--data-root")
            .arg(dir.join("docker"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--shutdown-timeout=5",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bins.dockerd.display()))?;
        let mut docker = Docker {
            ctrd,
            bins,
            dir,
            namespace: namespace.to_owned(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = docker.child.try_wait()? {
                bail!("dockerd exited ({status}) at start:\n{}", docker.log());
            }
            if docker.docker(&["version"]).status.success() {
                return Ok(docker);
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s:\n{}", docker.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The containerd namespace of its containers.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs `docker ARGS` against this dockerd, killed after 120 s.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["--kill-after=5", "120"])
            .arg(&self.bins.docker)
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.join("docker.sock").display()),
            )
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .expect("docker runs")
    }

    /// Makes image `reference` without a registry: `docker import` of a tarred busybox root file
    /// system ([`crate::guest::busybox_rootfs`]), `PATH` set, no command.
    pub fn import_busybox(&self, reference: &str) -> Result<()> {
        let work = tempfile_dir(&self.dir.join("import"))?;
        crate::guest::busybox_rootfs(&work);
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"tar -C "$1" -c . | "$2" import -c "ENV PATH=/bin" - "$3""#)
            .arg("import")
            .arg(&work)
            .arg(&self.bins.docker)
            .arg(reference)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.join("docker.sock").display()),
            )
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .output()?;
        let _ = std::fs::remove_dir_all(&work);
        if !out.status.success() {
            bail!(
                "docker import failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// dockerd's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The containerd it runs on.
    pub fn containerd(&self) -> &Containerd {
        self.ctrd
    }
}

/// A fresh empty directory at `path`.
fn tempfile_dir(path: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path)?;
    Ok(path.to_path_buf())
}

impl Drop for Docker<'_> {
    fn drop(&mut self) {
        // SIGTERM, then SIGKILL if it is still there after 20 s (its shutdown timeout is 5 s).
        if let (Ok(None), Ok(pid)) = (self.child.try_wait(), i32::try_from(self.child.id())) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.dir);
    }
}
