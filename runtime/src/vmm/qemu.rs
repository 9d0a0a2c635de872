//! The QEMU backend: `qemu-system-x86_64 -M microvm`, virtio-mmio devices, PVH boot of the
//! uncompressed kernel. KVM where it can boot a standard guest, TCG (software) otherwise.
//!
//! Flags, and why (measured on the development hosts, docs/HOSTS.md):
//! - `-M microvm`, `-kernel vmlinux`: PVH boot of the uncompressed kernel, the fastest variant.
//! - `tsc_early_khz=<host> tsc=reliable`: without them TSC calibration under TCG sometimes
//!   hangs the guest forever.
//! - `panic=-1` + `-no-reboot`: a panicking guest makes QEMU exit instead of spinning a core.
//! - `-accel tcg,tb-size=64`: a smaller translation cache, less memory per guest.
//! - `-serial file:`: the console log in the sandbox directory, for error messages.
//! - `virtserialport name=agent` on a unix socket (`server=on,wait=off`): the agent channel.
//! - QEMU and virtiofsd run in the sandbox directory and name their sockets relative to it: a
//!   socket's absolute path may exceed `sun_path`'s 107 bytes (see [`crate::socket_path`]).
//! - one `virtio-blk-device` per disk with `serial=`: the guest finds disks by serial.
//! - shares: one `virtiofsd` per share (a companion process of the VM, `--sandbox chroot`,
//!   `--readonly` when asked) and a `vhost-user-fs-device`; vhost-user needs the guest memory
//!   in a shared memfd (`memory-backend-memfd,share=on`).
//! - the pod network: `-netdev tap,fd=N,vhost=off` with a `virtio-net-device` carrying the pod
//!   interface's `mac=` and `host_mtu=`. The TAP was made in the pod's namespace
//!   ([`crate::net`]); QEMU stays in the host's and inherits the descriptor (close-on-exec
//!   cleared for QEMU only). `vhost=off`: `/dev/vhost-net` may be absent (QEMU 7.2 aborts when
//!   asked for it) and under TCG it cannot help.
//! - confinement, as far as it goes today: QEMU and each `virtiofsd` start with
//!   `PR_SET_NO_NEW_PRIVS`; QEMU runs its own seccomp filter ([`SANDBOX`]: no fork or exec, no
//!   privilege or resource changes); `virtiofsd` its `--sandbox chroot` and its own seccomp
//!   filter. Both still run as root in the host's mount namespace (docs/SECURITY.md). Both
//!   join the sandbox's host cgroup ([`crate::cgroup`]) before they exec, when it has one.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use super::{Backend, BackendKind, VmSpec, VmmError, VmmProcess};

/// The QEMU backend.
#[derive(Debug, Default)]
pub struct Qemu {
    program: String,
}

impl Qemu {
    /// Uses `qemu-system-x86_64` from PATH (or `$MSB_QEMU`).
    pub fn new() -> Qemu {
        Qemu {
            program: std::env::var("MSB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
        }
    }

    /// Uses this QEMU program.
    pub fn with_program(mut self, program: impl Into<String>) -> Qemu {
        self.program = program.into();
        self
    }

    /// The full argument list for `spec` (without the program).
    pub fn args(
        &self,
        spec: &VmSpec,
        accel: &str,
        tsc_khz: Option<u64>,
    ) -> Result<Vec<String>, VmmError> {
        let p = |path: &Path| path.display().to_string();
        // A value inside a QEMU option list (`key=value,...`): a comma in it is doubled, or
        // the rest would be read as options of ours (`file=/x,format=qcow2` in a path).
        let opt = |value: &str| value.replace(',', ",,");
        let mut cmdline = vec![
            "console=ttyS0".to_owned(),
            "quiet".into(),
            "panic=-1".into(),
        ];
        if let Some(khz) = tsc_khz {
            cmdline.push(format!("tsc_early_khz={khz}"));
            cmdline.push("tsc=reliable".into());
        }
        cmdline.extend(spec.cmdline.iter().cloned());
        let mut a: Vec<String> = vec![
            "-accel".into(),
            accel.into(),
            "-M".into(),
            if spec.shares.is_empty() {
                "microvm".into()
            } else {
                "microvm,memory-backend=mem".into()
            },
            "-cpu".into(),
            if accel == "kvm" {
                "host".into()
            } else {
                "qemu64".into()
            },
            "-smp".into(),
            spec.vcpus.max(1).to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-sandbox".into(),
            SANDBOX.into(),
            "-kernel".into(),
            p(&spec.kernel),
            "-initrd".into(),
            p(&spec.initramfs),
            "-append".into(),
            cmdline.join(" "),
            "-serial".into(),
            format!("file:{}", p(&spec.console_log)),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                opt(&p(in_dir(spec, &spec.agent_socket)))
            ),
            "-device".into(),
            "virtserialport,chardev=agent,name=agent".into(),
        ];
        if !spec.shares.is_empty() {
            a.push("-object".into());
            a.push(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.memory_mib
            ));
        }
        for (i, share) in spec.shares.iter().enumerate() {
            a.push("-chardev".into());
            a.push(format!("socket,id=fs{i},path={}", share_socket_name(i)));
            a.push("-device".into());
            a.push(format!(
                "vhost-user-fs-device,chardev=fs{i},tag={}",
                opt(&share.tag)
            ));
        }
        for (i, d) in spec.disks.iter().enumerate() {
            let mode = if d.read_only {
                "readonly=on"
            } else {
                "cache=unsafe,discard=unmap"
            };
            a.push("-drive".into());
            a.push(format!(
                "file={},if=none,id=disk{i},format=raw,{mode}",
                opt(&p(&d.path))
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-device,drive=disk{i},serial={}",
                opt(&d.serial)
            ));
        }
        if let Some(net) = &spec.net {
            a.push("-netdev".into());
            a.push(format!("tap,id=net0,fd={},vhost=off", net.fd()));
            a.push("-device".into());
            a.push(format!(
                "virtio-net-device,netdev=net0,mac={},host_mtu={}",
                msb_protocol::net::format_mac(&net.mac),
                net.mtu
            ));
        }
        Ok(a)
    }
}

/// The vhost-user socket of share `i`, in the sandbox directory.
fn share_socket_name(i: usize) -> String {
    format!("fs{i}.sock")
}

/// `path` relative to the sandbox directory, the VMM's working directory, when it lies inside
/// it (sockets: their absolute paths may be too long to bind); else `path` itself.
fn in_dir<'a>(spec: &VmSpec, path: &'a Path) -> &'a Path {
    path.strip_prefix(&spec.dir).unwrap_or(path)
}

/// `PR_SET_NO_NEW_PRIVS` for a VMM-side process (in its child, before exec): nothing it execs
/// gains privileges through setuid bits or file capabilities. Async-signal-safe.
fn no_new_privs() -> std::io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(Into::into)
}

/// QEMU's own seccomp filter (`-sandbox`): no obsolete system calls, no privilege changes, no
/// fork or exec, no scheduler or resource-limit changes. A QEMU that a guest took over can then
/// neither spawn a process nor become another user.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// A log file for a VMM-side process's stdout and stderr.
fn log_file(path: &std::path::Path) -> Result<(std::fs::File, std::fs::File), VmmError> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| VmmError::Io { what, source }
    };
    let f = crate::private::create_file(path).map_err(io("create"))?;
    let dup = f.try_clone().map_err(io("dup"))?;
    Ok((f, dup))
}

/// Starts one `virtiofsd` per share and waits until each listens (QEMU connects at start).
/// On any failure the ones already started are killed.
fn start_virtiofsd(spec: &VmSpec) -> Result<Vec<std::process::Child>, VmmError> {
    let mut children = Vec::new();
    for (i, share) in spec.shares.iter().enumerate() {
        if let Err(e) = start_one_virtiofsd(spec, i, share, &mut children) {
            kill_all(&mut children);
            return Err(e);
        }
    }
    Ok(children)
}

fn start_one_virtiofsd(
    spec: &VmSpec,
    i: usize,
    share: &super::ShareSpec,
    children: &mut Vec<std::process::Child>,
) -> Result<(), VmmError> {
    let program = std::env::var("MSB_VIRTIOFSD").unwrap_or_else(|_| "virtiofsd".into());
    let name = share_socket_name(i);
    let sock = spec.dir.join(&name);
    let _ = std::fs::remove_file(&sock);
    let log_path = spec.dir.join(format!("virtiofsd{i}.log"));
    let (out, err) = log_file(&log_path)?;
    let mut cmd = std::process::Command::new(&program);
    cmd.current_dir(&spec.dir)
        .arg("--socket-path")
        .arg(&name)
        .arg("--shared-dir")
        .arg(&share.host_path)
        .args([
            "--sandbox",
            "chroot",
            "--cache",
            "auto",
            "--log-level",
            "warn",
        ]);
    if share.read_only {
        cmd.arg("--readonly");
    }
    // First of its hooks: it runs nothing outside the cgroup.
    if let Some(cg) = &spec.cgroup {
        cg.on_spawn_std(&mut cmd);
    }
    // SAFETY: runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(no_new_privs);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::MissingProgram {
                program: program.clone(),
                hint: "hack/install-deps installs it (cargo install virtiofsd)".into(),
            },
            _ => VmmError::Io {
                what: super::starting(&program, spec),
                source: e,
            },
        })?;
    children.push(child);
    let child = children.last_mut().expect("just pushed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = super::console_tail(&log_path, 20);
            return Err(VmmError::Failed(format!(
                "virtiofsd for share {} ({}) exited with {status}: {}",
                share.tag,
                share.host_path.display(),
                log.trim()
            )));
        }
        if std::time::Instant::now() > deadline {
            return Err(VmmError::Failed(format!(
                "virtiofsd for share {} did not listen on {} within 10 s",
                share.tag,
                sock.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

fn kill_all(children: &mut [std::process::Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn launch(&self, spec: &VmSpec) -> Result<VmmProcess, VmmError> {
        let accel = match crate::host::kvm_usable() {
            Ok(()) => "kvm".to_owned(),
            Err(why) => {
                tracing::info!(sandbox = %spec.id, "qemu uses TCG: {why}");
                "tcg,tb-size=64".to_owned()
            }
        };
        let args = self.args(spec, &accel, crate::host::tsc_khz())?;
        let log_path = spec.dir.join("qemu.log");
        let (log, log2) = log_file(&log_path)?;
        // Last before QEMU, which connects to them: nothing after this may fail without
        // killing them.
        let mut companions = start_virtiofsd(spec)?;
        let mut cmd = tokio::process::Command::new(&self.program);
        // First of its hooks: QEMU runs nothing outside the cgroup.
        if let Some(cg) = &spec.cgroup {
            cg.on_spawn(&mut cmd);
        }
        let tap = spec.net.as_ref().map(crate::net::NetDevice::fd);
        // SAFETY: runs in the forked child before exec and only calls fcntl(2) and prctl(2),
        // which are async-signal-safe; `fd` is the TAP's descriptor, open in the parent (the
        // `NetDevice` in `spec` holds it) and so in the child.
        unsafe {
            cmd.pre_exec(move || {
                no_new_privs()?;
                if let Some(fd) = tap {
                    // Only this descriptor, only in QEMU: every other stays close-on-exec.
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .current_dir(&spec.dir)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .inspect_err(|_| kill_all(&mut companions))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => VmmError::MissingProgram {
                    program: self.program.clone(),
                    hint: "install the Debian package qemu-system-x86".into(),
                },
                _ => VmmError::Io {
                    what: super::starting(&self.program, spec),
                    source: e,
                },
            })?;
        tracing::debug!(sandbox = %spec.id, "qemu {}", args.join(" "));
        let vmm = VmmProcess::new(child, spec.console_log.clone(), log_path, BackendKind::Qemu)
            .inspect_err(|_| kill_all(&mut companions))?;
        Ok(vmm.with_companions(companions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_carries_every_field() {
        let spec = crate::vmm::sample_spec();
        let a = Qemu::new()
            .args(&spec, "tcg,tb-size=64", Some(2_596_146))
            .unwrap()
            .join(" ");
        assert_eq!(
            a,
            "-accel tcg,tb-size=64 -M microvm -cpu qemu64 -smp 2 -m 512M -nodefaults -no-user-config -nographic -no-reboot \
             -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
             -kernel /a/vmlinux -initrd /a/initramfs.cpio \
             -append console=ttyS0 quiet panic=-1 tsc_early_khz=2596146 tsc=reliable MSB_HOSTNAME=h \
             -serial file:/d/console.log -device virtio-serial-device \
             -chardev socket,id=agent,path=agent.sock,server=on,wait=off -device virtserialport,chardev=agent,name=agent \
             -drive file=/d/lower.img,if=none,id=disk0,format=raw,readonly=on -device virtio-blk-device,drive=disk0,serial=lower \
             -drive file=/d/upper.img,if=none,id=disk1,format=raw,cache=unsafe,discard=unmap -device virtio-blk-device,drive=disk1,serial=upper"
        );
    }

    #[test]
    fn commas_in_option_values_are_doubled() {
        let mut spec = crate::vmm::sample_spec();
        spec.disks[0].path = "/d/a,format=qcow2,b.img".into();
        let a = Qemu::new().args(&spec, "tcg", None).unwrap().join(" ");
        assert!(
            a.contains(
                "-drive file=/d/a,,format=qcow2,,b.img,if=none,id=disk0,format=raw,readonly=on"
            ),
            "{a}"
        );
    }

    #[test]
    fn a_pod_network_adds_a_virtio_net_device_on_the_inherited_tap() {
        let tap = std::fs::File::open("/dev/null").unwrap();
        let net = crate::net::NetDevice {
            tap: std::sync::Arc::new(std::os::fd::OwnedFd::from(tap)),
            mac: [0x02, 0x6d, 0x73, 0x62, 0x00, 0x0a],
            mtu: 1450,
        };
        let spec = VmSpec {
            disks: vec![],
            net: Some(net.clone()),
            ..crate::vmm::sample_spec()
        };
        let a = Qemu::new().args(&spec, "tcg", None).unwrap().join(" ");
        assert!(
            a.ends_with(&format!(
                "-netdev tap,id=net0,fd={},vhost=off \
                 -device virtio-net-device,netdev=net0,mac=02:6d:73:62:00:0a,host_mtu=1450",
                net.fd()
            )),
            "{a}"
        );
    }

    #[test]
    fn shares_add_virtiofs_devices_on_shared_memory() {
        let spec = VmSpec {
            memory_mib: 256,
            disks: vec![],
            shares: vec![crate::vmm::ShareSpec {
                tag: "msb_runtime".into(),
                host_path: "/cache".into(),
                read_only: true,
            }],
            ..crate::vmm::sample_spec()
        };
        let a = Qemu::new().args(&spec, "tcg", None).unwrap().join(" ");
        assert!(a.contains("-M microvm,memory-backend=mem "), "{a}");
        assert!(
            a.ends_with(
                "-object memory-backend-memfd,id=mem,size=256M,share=on \
                 -chardev socket,id=fs0,path=fs0.sock -device vhost-user-fs-device,chardev=fs0,tag=msb_runtime"
            ),
            "{a}"
        );
    }
}
