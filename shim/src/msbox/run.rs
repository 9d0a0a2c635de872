//! `msbox run`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use msb_protocol::types::{ContainerCreate, ContainerMount, ExecRequest, Resources};
use msb_runtime::vmm::parse_backend;
use msb_runtime::volumes::{HostVolume, Propagation, VolumeShare};
use msb_runtime::{disks, rootfs};
use msb_runtime::{ExecEvent, Vm, VmConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::term;

/// Arguments of `msbox run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// VMM backend: auto, krun or qemu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open and send it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Memory of the VM in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// Memory limit of the container in MiB (its cgroup's memory.max).
    #[arg(long)]
    pub memory_limit: Option<u64>,
    /// Size of the writable upper disk in MiB (sparse).
    #[arg(long, default_value_t = 4096)]
    pub upper_size: u64,
    /// Make the upper disk image at this path and keep it after the run (by default it lives
    /// in the sandbox directory and is removed).
    #[arg(long)]
    pub keep_upper: Option<PathBuf>,
    /// Environment variables, KEY=VALUE (KEY alone: its value here, if set).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Files of environment variables, one KEY=VALUE per line as Docker reads them (`#`
    /// comments and blank lines skipped, KEY alone takes its value here), so that secrets
    /// need not be on the command line. `-e` wins over them.
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Host directories or files in the container: HOST:GUEST[:ro|:rw], both absolute.
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User: USER[:GROUP] or UID[:GID].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The root file system directory.
    pub rootfs: PathBuf,
    /// The command and its arguments (default /bin/sh).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Runs and returns the command's exit code.
pub async fn run(args: RunArgs) -> Result<i32> {
    let id = format!("msbox-{}", std::process::id());
    let mut cfg = VmConfig::new(&id);
    cfg.backend = parse_backend(&args.backend).map_err(anyhow::Error::msg)?;
    cfg.vcpus = args.vcpus;
    cfg.memory_mib = args.memory;
    let dir = cfg.dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let volumes = args
        .volume
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>>>()?;
    let mut env = Vec::new();
    for f in &args.env_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("read env file {}", f.display()))?;
        env.extend(env_lines(&text, |k| std::env::var(k).ok()));
    }
    // `-e` as it is (a value may hold anything), a bare KEY from here.
    env.extend(args.env.iter().filter_map(|e| {
        if e.contains('=') {
            Some(e.clone())
        } else {
            std::env::var(e).ok().map(|v| format!("{e}={v}"))
        }
    }));
    let lower = dir.join("lower.erofs");
    let upper = args
        .keep_upper
        .clone()
        .unwrap_or_else(|| dir.join("upper.ext4"));
    // Not the layer cache: a directory of the user's may change under the same inode.
    disks::make_lower(&args.rootfs, &lower)?;
    let root = rootfs::single("main", &[lower], &upper, args.upper_size << 20)?;
    cfg.disks = root.disks;
    // Dropped before `_cleanup` and after the VM: unbound once the VMM is gone.
    let share = if volumes.is_empty() {
        None
    } else {
        let (share, spec) = VolumeShare::prepare(&dir)?;
        cfg.shares.push(spec);
        Some(share)
    };
    let mut mounts = Vec::new();
    for (i, (volume, destination)) in volumes.iter().enumerate() {
        let share = share.as_ref().context("the volume share")?;
        let shared = share
            .add("main", i, volume)
            .with_context(|| format!("volume {}", args.volume[i]))?;
        mounts.push(ContainerMount {
            destination: destination.clone(),
            kind: "bind".into(),
            source: shared.guest_path,
            options: vec![
                "rbind".into(),
                if volume.read_only { "ro" } else { "rw" }.into(),
            ],
        });
    }
    let sandbox = Vm::start(cfg).await?;
    let agent = sandbox.agent().clone();
    agent
        .container_create(&ContainerCreate {
            id: "main".into(),
            rootfs: root.spec,
            mounts,
            hostname: None,
            namespaces: Default::default(),
            handoff_init: None,
            resources: Resources {
                memory_limit: args.memory_limit.map(|m| m << 20),
                ..Default::default()
            },
            sysctls: Vec::new(),
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            seccomp: None,
        })
        .await?;
    let mut command = args.command.clone();
    if command.is_empty() {
        command.push("/bin/sh".into());
    }
    let (rows, cols) = if args.tty {
        term::size(std::io::stdin())
            .or_else(|| term::size(std::io::stdout()))
            .unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    if args.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
        ));
    }
    let mut exec = agent
        .exec(&ExecRequest {
            cmd: command[0].clone(),
            args: command[1..].to_vec(),
            env,
            cwd: args.workdir.clone(),
            user: args.user.clone(),
            tty: args.tty,
            rows,
            cols,
            container: Some("main".into()),
            stdin: args.interactive,
            ..Default::default()
        })
        .await?;
    let _raw = if args.tty && args.interactive {
        term::RawMode::enable(std::io::stdin())
    } else {
        None
    };
    let code = pump(&mut exec, args.interactive, args.tty).await?;
    drop(_raw);
    let exit = sandbox
        .shutdown(msb_protocol::SHUTDOWN_HOST_TIMEOUT)
        .await?;
    tracing::debug!("vm exit {exit:?}");
    Ok(code)
}

/// Streams stdin to the process and its output to ours until it ends.
async fn pump(exec: &mut msb_runtime::ExecSession, interactive: bool, tty: bool) -> Result<i32> {
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    if interactive {
        // Its own task: a write waits for the guest's stdin window, which opens only while the
        // loop below reads the session.
        let sender = exec.stdin();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = sender.close().await;
                        return;
                    }
                    Ok(n) => {
                        if sender.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    loop {
        tokio::select! {
            ev = exec.next() => match ev? {
                ExecEvent::Started(_) => {}
                ExecEvent::Stdout(d) => { out.write_all(&d).await?; out.flush().await?; }
                ExecEvent::Stderr(d) => { err.write_all(&d).await?; err.flush().await?; }
                ExecEvent::Exited(code) => return Ok(code),
                ExecEvent::Failed(f) => {
                    eprintln!("msbox: {}", f.message);
                    return Ok(f.kind.exit_code());
                }
            },
            _ = winch.recv(), if tty => {
                if let Some((rows, cols)) = term::size(std::io::stdin()).or_else(|| term::size(std::io::stdout())) {
                    exec.resize(rows, cols).await?;
                }
            }
        }
    }
}

/// `-v HOST:GUEST[:ro|:rw]`: the host path (symlinks followed when it is bound) and the
/// destination, both absolute (msbox has no named volumes).
fn parse_volume(spec: &str) -> Result<(HostVolume, String)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, guest, read_only) = match parts.as_slice() {
        [h, g] => (*h, *g, false),
        [h, g, "ro"] => (*h, *g, true),
        [h, g, "rw"] => (*h, *g, false),
        _ => anyhow::bail!("-v {spec:?}: expected HOST:GUEST[:ro|:rw]"),
    };
    if !host.starts_with('/') || !msb_protocol::types::is_clean_absolute(guest) {
        anyhow::bail!(
            "-v {spec:?}: both paths must be absolute (and the container's without '.' or '..')"
        );
    }
    Ok((
        HostVolume {
            source: PathBuf::from(host),
            recursive: true,
            read_only,
            propagation: Propagation::Private,
        },
        guest.to_owned(),
    ))
}

/// Environment lines as Docker reads `--env-file` and `-e`: `KEY=VALUE` as it is, a bare
/// `KEY` takes `lookup(KEY)` (dropped when unset), `#` comments and blank lines are skipped.
fn env_lines(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            if l.contains('=') {
                Some(l.to_owned())
            } else {
                let key = l.trim_end();
                lookup(key).map(|v| format!("{key}={v}"))
            }
        })
        .collect()
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Never through a volume still bound in it.
        let _ = msb_runtime::volumes::remove_tree(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_read_as_docker_reads_them() {
        let text = "# a comment\n\nA=1\n  B = two words\nSECRET\nUNSET\nC=x=y\n";
        let lookup = |k: &str| (k == "SECRET").then(|| "s3cr3t".to_owned());
        assert_eq!(
            env_lines(text, lookup),
            ["A=1", "B = two words", "SECRET=s3cr3t", "C=x=y"]
        );
    }

    #[test]
    fn volumes_are_host_colon_guest_with_an_optional_mode() {
        let (v, g) = parse_volume("/srv/data:/data:ro").unwrap();
        assert_eq!(
            (v.source.as_path(), v.read_only, g.as_str()),
            (std::path::Path::new("/srv/data"), true, "/data")
        );
        assert!(!parse_volume("/a:/b").unwrap().0.read_only);
        for bad in ["data:/data", "/a:b", "/a", "/a:/b:rx", "/a:/../b"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }
}
