//! A client of containerd's CRI streaming server: what kubelet's `kubectl exec`, `attach` and
//! `port-forward` go through.
//!
//! The CRI calls `Exec`, `Attach` and `PortForward` only return a URL on the streaming server
//! (kubelet's streaming library, vendored in containerd: `pkg/cri/streaming`); the session runs
//! on that URL. The server takes SPDY or WebSocket; this client speaks WebSocket with the
//! subprotocol [`PROTOCOL`] (`v4.channel.k8s.io`), where every binary message starts with a
//! channel byte:
//!
//! - exec and attach ([`RemoteCommand`]): 0 stdin, 1 stdout, 2 stderr, 3 the status (a JSON
//!   `metav1.Status`, written once the command or attach ends), 4 terminal resize (JSON
//!   `{"Width":w,"Height":h}`). Right after the upgrade the server writes an empty message on the
//!   first of stdout, stderr, error that is open. v4 has no half-close of stdin: the client ends
//!   its input only by closing the whole connection, which containerd turns into `CloseIO` on the
//!   process.
//! - port-forward ([`PortForward`]): two channels per port of the CRI request, data (`2i`) and
//!   error (`2i+1`); the first message the server writes on each carries the port, 2 bytes
//!   little-endian. The ports come from `PortForwardRequest.port` (kubelet's SPDY client names
//!   them per stream instead, which WebSocket cannot).
//!
//! A URL is good for one connection (the server consumes its token). Every read has a deadline.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// The WebSocket subprotocol asked for: binary channels with a JSON status (`v4`).
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// Channel numbers of exec and attach.
pub mod channel {
    /// The process's stdin (client to server).
    pub const STDIN: u8 = 0;
    /// The process's stdout.
    pub const STDOUT: u8 = 1;
    /// The process's stderr.
    pub const STDERR: u8 = 2;
    /// The status of the command once it ended (JSON `metav1.Status`).
    pub const ERROR: u8 = 3;
    /// Terminal size changes (client to server).
    pub const RESIZE: u8 = 4;
}

/// How long the TCP connection and the upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One WebSocket connection to the streaming server.
#[derive(Debug)]
struct Conn {
    ws: WebSocket<TcpStream>,
    closed: bool,
}

/// What one read brought.
enum Read {
    /// A channel's message: its number and data.
    Frame(u8, Vec<u8>),
    /// The server closed the connection.
    Closed,
    /// Nothing before the deadline.
    TimedOut,
}

impl Conn {
    /// Connects to `url` (`http://host:port/...`, as the CRI returns it) and upgrades with
    /// [`PROTOCOL`].
    fn open(url: &str) -> anyhow::Result<Conn> {
        let ws_url = url
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .ok_or_else(|| anyhow!("streaming URL {url:?} is not http:// (TLS is off here)"))?;
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .with_context(|| format!("streaming URL {url:?}"))?;
        let host = request
            .uri()
            .authority()
            .ok_or_else(|| anyhow!("streaming URL {url:?} has no host"))?
            .to_string();
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        headers.insert(
            "Origin",
            HeaderValue::from_str(&format!("http://{host}")).context("origin")?,
        );
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("resolve {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to nothing"))?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connect to the streaming server {addr}"))?;
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        tcp.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let (ws, response) = tungstenite::client(request, tcp)
            .map_err(|e| anyhow!("WebSocket upgrade of {url}: {e}"))?;
        let negotiated = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if negotiated != Some(PROTOCOL) {
            bail!("{url}: the server chose subprotocol {negotiated:?}, not {PROTOCOL}");
        }
        Ok(Conn { ws, closed: false })
    }

    /// Sends `data` on `channel`.
    fn send(&mut self, channel: u8, data: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.ws
            .send(Message::binary(frame))
            .with_context(|| format!("send {} bytes on channel {channel}", data.len()))
    }

    /// Reads one message, waiting at most until `deadline`.
    fn read(&mut self, deadline: Instant) -> anyhow::Result<Read> {
        if self.closed {
            return Ok(Read::Closed);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Read::TimedOut);
            }
            self.ws.get_ref().set_read_timeout(Some(left))?;
            match self.ws.read() {
                Ok(Message::Binary(data)) => {
                    let Some((&channel, rest)) = data.split_first() else {
                        bail!("a binary message without a channel byte");
                    };
                    return Ok(Read::Frame(channel, rest.to_vec()));
                }
                Ok(Message::Text(text)) => bail!("a text message on a binary protocol: {text:?}"),
                Ok(Message::Close(_)) => {
                    self.closed = true;
                    return Ok(Read::Closed);
                }
                // Pings are answered by tungstenite itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return Ok(Read::TimedOut);
                }
                // The server's WebSocket library may drop the TCP connection right after its
                // close frame (or without one): a close all the same.
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                ) => {
                    self.closed = true;
                    return Ok(Read::Closed);
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::BrokenPipe
                            | ErrorKind::UnexpectedEof
                    ) =>
                {
                    self.closed = true;
                    return Ok(Read::Closed);
                }
                Err(e) => return Err(e).context("read from the streaming server"),
            }
        }
    }

    /// Closes the connection from this side at once (both directions of the TCP connection):
    /// the server sees its end as the end of every input channel.
    fn shutdown(&mut self) {
        // A close frame first, as a polite client sends it; then the socket goes whatever the
        // server answers.
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        let _ = self.ws.get_ref().shutdown(std::net::Shutdown::Both);
        self.closed = true;
    }
}

/// The status the server writes on the error channel when an exec or attach ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// `Success` or `Failure`.
    pub status: String,
    /// The reason of a failure: `NonZeroExitCode`, `InternalError`.
    pub reason: String,
    /// A failure's message.
    pub message: String,
    /// The exit code: 0 on success, the `ExitCode` cause of `NonZeroExitCode`, `None` for any
    /// other failure.
    pub exit_code: Option<i32>,
}

impl Status {
    /// Parses the v4 status (`metav1.Status` as JSON).
    pub fn parse(json: &[u8]) -> anyhow::Result<Status> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .with_context(|| format!("status {:?}", String::from_utf8_lossy(json)))?;
        let field = |name: &str| {
            v.get(name)
                .and_then(|f| f.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let status = field("status");
        let reason = field("reason");
        let exit_code = match (status.as_str(), reason.as_str()) {
            ("Success", _) => Some(0),
            (_, "NonZeroExitCode") => v
                .pointer("/details/causes")
                .and_then(|c| c.as_array())
                .and_then(|causes| {
                    causes
                        .iter()
                        .find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))
                })
                .and_then(|c| c.get("message")?.as_str()?.parse().ok()),
            _ => None,
        };
        Ok(Status {
            status,
            reason,
            message: field("message"),
            exit_code,
        })
    }
}

/// What an exec or attach session has received so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Everything on stdout (the terminal's output, with a tty).
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// The status, once the server wrote it.
    pub status: Option<Status>,
    /// Whether the server closed the connection.
    pub closed: bool,
}

impl Output {
    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An exec or attach session.
#[derive(Debug)]
pub struct RemoteCommand {
    conn: Conn,
    out: Output,
}

impl RemoteCommand {
    /// Opens the session of an `Exec` or `Attach` URL.
    pub fn connect(url: &str) -> anyhow::Result<RemoteCommand> {
        Ok(RemoteCommand {
            conn: Conn::open(url)?,
            out: Output::default(),
        })
    }

    /// Sends `data` to the process's stdin.
    pub fn stdin(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.conn.send(channel::STDIN, data)
    }

    /// Sends a terminal size: `width` columns, `height` rows.
    pub fn resize(&mut self, width: u16, height: u16) -> anyhow::Result<()> {
        let json = format!(r#"{{"Width":{width},"Height":{height}}}"#);
        self.conn.send(channel::RESIZE, json.as_bytes())
    }

    /// What arrived so far.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// Reads until `done` holds for what arrived (checked before every read too), the server
    /// closes, or `within` has passed; whether `done` holds at the end.
    pub fn read_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Output) -> bool,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.out) {
                return Ok(true);
            }
            match self.conn.read(deadline)? {
                Read::Frame(ch, data) => self.take(ch, data)?,
                Read::Closed => {
                    self.out.closed = true;
                    return Ok(done(&self.out));
                }
                Read::TimedOut => return Ok(false),
            }
        }
    }

    /// Reads until the server closes the session (the command ended, its status written);
    /// fails when that takes longer than `within`.
    pub fn wait(&mut self, within: Duration) -> anyhow::Result<Output> {
        if !self.read_until(within, |o| o.closed)? {
            bail!(
                "the session did not end within {within:?}; so far: {:?}",
                self.out
            );
        }
        Ok(self.out.clone())
    }

    /// Closes the session from the client's side, which ends the process's stdin.
    pub fn close(mut self) -> Output {
        self.conn.shutdown();
        self.out
    }

    fn take(&mut self, ch: u8, data: Vec<u8>) -> anyhow::Result<()> {
        match ch {
            channel::STDOUT => self.out.stdout.extend(data),
            channel::STDERR => self.out.stderr.extend(data),
            // The server's first message may be an empty one here (nothing else open).
            channel::ERROR if data.is_empty() => {}
            channel::ERROR => {
                if let Some(first) = &self.out.status {
                    bail!("a second status after {first:?}");
                }
                self.out.status = Some(Status::parse(&data)?);
            }
            other => bail!("a message on channel {other} from the server"),
        }
        Ok(())
    }
}

/// What a port-forward session of one port has received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The bytes the pod's port sent back (the port header taken off).
    pub data: Vec<u8>,
    /// The error channel's text (the port header taken off): why the forward failed.
    pub error: String,
    /// Whether the server closed the connection.
    pub closed: bool,
}

/// A port-forward session of one port.
#[derive(Debug)]
pub struct PortForward {
    conn: Conn,
    port: u16,
    headers_seen: [bool; 2],
    got: Forwarded,
}

impl PortForward {
    /// Opens the session of a `PortForward` URL whose request named `port` alone.
    pub fn connect(url: &str, port: u16) -> anyhow::Result<PortForward> {
        Ok(PortForward {
            conn: Conn::open(url)?,
            port,
            headers_seen: [false; 2],
            got: Forwarded::default(),
        })
    }

    /// Sends `data` to the pod's port.
    pub fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.conn.send(0, data)
    }

    /// Ends the session from the client's side (a WebSocket close: the end of the data the
    /// pod's port receives), then reads until the server closes it too; fails after `within`.
    pub fn finish(mut self, within: Duration) -> anyhow::Result<Forwarded> {
        // A session the server ended already (a refused port) cannot take the close frame:
        // what it said before is read all the same.
        let _ = self.conn.ws.close(None);
        let _ = self.conn.ws.flush();
        self.wait(within)
    }

    /// Reads until the server closes the session (the connection in the pod ended, or could
    /// not be made); fails after `within`.
    pub fn wait(&mut self, within: Duration) -> anyhow::Result<Forwarded> {
        let deadline = Instant::now() + within;
        loop {
            match self.conn.read(deadline)? {
                Read::Frame(ch, data) => self.take(ch, data)?,
                Read::Closed => {
                    self.got.closed = true;
                    return Ok(self.got.clone());
                }
                Read::TimedOut => bail!(
                    "the port-forward session did not end within {within:?}; so far: {:?}",
                    self.got
                ),
            }
        }
    }

    fn take(&mut self, ch: u8, data: Vec<u8>) -> anyhow::Result<()> {
        let i = usize::from(ch);
        if i > 1 {
            bail!("a message on channel {ch}, but one port has channels 0 and 1");
        }
        let mut data = data.as_slice();
        if !self.headers_seen[i] {
            let Some((header, rest)) = data.split_first_chunk::<2>() else {
                bail!("channel {ch}: first message {data:?} is shorter than the port header");
            };
            let port = u16::from_le_bytes(*header);
            if port != self.port {
                bail!("channel {ch}: port header {port}, expected {}", self.port);
            }
            self.headers_seen[i] = true;
            data = rest;
        }
        if i == 0 {
            self.got.data.extend_from_slice(data);
        } else {
            self.got.error.push_str(&String::from_utf8_lossy(data));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_success_and_exit_codes() {
        let ok = Status::parse(br#"{"metadata":{},"status":"Success"}"#).unwrap();
        assert_eq!((ok.status.as_str(), ok.exit_code), ("Success", Some(0)));
        let failed = Status::parse(
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                failed.status.as_str(),
                failed.reason.as_str(),
                failed.exit_code
            ),
            ("Failure", "NonZeroExitCode", Some(3))
        );
        let internal = Status::parse(
            br#"{"metadata":{},"status":"Failure","message":"boom","reason":"InternalError","code":500}"#,
        )
        .unwrap();
        assert_eq!(
            (internal.exit_code, internal.message.as_str()),
            (None, "boom")
        );
        assert!(Status::parse(b"not json").is_err());
    }
}
