//! A small QMP client (QEMU's JSON control protocol), for the one job the runtime gives it:
//! saving a template VM ([`crate::template`]). Blocking, on one end of a socket pair whose other
//! end QEMU inherits (`-chardev socket,fd=N` + `-mon mode=control`: no path QEMU must reach),
//! with a deadline on every read and write: a QEMU that stops answering fails the save, never hangs it.
//!
//! One command at a time: `execute` writes it and reads lines until its answer, skipping
//! asynchronous events. `execute_with_fd` passes a descriptor along (`SCM_RIGHTS`), which is how
//! QEMU, jailed and unable to open host paths, gets the file it migrates into (`getfd`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The longest QMP line read (a `query-migrate` answer is well under 2 KiB).
const MAX_LINE: u64 = 64 * 1024;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed (or its deadline passed).
    #[error("QMP {what}")]
    Io {
        /// What was done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered with an error, or with something that is not QMP.
    #[error("QMP {command}: {message}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's `desc`, or what was wrong with the answer.
        message: String,
    },
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Talks QMP on `stream` (the runtime's end of a socket pair whose other end QEMU has),
    /// every read and write due by `deadline`: reads the greeting and enters command mode.
    pub fn new(stream: UnixStream, deadline: Instant) -> Result<Qmp, QmpError> {
        let io = |what: &'static str| {
            move |source| QmpError::Io {
                what: what.into(),
                source,
            }
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        stream
            .set_read_timeout(Some(left))
            .map_err(io("set a read deadline"))?;
        stream
            .set_write_timeout(Some(left))
            .map_err(io("set a write deadline"))?;
        let writer = stream.try_clone().map_err(io("clone the socket"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_line("the greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Refused {
                command: "greeting".into(),
                message: format!("not a QMP greeting: {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.send(command, arguments, None)?;
        self.answer(command)
    }

    /// Runs `command` with `fd` passed along the same message (`getfd`, `add-fd`).
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: RawFd,
    ) -> Result<Value, QmpError> {
        self.send(command, arguments, Some(fd))?;
        self.answer(command)
    }

    fn send(&mut self, command: &str, arguments: Value, fd: Option<RawFd>) -> Result<(), QmpError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        let io = |source| QmpError::Io {
            what: format!("send {command}"),
            source,
        };
        match fd {
            None => self.writer.write_all(line.as_bytes()).map_err(io),
            Some(fd) => {
                use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
                let iov = [std::io::IoSlice::new(line.as_bytes())];
                let fds = [fd];
                let sent = sendmsg::<()>(
                    self.writer.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(|e| io(e.into()))?;
                // The descriptor went with the first byte; the rest of a short send follows.
                self.writer.write_all(&line.as_bytes()[sent..]).map_err(io)
            }
        }
    }

    /// Reads until the answer to `command`, skipping events.
    fn answer(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let v = self.read_line(command)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Refused {
                    command: command.into(),
                    message: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no description")
                        .to_owned(),
                });
            }
            if v.get("event").is_none() {
                return Err(QmpError::Refused {
                    command: command.into(),
                    message: format!("unexpected answer {v}"),
                });
            }
        }
    }

    fn read_line(&mut self, what: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                what: format!("read the answer to {what}"),
                source,
            })?;
        if n == 0 || !line.ends_with('\n') {
            return Err(QmpError::Refused {
                command: what.into(),
                message: if n == 0 {
                    "QEMU closed the connection".into()
                } else {
                    format!("an answer longer than {MAX_LINE} bytes")
                },
            });
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Refused {
            command: what.into(),
            message: format!("not JSON ({e}): {}", line.trim()),
        })
    }
}
