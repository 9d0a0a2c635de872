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

use super::images::{self, PullFlags};
use super::{layers, term};

/// Arguments of `msbox run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// VMM backend: auto, krun or qemu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Boot the VM instead of restoring a saved template (also `MSB_TEMPLATES=off`).
    #[arg(long)]
    pub no_template: bool,
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
    /// The guest's host name; by default 12 random hex digits, as Docker names a container's
    /// host after its short id.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Override the image's Entrypoint ("" clears it); the image's Cmd is dropped with it, as
    /// `docker run --entrypoint` does.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// When to pull the image: missing (only when it is not in the store), always, never.
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pub pull: String,
    /// Where a pull comes from.
    #[command(flatten)]
    pub pull_flags: PullFlags,
    /// The image (`busybox`, `127.0.0.1:5000/app:1`, ...) or, when it starts with `/` or `.`, a
    /// root file system directory.
    pub image: String,
    /// The command and its arguments: the image's Cmd is replaced by them (a directory's
    /// default is /bin/sh).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Runs and returns the command's exit code.
pub async fn run(args: RunArgs, data_root: Option<&PathBuf>) -> Result<i32> {
    // The image first: a pull that fails has nothing to clean up.
    let source = if is_directory_argument(&args.image) {
        Source::Directory(PathBuf::from(&args.image))
    } else {
        let store = images::open_store(data_root)?;
        let record = match (args.pull.as_str(), store.image(&args.image)?) {
            ("always", _) | ("missing", None) => {
                images::pull_image(&store, &args.image, &args.pull_flags).await?
            }
            (_, Some(record)) => record,
            (_, None) => anyhow::bail!(
                "{}: not in the image store and --pull=never (msbox pull it first)",
                args.image
            ),
        };
        let lowers = tokio::task::block_in_place(|| layers::images_of(&store, &record))?;
        Source::Image {
            record: Box::new(record),
            lowers,
        }
    };
    let id = format!("msbox-{}", std::process::id());
    let mut cfg = VmConfig::new(&id);
    cfg.backend = parse_backend(&args.backend).map_err(anyhow::Error::msg)?;
    cfg.vcpus = args.vcpus;
    cfg.memory_mib = args.memory;
    cfg.templates &= !args.no_template;
    let hostname = match &args.hostname {
        Some(name) => name.clone(),
        None => short_id()?,
    };
    cfg.boot_env.hostname = Some(
        msb_protocol::boot::Hostname::parse(&hostname)
            .map_err(|e| anyhow::anyhow!("--hostname {hostname:?}: {e}"))?,
    );
    let dir = cfg.dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let volumes = args
        .volume
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>>>()?;
    let mut env = match &source {
        Source::Image { record, .. } => image_config(record)
            .and_then(|c| c.env().clone())
            .unwrap_or_default(),
        Source::Directory(_) => Vec::new(),
    };
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
    let mut env = merge_env(env);
    let upper = args
        .keep_upper
        .clone()
        .unwrap_or_else(|| dir.join("upper.ext4"));
    let lowers = match &source {
        Source::Image { lowers, .. } => lowers.clone(),
        Source::Directory(rootfs) => {
            // Not a layer cache: a directory of the user's may change under the same inode.
            let lower = dir.join("lower.erofs");
            disks::make_lower(rootfs, &lower)?;
            vec![lower]
        }
    };
    let process = match &source {
        Source::Image { record, .. } => image_process(
            image_config(record).as_ref(),
            args.entrypoint.as_deref(),
            &args.command,
        )
        .with_context(|| format!("{}: no command to run", record.reference))?,
        Source::Directory(_) => match &args.entrypoint {
            Some(e) if !e.is_empty() => std::iter::once(e.clone())
                .chain(args.command.iter().cloned())
                .collect(),
            _ if args.command.is_empty() => vec!["/bin/sh".to_owned()],
            _ => args.command.clone(),
        },
    };
    let (workdir, user) = match &source {
        Source::Image { record, .. } => {
            let config = image_config(record);
            let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
            (
                args.workdir
                    .clone()
                    .or_else(|| non_empty(config.as_ref().and_then(|c| c.working_dir().clone()))),
                args.user
                    .clone()
                    .or_else(|| non_empty(config.as_ref().and_then(|c| c.user().clone()))),
            )
        }
        Source::Directory(_) => (args.workdir.clone(), args.user.clone()),
    };
    let root = rootfs::single("main", &lowers, &upper, args.upper_size << 20)?;
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
    let command = process;
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
            cwd: workdir,
            user,
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

/// What the container's root comes from.
enum Source {
    /// A pulled image and its layer images, topmost first.
    Image {
        record: Box<msb_image::store::ImageRecord>,
        lowers: Vec<PathBuf>,
    },
    /// A directory of the user's.
    Directory(PathBuf),
}

/// A path, not an image reference: `/...`, `.`, `./...`, `..`, `../...`.
fn is_directory_argument(arg: &str) -> bool {
    arg.starts_with('/')
        || arg == "."
        || arg == ".."
        || arg.starts_with("./")
        || arg.starts_with("../")
}

/// The process part of the image's config (Entrypoint, Cmd, Env, WorkingDir, User).
fn image_config(record: &msb_image::store::ImageRecord) -> Option<oci_spec::image::Config> {
    record.config.config().clone()
}

/// The command line `docker run` would run: the Entrypoint (or `--entrypoint`, which drops the
/// image's Cmd with it; "" clears it) followed by the given arguments, or by the image's Cmd when
/// none are given. `None` when that is empty.
fn image_process(
    config: Option<&oci_spec::image::Config>,
    entrypoint: Option<&str>,
    command: &[String],
) -> Option<Vec<String>> {
    let (entry, default_cmd) = match entrypoint {
        Some("") => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.to_owned()], Vec::new()),
        None => (
            config
                .and_then(|c| c.entrypoint().clone())
                .unwrap_or_default(),
            config.and_then(|c| c.cmd().clone()).unwrap_or_default(),
        ),
    };
    let cmd = if command.is_empty() {
        default_cmd
    } else {
        command.to_vec()
    };
    let argv: Vec<String> = entry.into_iter().chain(cmd).collect();
    (!argv.is_empty()).then_some(argv)
}

/// The environment in order of precedence (the image's, then `--env-file`, then `-e`): a later
/// KEY replaces an earlier one in place, and PATH gets Docker's default when nothing set it.
fn merge_env(env: Vec<String>) -> Vec<String> {
    let mut merged: Vec<String> = Vec::with_capacity(env.len() + 1);
    for e in env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_owned();
        match merged
            .iter_mut()
            .find(|m| m.split_once('=').map_or(m.as_str(), |(k, _)| k) == key)
        {
            Some(slot) => *slot = e,
            None => merged.push(e),
        }
    }
    if !merged.iter().any(|e| e.starts_with("PATH=")) {
        merged.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    merged
}

/// The PATH `docker run` gives a process whose image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Never through a volume still bound in it.
        let _ = msb_runtime::volumes::remove_tree(&self.0);
    }
}

/// 12 random hex digits: the default host name, as Docker's short container id.
fn short_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0_u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom for the host name")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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

    fn config(entrypoint: &[&str], cmd: &[&str]) -> oci_spec::image::Config {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut c = oci_spec::image::Config::default();
        c.set_entrypoint((!entrypoint.is_empty()).then(|| own(entrypoint)));
        c.set_cmd((!cmd.is_empty()).then(|| own(cmd)));
        c
    }

    #[test]
    fn the_process_follows_dockers_override_rules() {
        let c = config(&["/bin/app", "--serve"], &["--port", "80"]);
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            image_process(Some(&c), None, &[]).unwrap(),
            args(&["/bin/app", "--serve", "--port", "80"])
        );
        // `-- CMD` replaces Cmd only.
        assert_eq!(
            image_process(Some(&c), None, &args(&["--port", "8080"])).unwrap(),
            args(&["/bin/app", "--serve", "--port", "8080"])
        );
        // --entrypoint drops the image's Cmd with its Entrypoint.
        assert_eq!(
            image_process(Some(&c), Some("/bin/sh"), &[]).unwrap(),
            args(&["/bin/sh"])
        );
        assert_eq!(
            image_process(Some(&c), Some(""), &args(&["echo", "hi"])).unwrap(),
            args(&["echo", "hi"])
        );
        let cmd_only = config(&[], &["sh"]);
        assert_eq!(
            image_process(Some(&cmd_only), None, &args(&["ls", "/"])).unwrap(),
            args(&["ls", "/"])
        );
        assert_eq!(image_process(Some(&config(&[], &[])), None, &[]), None);
        assert_eq!(image_process(None, Some(""), &[]), None);
    }

    #[test]
    fn later_environment_wins_and_path_has_a_default() {
        let env = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            merge_env(env(&["A=image", "B=image", "A=cli", "C"])),
            env(&[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "A=cli",
                "B=image",
                "C"
            ])
        );
        assert_eq!(merge_env(env(&["PATH=/x", "PATH=/y"])), env(&["PATH=/y"]));
    }

    #[test]
    fn paths_are_directories_and_the_rest_images() {
        for dir in ["/srv/root", ".", "./root", "..", "../root"] {
            assert!(is_directory_argument(dir), "{dir}");
        }
        for image in [
            "busybox",
            "127.0.0.1:5000/app:1",
            "ghcr.io/a/b@sha256:00",
            "x/y",
        ] {
            assert!(!is_directory_argument(image), "{image}");
        }
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
