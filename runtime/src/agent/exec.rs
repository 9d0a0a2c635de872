//! Exec sessions on top of [`Session`].
//!
//! Stdin is flow-controlled per session: a sender reserves room in the session's
//! [`StdinWindow`] (at most [`STDIN_WINDOW`] bytes unacknowledged) before each chunk, and the
//! guest's `core.exec.stdin.ack` frames, read by [`ExecSession::next`], give the room back. So
//! whoever sends stdin must not be the one reading the session's events: [`ExecSession::stdin`]
//! hands out a [`StdinSender`] for another task. When the session ends (or is dropped) the
//! window closes and a waiting sender gets an error instead of waiting forever.

use std::sync::{Arc, Mutex};

use msb_protocol::types::*;
use msb_protocol::{Payload, STDIN_WINDOW};
use tokio::sync::Semaphore;

use super::client::{reply_within, AgentClient, AgentError, Session};

/// Largest stdin chunk per frame: a quarter of the window, so chunks travel while earlier ones
/// are being acknowledged.
const STDIN_CHUNK: usize = STDIN_WINDOW / 4;

/// What happens to a process, in order: `Started`, output, then one of `Exited`/`Failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// It runs, with this pid in the VM.
    Started(u32),
    /// stdout (or terminal) bytes.
    Stdout(Vec<u8>),
    /// stderr bytes.
    Stderr(Vec<u8>),
    /// It ended: exit code, or 128+signal.
    Exited(i32),
    /// It never ran.
    Failed(ExecFailed),
}

/// A process in the guest.
#[derive(Debug)]
pub struct ExecSession {
    session: Session,
    done: bool,
    /// `core.exec.started` (or the failure) arrived: from then on the process may run, and be
    /// silent, for as long as it likes; before, the guest has [`super::Deadlines::work`].
    answered: bool,
    window: StdinWindow,
}

/// Room for one session's unacknowledged stdin bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StdinWindow {
    room: Arc<Semaphore>,
    /// Bytes sent and not yet acknowledged: an acknowledgement never gives back more (the guest
    /// is not trusted to count right).
    unacked: Arc<Mutex<usize>>,
}

impl Default for StdinWindow {
    fn default() -> Self {
        Self {
            room: Arc::new(Semaphore::new(STDIN_WINDOW)),
            unacked: Arc::default(),
        }
    }
}

impl StdinWindow {
    /// Waits for room for `n` bytes (at most [`STDIN_WINDOW`]) and takes it; an error once the
    /// session ended.
    pub async fn reserve(&self, n: usize) -> Result<(), AgentError> {
        let n = n.min(STDIN_WINDOW);
        let permits = u32::try_from(n).expect("the window fits in u32");
        self.room
            .acquire_many(permits)
            .await
            .map_err(|_| AgentError::Closed("the process's session ended".into()))?
            .forget();
        *self.unacked.lock().unwrap_or_else(|e| e.into_inner()) += n;
        Ok(())
    }

    /// Gives back the room of `n` acknowledged bytes (no more than are outstanding).
    pub fn release(&self, n: u64) {
        let mut unacked = self.unacked.lock().unwrap_or_else(|e| e.into_inner());
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(*unacked);
        *unacked -= n;
        self.room.add_permits(n);
    }

    /// Ends the window: waiting and later reservations fail.
    pub fn close(&self) {
        self.room.close();
    }
}

/// Sends one process's stdin, within its window. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StdinSender {
    client: AgentClient,
    id: u32,
    window: StdinWindow,
}

impl StdinSender {
    /// Sends `data`, in chunks, each once the window has room for it.
    pub async fn write(&self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(STDIN_CHUNK) {
            self.window.reserve(chunk.len()).await?;
            self.client
                .send(
                    self.id,
                    &ExecStdin {
                        data: chunk.to_vec(),
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Closes stdin (EOF).
    pub async fn close(&self) -> Result<(), AgentError> {
        self.client
            .send(self.id, &ExecStdin { data: Vec::new() })
            .await
    }
}

impl AgentClient {
    /// Starts a process. Its first event (`Started` or `Failed`) must come within
    /// [`super::Deadlines::work`], else [`ExecSession::next`] fails with a timeout.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecSession, AgentError> {
        Ok(ExecSession {
            session: self.request(req).await?,
            done: false,
            answered: false,
            window: StdinWindow::default(),
        })
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.window.close();
    }
}

impl ExecSession {
    /// The correlation id.
    pub fn id(&self) -> u32 {
        self.session.id()
    }

    /// The next event; after `Exited`/`Failed` there are none (an error is returned).
    /// Acknowledgements of stdin are taken in passing (they open the window).
    pub async fn next(&mut self) -> Result<ExecEvent, AgentError> {
        let ev = self.next_event().await;
        if !matches!(
            ev,
            Ok(ExecEvent::Started(_) | ExecEvent::Stdout(_) | ExecEvent::Stderr(_))
        ) {
            self.window.close();
        }
        ev
    }

    async fn next_event(&mut self) -> Result<ExecEvent, AgentError> {
        if self.done {
            return Err(AgentError::Protocol("the process already ended".into()));
        }
        let m = loop {
            let m = if self.answered {
                self.session.recv().await?
            } else {
                let deadline = self.session.client().deadlines().work;
                reply_within(ExecRequest::TYPE, deadline, self.session.recv()).await?
            };
            if m.kind != ExecStdinAck::TYPE {
                break m;
            }
            self.window.release(m.decode::<ExecStdinAck>()?.bytes);
        };
        self.answered = true;
        let ev = match m.kind.as_str() {
            ExecStarted::TYPE => ExecEvent::Started(m.decode::<ExecStarted>()?.pid),
            ExecStdout::TYPE => ExecEvent::Stdout(m.decode::<ExecStdout>()?.data),
            ExecStderr::TYPE => ExecEvent::Stderr(m.decode::<ExecStderr>()?.data),
            ExecExited::TYPE => ExecEvent::Exited(m.decode::<ExecExited>()?.code),
            ExecFailed::TYPE => ExecEvent::Failed(m.decode::<ExecFailed>()?),
            ErrorReply::TYPE => {
                let e = m.decode::<ErrorReply>()?;
                self.done = true;
                return Err(AgentError::Refused {
                    request: ExecRequest::TYPE.into(),
                    kind: e.kind,
                    message: e.message,
                });
            }
            other => return Err(AgentError::Protocol(format!("{other} in an exec session"))),
        };
        self.done = matches!(ev, ExecEvent::Exited(_) | ExecEvent::Failed(_));
        Ok(ev)
    }

    /// A sender of stdin for another task (the window opens only while this session is read).
    pub fn stdin(&self) -> StdinSender {
        StdinSender {
            client: self.session.client().clone(),
            id: self.session.id(),
            window: self.window.clone(),
        }
    }

    /// Resizes its terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.session.send(&ExecResize { rows, cols }).await
    }

    /// Signals it (with `all`, every process of its container).
    pub async fn signal(&self, signal: i32, all: bool) -> Result<(), AgentError> {
        self.session.send(&ExecSignal { signal, all }).await
    }

    /// Runs to the end collecting output: (stdout, stderr, exit code or failure).
    pub async fn collect(
        mut self,
    ) -> Result<(Vec<u8>, Vec<u8>, Result<i32, ExecFailed>), AgentError> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match self.next().await? {
                ExecEvent::Started(_) => {}
                ExecEvent::Stdout(d) => out.extend(d),
                ExecEvent::Stderr(d) => err.extend(d),
                ExecEvent::Exited(c) => return Ok((out, err, Ok(c))),
                ExecEvent::Failed(f) => return Ok((out, err, Err(f))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn waits(fut: impl std::future::Future) -> bool {
        tokio::time::timeout(Duration::from_millis(50), fut)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn the_window_holds_what_is_unacknowledged_and_closes_for_good() {
        let w = StdinWindow::default();
        w.reserve(STDIN_WINDOW - 10).await.unwrap();
        w.reserve(10).await.unwrap();
        assert!(waits(w.reserve(1)).await, "a full window waits");

        w.release(100);
        w.reserve(100).await.unwrap();
        assert!(waits(w.reserve(1)).await);

        // A guest that acknowledges more than was sent gives back only what was outstanding
        // (and cannot overflow the semaphore).
        w.release(u64::MAX);
        w.reserve(STDIN_WINDOW).await.unwrap();
        assert!(waits(w.reserve(1)).await);

        // The session ends: a waiting sender fails instead of waiting forever.
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.reserve(1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.close();
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "agent connection closed: the process's session ended"
        );
        assert!(w.reserve(0).await.is_err());
    }
}
