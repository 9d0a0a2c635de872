//! The QEMU backend: `qemu-system-x86_64 -M microvm`, virtio-mmio devices, PVH boot of the
//! uncompressed kernel. KVM where it can boot a standard guest, TCG (software) otherwise.
//!
//! Flags, and why (measured on the development hosts, HOSTS.md):
//! - `-M microvm`, `-kernel vmlinux`: PVH boot of the uncompressed kernel, the fastest variant.
//! - `tsc_early_khz=<host> tsc=reliable`: without them TSC calibration under TCG sometimes
//!   hangs the guest forever.
//! - `panic=-1` + `-no-reboot`: a panicking guest makes QEMU exit instead of spinning a core.
//! - `-accel tcg,tb-size=64`: a smaller translation cache, less memory per guest.
//! - `-serial file:`: the console log in the sandbox directory, for error messages.
//! - `virtserialport name=agent` on a unix socket (`server=on,wait=off`): the agent channel.
//! - one `virtio-blk-device` per disk with `serial=`: the guest finds disks by serial.

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

    /// The full argument list for `spec` (without the program).
    pub fn args(
        &self,
        spec: &VmSpec,
        accel: &str,
        tsc_khz: Option<u64>,
    ) -> Result<Vec<String>, VmmError> {
        if !spec.shares.is_empty() {
            return Err(VmmError::Unsupported {
                backend: BackendKind::Qemu,
                what: "virtio-fs shares yet".into(),
            });
        }
        let p = |path: &Path| path.display().to_string();
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
            "microvm".into(),
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
                p(&spec.agent_socket)
            ),
            "-device".into(),
            "virtserialport,chardev=agent,name=agent".into(),
        ];
        for (i, d) in spec.disks.iter().enumerate() {
            let mode = if d.read_only {
                "readonly=on"
            } else {
                "cache=unsafe,discard=unmap"
            };
            a.push("-drive".into());
            a.push(format!(
                "file={},if=none,id=disk{i},format=raw,{mode}",
                p(&d.path)
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-device,drive=disk{i},serial={}",
                d.serial
            ));
        }
        Ok(a)
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
        let log =
            std::fs::File::create(spec.dir.join("qemu.log")).map_err(|source| VmmError::Io {
                what: "create qemu.log".into(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| VmmError::Io {
            what: "dup qemu.log".into(),
            source,
        })?;
        let child = tokio::process::Command::new(&self.program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => VmmError::MissingProgram {
                    program: self.program.clone(),
                    hint: "install the Debian package qemu-system-x86".into(),
                },
                _ => VmmError::Io {
                    what: format!("start {}", self.program),
                    source: e,
                },
            })?;
        tracing::debug!(sandbox = %spec.id, "qemu {}", args.join(" "));
        VmmProcess::new(child, spec.console_log.clone(), BackendKind::Qemu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::DiskSpec;

    #[test]
    fn command_line_carries_every_field() {
        let spec = VmSpec {
            id: "s".into(),
            dir: "/d".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/a/vmlinux".into(),
            initramfs: "/a/initramfs.cpio".into(),
            cmdline: vec!["MSB_HOSTNAME=h".into()],
            disks: vec![
                DiskSpec {
                    serial: "lower".into(),
                    path: "/d/lower.img".into(),
                    read_only: true,
                },
                DiskSpec {
                    serial: "upper".into(),
                    path: "/d/upper.img".into(),
                    read_only: false,
                },
            ],
            shares: vec![],
            agent_socket: "/d/agent.sock".into(),
            console_log: "/d/console.log".into(),
        };
        let a = Qemu::new()
            .args(&spec, "tcg,tb-size=64", Some(2_596_146))
            .unwrap()
            .join(" ");
        assert_eq!(
            a,
            "-accel tcg,tb-size=64 -M microvm -cpu qemu64 -smp 2 -m 512M -nodefaults -no-user-config -nographic -no-reboot \
             -kernel /a/vmlinux -initrd /a/initramfs.cpio \
             -append console=ttyS0 quiet panic=-1 tsc_early_khz=2596146 tsc=reliable MSB_HOSTNAME=h \
             -serial file:/d/console.log -device virtio-serial-device \
             -chardev socket,id=agent,path=/d/agent.sock,server=on,wait=off -device virtserialport,chardev=agent,name=agent \
             -drive file=/d/lower.img,if=none,id=disk0,format=raw,readonly=on -device virtio-blk-device,drive=disk0,serial=lower \
             -drive file=/d/upper.img,if=none,id=disk1,format=raw,cache=unsafe,discard=unmap -device virtio-blk-device,drive=disk1,serial=upper"
        );
    }
}
