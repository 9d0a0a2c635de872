//! Exec sessions on top of [`Session`].

use msb_protocol::types::*;
use msb_protocol::Payload;

use super::client::{AgentClient, AgentError, Session};

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
}

impl AgentClient {
    /// Starts a process.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecSession, AgentError> {
        Ok(ExecSession {
            session: self.request(req).await?,
            done: false,
        })
    }
}

impl ExecSession {
    /// The correlation id.
    pub fn id(&self) -> u32 {
        self.session.id()
    }

    /// The next event; after `Exited`/`Failed` there are none (an error is returned).
    pub async fn next(&mut self) -> Result<ExecEvent, AgentError> {
        if self.done {
            return Err(AgentError::Protocol("the process already ended".into()));
        }
        let m = self.session.recv().await?;
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

    /// Bytes for stdin (at most [`msb_protocol::MAX_STREAM_CHUNK`] per frame; longer input is split).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(msb_protocol::MAX_STREAM_CHUNK) {
            self.session
                .send(&ExecStdin {
                    data: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    /// Closes stdin (EOF).
    pub async fn close_stdin(&self) -> Result<(), AgentError> {
        self.session.send(&ExecStdin { data: Vec::new() }).await
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
