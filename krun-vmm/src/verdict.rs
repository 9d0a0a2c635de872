//! When the VM fails, say why where the user looks: the guest console log, whose last lines
//! the runtime prints when a guest never becomes ready.
//!
//! libkrun reports a dying vCPU (for instance `KVM_EXIT_INTERNAL_ERROR`, what a standard guest
//! kernel hits under a PVM-backed KVM) only through its log and a non-zero exit code. So the VMM
//! remembers the last error libkrun logged ([`LastError`], a tracing layer) and, when the VM
//! stops with a non-zero code or cannot start, appends one paragraph to the console log: the
//! cause, whether this host's KVM can boot a standard guest at all, and `--backend qemu` as the
//! way out.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Remembers the message of the last ERROR event (libkrun's `log` records arrive as events).
#[derive(Debug, Clone, Default)]
pub struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// The last error message, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().map(|g| g.clone()).unwrap_or(None)
    }
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for LastError {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == Level::ERROR {
            let mut m = Message(String::new());
            event.record(&mut m);
            if let Ok(mut g) = self.0.lock() {
                *g = Some(m.0);
            }
        }
    }
}

/// The paragraph explaining a failed VM. `cause` is what failed; `kvm` is
/// `msb_runtime::host::kvm_usable()`.
pub fn explain(cause: &str, kvm: Result<(), String>) -> String {
    let hint = match kvm {
        Err(why) => format!(
            "This host cannot run the krun backend: {why}. Use --backend qemu (or auto, which picks qemu here)."
        ),
        Ok(()) => "If this persists, try --backend qemu; the VMM's own log is krun.log in the sandbox directory.".into(),
    };
    format!("msb-krun-vmm: the libkrun VM failed: {cause}\nmsb-krun-vmm: {hint}\n")
}

/// What an exit code plus the last logged error mean.
pub fn exit_cause(code: i32, last_error: Option<String>) -> String {
    match last_error {
        Some(e) => format!("{e} (VMM exit code {code})"),
        None => format!("the VMM stopped with exit code {code}"),
    }
}

/// Appends `text` to the console log (created if libkrun never got to it). Best effort: this
/// runs on the way out of a failing process.
pub fn append(console_log: &Path, text: &str) {
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(console_log)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = r {
        tracing::warn!("write the failure to {}: {e}", console_log.display());
    }
}

/// Opens the console log for [`append_to`] (created if need be): opened before the VMM pivots
/// into its new root, where the path no longer exists, so that a failure of the running VM is
/// still explained. libkrun truncates the file when it opens it; appends land at its end.
pub fn open_console(console_log: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(console_log)
}

/// Appends `text` to an opened console log. Best effort, as [`append`].
pub fn append_to(console: &std::fs::File, text: &str) {
    if let Err(e) = (&*console).write_all(text.as_bytes()) {
        tracing::warn!("write the failure to the console log: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn remembers_the_last_error_only() {
        let last = LastError::default();
        let sub = tracing_subscriber::registry().with(last.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::error!("first");
            tracing::error!("Received KVM_EXIT_INTERNAL_ERROR signal");
            tracing::warn!("not an error");
        });
        assert_eq!(
            last.get().as_deref(),
            Some("Received KVM_EXIT_INTERNAL_ERROR signal")
        );
    }

    #[test]
    fn explains_a_pvm_host_and_appends_to_the_console() {
        let cause = exit_cause(1, Some("Received KVM_EXIT_INTERNAL_ERROR signal".into()));
        let text = explain(
            &cause,
            Err("KVM here is PVM-backed (module kvm_pvm)".into()),
        );
        assert_eq!(
            text,
            "msb-krun-vmm: the libkrun VM failed: Received KVM_EXIT_INTERNAL_ERROR signal (VMM exit code 1)\n\
             msb-krun-vmm: This host cannot run the krun backend: KVM here is PVM-backed (module kvm_pvm). \
             Use --backend qemu (or auto, which picks qemu here).\n"
        );
        assert!(explain("x", Ok(())).contains("try --backend qemu"));
        assert_eq!(exit_cause(2, None), "the VMM stopped with exit code 2");
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        std::fs::write(&log, "guest line\n").unwrap();
        append(&log, &text);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("guest line\n{text}")
        );
    }
}
