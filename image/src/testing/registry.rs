//! A `docker-registry serve` on 127.0.0.1 with its storage in a temporary directory.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the registry is set up.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Basic auth from an htpasswd file with this one user: `(user, password)`.
    pub htpasswd: Option<(String, String)>,
}

/// A running registry; killed on drop.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Registry {
    /// An open registry (no auth).
    pub fn start() -> io::Result<Registry> {
        Registry::start_with(&RegistryOptions::default())
    }

    pub fn start_with(opts: &RegistryOptions) -> io::Result<Registry> {
        if super::which("docker-registry").is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "docker-registry is not installed (Debian package docker-registry)",
            ));
        }
        let dir = tempfile::Builder::new().prefix("msb-registry-").tempdir()?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        fs::create_dir(dir.path().join("storage"))?;
        let auth = match &opts.htpasswd {
            Some((user, password)) => {
                let hash = bcrypt::hash_with_result(password, 4)
                    .map_err(io::Error::other)?
                    .format_for_version(bcrypt::Version::TwoA);
                let path = dir.path().join("htpasswd");
                fs::write(&path, format!("{user}:{hash}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: msb-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: msb-test-not-secret\n\
             {auth}",
            storage = dir.path().join("storage").display(),
        );
        fs::write(dir.path().join("config.yml"), config)?;
        let mut registry = Registry {
            dir,
            port,
            child: None,
        };
        registry.start_again()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`, as it goes into references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's storage root (`docker/registry/v2/...` under it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes: edit it to serve tampered content.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// What the registry wrote to stdout and stderr.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kills it (SIGKILL: connections drop mid-transfer) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL ends a paused process too.
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused registry go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the registry is running");
        let pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .expect("signal the registry");
    }

    /// Starts it (again) on the same port and storage; returns once `/v2/` answers.
    pub fn start_again(&mut self) -> io::Result<()> {
        self.stop();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                let status = status?;
                self.child = None;
                return Err(io::Error::other(format!(
                    "docker-registry exited with {status} before answering; its log:\n{}",
                    self.log()
                )));
            }
            match v2_status(self.port) {
                // 401: up, and asking for credentials.
                Ok(200 | 401) => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(code) => {
                    return Err(io::Error::other(format!(
                        "docker-registry answers /v2/ with {code}; its log:\n{}",
                        self.log()
                    )))
                }
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "docker-registry did not answer on 127.0.0.1:{} within {READY_TIMEOUT:?} \
                         ({e}); its log:\n{}",
                        self.port,
                        self.log()
                    )))
                }
            }
        }
    }

    /// The directory the registry's files live in (config, htpasswd, log, storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status code of `GET /v2/`, over a plain socket.
fn v2_status(port: u16) -> io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))
}
