//! [`VmConfigurator`] on `msb_krun::VmBuilder`, and entering the VM.

use std::convert::Infallible;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use msb_krun::{CacheMode, VmBuilder};

use crate::tap::{TapError, TapFd};
use crate::translate::{ExitObserver, VmConfigurator};

/// Building or entering the VM failed (before libkrun took the process over).
#[derive(Debug, thiserror::Error)]
pub enum KrunError {
    /// `VmBuilder::build` refused the configuration.
    #[error("build the libkrun VM")]
    Build(#[source] msb_krun::Error),
    /// `Vm::enter` failed: the libkrunfw library, KVM, a disk image, the console file...
    #[error("start the libkrun VM")]
    Enter(#[source] msb_krun::Error),
    /// The pod network's TAP descriptor cannot be served.
    #[error("the pod network")]
    Net(#[source] TapError),
}

/// A VM being configured. The builder is taken by value by each call of `msb_krun`, so it
/// lives in an `Option` that every method takes and puts back. The builder's calls cannot fail;
/// ours can (the TAP descriptor), so the first failure waits in `failed` for [`KrunVm::enter`].
pub struct KrunVm {
    builder: Option<VmBuilder>,
    failed: Option<KrunError>,
}

impl std::fmt::Debug for KrunVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrunVm").finish_non_exhaustive()
    }
}

impl Default for KrunVm {
    fn default() -> Self {
        KrunVm {
            builder: Some(VmBuilder::new()),
            failed: None,
        }
    }
}

impl KrunVm {
    fn with(&mut self, f: impl FnOnce(VmBuilder) -> VmBuilder) {
        let b = self.builder.take().expect("the builder is always put back");
        self.builder = Some(f(b));
    }

    /// Runs `hook` once libkrun has opened every file it needs (disks, `/dev/kvm`, libkrunfw,
    /// the console) and created the vCPU threads, while they are still paused: the last point
    /// before the guest runs, where the VMM confines itself (`crate::jail`, `crate::seccomp`).
    /// `msb_krun` calls it from `enter` through its placement callback, which exists for
    /// exactly that moment ("after every vCPU thread has attempted affinity and while all
    /// vCPUs are still paused"). The hook cannot fail `enter`: it ends the process itself.
    pub fn before_guest_runs(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.with(|b| b.on_placement(move |_| hook()));
    }

    /// Builds and enters the VM. Returns only on failure: on success libkrun runs the VM and
    /// `_exit`s the process with the guest's exit code when it stops.
    pub fn enter(self) -> Result<Infallible, KrunError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let vm = self
            .builder
            .expect("the builder is always put back")
            .build()
            .map_err(KrunError::Build)?;
        vm.enter().map_err(KrunError::Enter)
    }
}

impl VmConfigurator for KrunVm {
    fn machine(&mut self, vcpus: u8, memory_mib: u32) {
        self.with(|b| b.machine(|m| m.vcpus(vcpus).memory_mib(memory_mib as usize)));
    }

    fn krunfw(&mut self, path: &Path) {
        self.with(|b| b.kernel(|k| k.krunfw_path(path)));
    }

    fn initramfs(&mut self, path: &Path) {
        self.with(|b| b.kernel(|k| k.initramfs_path(path)));
    }

    fn init(&mut self, path: &str) {
        self.with(|b| b.kernel(|k| k.init_path(path)));
    }

    fn cmdline(&mut self, words: &str) {
        self.with(|b| b.kernel(|k| k.cmdline(words)));
    }

    fn disk(&mut self, serial: &str, path: &Path, read_only: bool) {
        self.with(|b| {
            b.disk(|d| {
                let d = d.path(path).id(serial).read_only(read_only);
                // The upper is scratch space for one sandbox: like QEMU's cache=unsafe, flushes
                // need not reach the host disk (agentd still syncs and unmounts it cleanly).
                if read_only {
                    d
                } else {
                    d.cache(CacheMode::Unsafe)
                }
            })
        });
    }

    fn share(&mut self, tag: &str, path: &Path) {
        self.with(|b| b.fs(|f| f.tag(tag).path(path)));
    }

    fn console_output(&mut self, path: &Path) {
        self.with(|b| b.console(|c| c.output(path)));
    }

    fn port(&mut self, name: &str, fd: RawFd) {
        self.with(|b| b.console(|c| c.port(name, fd, fd)));
    }

    fn net(&mut self, fd: RawFd, mac: [u8; 6], mtu: u32) {
        if self.failed.is_some() {
            return;
        }
        // Open and a TAP (else say which, without taking the descriptor), then taken over.
        let tap = crate::tap::describe(fd).and_then(|_| {
            // SAFETY: `fd` is open (described just above) and nothing else in this process
            // owns it: the runtime passes the TAP at this number for this purpose only, and
            // `translate::configure` makes this call once, for the one network of the config.
            TapFd::new(unsafe { OwnedFd::from_raw_fd(fd) })
        });
        match tap {
            Ok(tap) => {
                // libkrun's virtio-net has no MTU setting: agentd sets the pod's on the guest
                // interface (`core.net.configure`), and the config was checked to be at most
                // what the guest's receive buffers hold.
                tracing::info!(target: "krun_vmm", "pod network: virtio-net on {} (fd {fd}), MAC {}, MTU {mtu} set by the guest", tap.name(), crate::translate::format_mac(&mac));
                self.with(|b| b.net(|n| n.mac(mac).custom(Box::new(tap))));
            }
            Err(e) => self.failed = Some(KrunError::Net(e)),
        }
    }

    fn on_exit(&mut self, observer: ExitObserver) {
        self.with(|b| b.on_exit(observer));
    }
}
