//! The way from a process's output in the VM to its FIFOs, which must never stall the VM.
//!
//! The guest's frames for every process of a VM arrive on one agent connection, and the agent
//! client's reader waits for each session's consumer (that is its backpressure). A process whose
//! FIFO nobody reads (`ctr run -d` exits and leaves its FIFOs unread) would therefore stall exec,
//! kill and stats of every container in that VM once its queues fill. So output that finds no
//! room for [`STUCK_GRACE`] is discarded, and so is everything after it until the FIFO is read
//! again (the process keeps running, as under runc it would keep running until its pipe filled);
//! each stall is logged with the bytes it cost.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};

use crate::pod_vm::Output;

/// How long output may wait for room before the FIFO counts as unread.
pub const STUCK_GRACE: Duration = Duration::from_secs(5);

/// Forwards one process's output into the bounded channel to its FIFO copier.
#[derive(Debug)]
pub struct OutputGate {
    tx: mpsc::Sender<Output>,
    /// Bytes discarded in the current stall; `None` while output flows.
    dropped: Option<u64>,
    /// For the log.
    process: String,
}

impl OutputGate {
    /// A gate in front of `tx`; `process` names it in the log.
    pub fn new(tx: mpsc::Sender<Output>, process: String) -> Self {
        Self {
            tx,
            dropped: None,
            process,
        }
    }

    /// Passes `out` on, waits at most [`STUCK_GRACE`] for room, or discards it during a stall.
    pub async fn forward(&mut self, out: Output) {
        let len = match &out {
            Output::Stdout(d) | Output::Stderr(d) => d.len() as u64,
        };
        if let Some(dropped) = self.dropped {
            match self.tx.try_send(out) {
                Ok(()) => {
                    tracing::warn!(process = %self.process, dropped, "output is read again");
                    self.dropped = None;
                }
                Err(TrySendError::Full(_)) => self.dropped = Some(dropped + len),
                Err(TrySendError::Closed(_)) => {}
            }
            return;
        }
        if let Err(SendTimeoutError::Timeout(_)) = self.tx.send_timeout(out, STUCK_GRACE).await {
            tracing::warn!(
                process = %self.process,
                "output not read for {STUCK_GRACE:?}: discarding it until it is read again"
            );
            self.dropped = Some(len);
        }
    }

    /// Whether output is being discarded.
    pub fn stalled(&self) -> bool {
        self.dropped.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: &[u8]) -> Output {
        Output::Stdout(b.to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn an_unread_fifo_costs_one_grace_period_then_output_is_discarded_until_read() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut gate = OutputGate::new(tx, "c/e".into());
        gate.forward(chunk(b"a")).await;
        let t = tokio::time::Instant::now();
        gate.forward(chunk(b"b")).await;
        assert_eq!(t.elapsed(), STUCK_GRACE);
        assert!(gate.stalled());
        let t = tokio::time::Instant::now();
        gate.forward(chunk(b"c")).await;
        assert_eq!(t.elapsed(), Duration::ZERO, "no wait during a stall");

        // Read again: output flows from the next chunk on.
        assert_eq!(rx.recv().await, Some(chunk(b"a")));
        gate.forward(chunk(b"d")).await;
        assert!(!gate.stalled());
        assert_eq!(rx.recv().await, Some(chunk(b"d")));
        gate.forward(chunk(b"e")).await;
        assert_eq!(rx.recv().await, Some(chunk(b"e")));
    }
}
