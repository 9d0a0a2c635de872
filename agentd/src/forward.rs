//! Port forwarding (`core.port.*`, see `msb_protocol::port`): the VM's listening TCP ports,
//! reported to the host, and one connection per host session, relayed both ways.
//!
//! - [`watch_listening`]: a thread that reads `/proc/net/tcp` and `/proc/net/tcp6` and sends
//!   `core.port.listening` when the set of listening ports changed. Reading two small proc files
//!   is the cheapest way to learn of a new listener (there is no notification for `listen(2)`);
//!   it starts with the pod network, so a VM without one pays nothing. It reads every
//!   [`WATCH_INTERVAL`] for [`ACTIVE_FOR`] after a process started ([`activity`]) or the set
//!   changed, when servers come up, and every [`IDLE_WATCH_INTERVAL`] otherwise: under TCG each
//!   wake-up of an idle guest costs its host CPU, five a second per pod added up.
//! - [`Forwards`]: the sessions. [`Forwards::connect`] registers the session before its thread
//!   connects, so data the host sends right after `core.port.connected` always finds it. Each
//!   connection has a writer thread (host data to the socket, acknowledged once written) and a
//!   reader thread (socket to host, at most [`PORT_WINDOW`] bytes unacknowledged). The
//!   dispatcher only queues and never blocks: its queue is bounded by the host's own window.
//!
//! A session whose host client left ([`Forwards::forget`]) is reset and sends nothing more, as
//! exec sessions do: its id range may belong to a new client.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use msb_protocol::port::{
    PortAck, PortClosed, PortConnected, PortData, PortListening, MAX_LISTENING_PORTS, PORT_CHUNK,
    PORT_WINDOW,
};
use msb_protocol::Payload;

use crate::port::Out;

/// How often the listening ports are read while the guest is active.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// How often they are read once nothing started and nothing changed for [`ACTIVE_FOR`].
pub const IDLE_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// How long after a process started or the ports changed the watcher reads them often.
pub const ACTIVE_FOR: Duration = Duration::from_secs(10);

/// When a process last started, and the condition variable the watcher waits on.
static ACTIVITY: (Mutex<Option<Instant>>, Condvar) = (Mutex::new(None), Condvar::new());

/// A process started in the guest (it may be a server about to listen): the watcher reads the
/// ports at once and then often again for [`ACTIVE_FOR`].
pub fn activity() {
    *ACTIVITY.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    ACTIVITY.1.notify_all();
}

/// The watcher's pause after a read: short while the guest is active (`last_change` or the last
/// [`activity`] within [`ACTIVE_FOR`]), long otherwise; an [`activity`] ends it early.
fn pause(last_change: Instant) {
    let (lock, woken) = &ACTIVITY;
    let started = *lock.lock().unwrap_or_else(|e| e.into_inner());
    let active = [Some(last_change), started]
        .into_iter()
        .flatten()
        .any(|t| t.elapsed() < ACTIVE_FOR);
    let interval = if active {
        WATCH_INTERVAL
    } else {
        IDLE_WATCH_INTERVAL
    };
    let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    let _ = woken
        .wait_timeout_while(guard, interval, |now| *now == started)
        .unwrap_or_else(|e| e.into_inner());
}

/// How long one connection attempt may take (a loopback refusal is immediate).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The ports listening now, each with the addresses it listens on.
pub type Listening = BTreeMap<u16, Vec<IpAddr>>;

/// Starts the watcher thread, once per VM (later calls do nothing).
pub fn watch_listening(out: Out, forwards: Forwards) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("port-watch".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut reported: Option<Vec<u16>> = None;
            let mut last_change = Instant::now();
            loop {
                let now = listening();
                let mut ports: Vec<u16> = now.keys().copied().collect();
                ports.truncate(MAX_LISTENING_PORTS);
                *forwards.listening.lock().unwrap_or_else(|e| e.into_inner()) = now;
                if reported.as_ref() != Some(&ports) {
                    tracing::debug!(?ports, "listening ports");
                    out.send(
                        msb_protocol::CONTROL_ID,
                        &PortListening {
                            ports: ports.clone(),
                        },
                    );
                    reported = Some(ports);
                    last_change = Instant::now();
                }
                pause(last_change);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the port watcher: {e}");
    }
}

/// The TCP ports in state LISTEN in agentd's network namespace (the VM's, which the pod's
/// containers share). A file that cannot be read (no IPv6 in the kernel) adds nothing.
pub fn listening() -> Listening {
    let mut all = Listening::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(path) {
            for (ip, port) in parse_listening(&text, v6) {
                let addrs = all.entry(port).or_default();
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
    }
    all
}

/// The `(address, port)` of each LISTEN line (state `0A`) of a `/proc/net/tcp{,6}` table.
/// Addresses there are the kernel's words in host byte order, printed in hex.
pub fn parse_listening(text: &str, v6: bool) -> Vec<(IpAddr, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = if v6 {
                if addr.len() != 32 {
                    return None;
                }
                let mut bytes = [0u8; 16];
                for (i, word) in bytes.chunks_mut(4).enumerate() {
                    let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                    word.copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                let w = u32::from_str_radix(addr, 16).ok()?;
                IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes()))
            };
            Some((ip, port))
        })
        .collect()
}

/// Where a connection to `port` is tried, in order: the loopback addresses (a listener on a
/// wildcard address answers there), then each specific address the port listens on.
pub fn candidates(port: u16, listening: &Listening) -> Vec<SocketAddr> {
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    for ip in listening.get(&port).into_iter().flatten() {
        if !ip.is_unspecified() && !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// What the writer thread of a connection is told.
#[derive(Debug)]
enum ToSocket {
    /// Host data; empty: the host's peer sent EOF.
    Data(Vec<u8>),
    /// The host's peer is gone (`core.port.close`), or the session was forgotten.
    Reset,
    /// The reader thread ended: at EOF (`None`) or on an error.
    ReaderDone(Option<String>),
}

/// The guest's data the host has not acknowledged yet; the reader waits while it is a full
/// window.
#[derive(Debug, Default)]
struct Credit {
    state: Mutex<CreditState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct CreditState {
    unacked: usize,
    /// The session is ending: the reader stops waiting.
    ending: bool,
}

impl Credit {
    /// Waits until some of the window is free; how much, or `None` once the session ends.
    fn wait(&self) -> Option<usize> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.ending {
                return None;
            }
            if s.unacked < PORT_WINDOW {
                return Some(PORT_WINDOW - s.unacked);
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn sent(&self, n: usize) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).unacked += n;
    }

    fn acked(&self, n: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.unacked = s
            .unacked
            .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
        self.changed.notify_all();
    }

    fn end(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).ending = true;
        self.changed.notify_all();
    }
}

/// Whether a session may still send; held while a frame is queued, so that nothing of a
/// forgotten session is queued after [`Forwards::forget`] returned.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
}

impl Gate {
    fn send<P: Payload>(&self, out: &Out, id: u32, p: &P) {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if !*closed {
            out.send(id, p);
        }
    }

    fn close(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// One session as the dispatcher sees it.
#[derive(Debug)]
struct Conn {
    to_socket: Sender<ToSocket>,
    /// Host data queued for the writer and not yet written.
    queued: Arc<Mutex<usize>>,
    credit: Arc<Credit>,
    gate: Arc<Gate>,
    /// The connected socket, shut down from here on a reset: the writer may be blocked writing
    /// to a peer that does not read.
    socket: Arc<Mutex<Option<TcpStream>>>,
}

impl Conn {
    fn reset(&self) {
        self.credit.end();
        if let Some(s) = &*self.socket.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let _ = self.to_socket.send(ToSocket::Reset);
    }
}

/// The VM's port-forwarding sessions, by correlation id. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Forwards {
    conns: Arc<Mutex<HashMap<u32, Conn>>>,
    /// The watcher's latest reading, for the addresses a port listens on.
    listening: Arc<Mutex<Listening>>,
}

impl Forwards {
    /// `core.port.connect` on `id`: registers the session and starts its connection thread,
    /// which answers `core.port.connected` or `core.port.closed`.
    pub fn connect(&self, out: &Out, id: u32, port: u16) {
        let (tx, rx) = channel();
        let conn = Conn {
            to_socket: tx.clone(),
            queued: Arc::default(),
            credit: Arc::default(),
            gate: Arc::default(),
            socket: Arc::default(),
        };
        let addrs = candidates(
            port,
            &self.listening.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let session = Session {
            id,
            out: out.clone(),
            queued: conn.queued.clone(),
            credit: conn.credit.clone(),
            gate: conn.gate.clone(),
            socket: conn.socket.clone(),
            conns: self.conns.clone(),
        };
        {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            if conns.contains_key(&id) {
                drop(conns);
                tracing::warn!(id, "core.port.connect on a session that is open");
                return;
            }
            conns.insert(id, conn);
        }
        thread("port-conn", move || session.run(&addrs, tx, rx));
    }

    /// `core.port.data` on `id`: queued for the writer. More than the window unacknowledged is
    /// the host's fault: the session is reset.
    pub fn data(&self, id: u32, data: Vec<u8>) {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = conns.get(&id) else {
            tracing::debug!(id, "core.port.data for no session");
            return;
        };
        let len = data.len();
        let mut queued = c.queued.lock().unwrap_or_else(|e| e.into_inner());
        if *queued + len > PORT_WINDOW {
            tracing::warn!(
                id,
                "{len} bytes of port data over the window ({} queued): resetting",
                *queued
            );
            c.reset();
            return;
        }
        *queued += len;
        let _ = c.to_socket.send(ToSocket::Data(data));
    }

    /// `core.port.ack` on `id`: the host wrote `bytes` more of the guest's data.
    pub fn ack(&self, id: u32, bytes: u64) {
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            c.credit.acked(bytes);
        }
    }

    /// `core.port.close` on `id`: the host's peer is gone.
    pub fn close(&self, id: u32) {
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            c.reset();
        }
    }

    /// Resets the sessions of `range` (a relay client that left; every id when the host
    /// disconnected) without another frame; returns how many.
    pub fn forget(&self, range: Range<u32>) -> usize {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<u32> = conns
            .keys()
            .copied()
            .filter(|i| range.contains(i))
            .collect();
        for id in &ids {
            if let Some(c) = conns.remove(id) {
                c.gate.close();
                c.reset();
            }
        }
        ids.len()
    }
}

/// A connection's own state, moved into its threads.
struct Session {
    id: u32,
    out: Out,
    queued: Arc<Mutex<usize>>,
    credit: Arc<Credit>,
    gate: Arc<Gate>,
    socket: Arc<Mutex<Option<TcpStream>>>,
    conns: Arc<Mutex<HashMap<u32, Conn>>>,
}

impl Session {
    /// Connects, then writes host data to the socket until both directions ended or either
    /// failed; then ends the session with `core.port.closed`.
    fn run(self, addrs: &[SocketAddr], tx: Sender<ToSocket>, rx: Receiver<ToSocket>) {
        let stream = match connect(addrs) {
            Ok(s) => s,
            Err(e) => return self.finish(Some(e)),
        };
        let (reader, handle) = match (stream.try_clone(), stream.try_clone()) {
            (Ok(r), Ok(h)) => (r, h),
            (Err(e), _) | (_, Err(e)) => {
                return self.finish(Some(format!("clone the socket: {e}")))
            }
        };
        *self.socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        self.gate.send(&self.out, self.id, &PortConnected {});
        let (id, out, gate, credit) = (
            self.id,
            self.out.clone(),
            self.gate.clone(),
            self.credit.clone(),
        );
        thread("port-read", move || {
            let done = pump_to_host(id, reader, &out, &gate, &credit);
            let _ = tx.send(ToSocket::ReaderDone(done.err()));
        });
        let error = self.pump_to_socket(&stream, &rx);
        self.finish(error);
    }

    /// The writer: host data to the socket, acknowledged once written. Returns when both
    /// directions are done (the error that ended the session, if one did).
    fn pump_to_socket(&self, mut stream: &TcpStream, rx: &Receiver<ToSocket>) -> Option<String> {
        let mut error = None;
        let (mut host_eof, mut reader_done) = (false, false);
        let mut reset = false;
        while let Ok(msg) = rx.recv() {
            match msg {
                ToSocket::Data(data) if data.is_empty() => {
                    host_eof = true;
                    let _ = stream.shutdown(Shutdown::Write);
                }
                ToSocket::Data(data) => {
                    let len = data.len();
                    {
                        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
                        *q = q.saturating_sub(len);
                    }
                    if host_eof || reset {
                        continue;
                    }
                    match stream.write_all(&data) {
                        Ok(()) => {
                            self.gate
                                .send(&self.out, self.id, &PortAck { bytes: len as u64 })
                        }
                        Err(e) => {
                            error.get_or_insert(format!("write: {e}"));
                            reset = true;
                            self.credit.end();
                            let _ = stream.shutdown(Shutdown::Both);
                        }
                    }
                }
                ToSocket::Reset => {
                    reset = true;
                    self.credit.end();
                    let _ = stream.shutdown(Shutdown::Both);
                }
                ToSocket::ReaderDone(e) => {
                    reader_done = true;
                    if let Some(e) = e {
                        error.get_or_insert(e);
                        reset = true;
                        let _ = stream.shutdown(Shutdown::Both);
                    }
                }
            }
            if reader_done && (host_eof || reset) {
                break;
            }
        }
        error
    }

    /// Sends `core.port.closed` (unless forgotten) and forgets the session.
    fn finish(self, error: Option<String>) {
        self.credit.end();
        {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            // Under the map's lock: `forget` either removed it first (closing the gate) or finds
            // it gone.
            self.gate.send(&self.out, self.id, &PortClosed { error });
            conns.remove(&self.id);
        }
        self.gate.close();
    }
}

/// Tries each address in turn; the last error names them all.
fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut errors = Vec::new();
    for a in addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => errors.push(format!("{a}: {e}")),
        }
    }
    Err(format!("connect {}", errors.join("; ")))
}

/// The reader: socket to host within the window; an empty `core.port.data` at EOF.
fn pump_to_host(
    id: u32,
    mut stream: TcpStream,
    out: &Out,
    gate: &Gate,
    credit: &Credit,
) -> Result<(), String> {
    let mut buf = vec![0u8; PORT_CHUNK];
    loop {
        let Some(room) = credit.wait() else {
            return Ok(());
        };
        let n = match stream.read(&mut buf[..room.min(PORT_CHUNK)]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        if n == 0 {
            gate.send(out, id, &PortData { data: Vec::new() });
            return Ok(());
        }
        credit.sent(n);
        gate.send(
            out,
            id,
            &PortData {
                data: buf[..n].to_vec(),
            },
        );
    }
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name(name.into())
        .stack_size(128 * 1024)
        .spawn(f)
    {
        tracing::error!("cannot start a {name} thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
   2: 07C8FEA9:1F90 0AC8FEA9:C350 01 00000000:00000000 00:00000000 00000000     0        0 1236 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 98 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_count_with_their_addresses() {
        assert_eq!(
            parse_listening(TCP, false),
            [
                (IpAddr::from([0, 0, 0, 0]), 8080),
                (IpAddr::from([127, 0, 0, 1]), 22),
            ]
        );
        assert_eq!(
            parse_listening(TCP6, true),
            [
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80),
                (IpAddr::V6(Ipv6Addr::LOCALHOST), 8081),
            ]
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "header\n 0: zz:1F90 0:0 0A\n 1: 00000000:XYZ 0:0 0A\n 2: 00000000 0:0 0A\n3:\n";
        assert!(parse_listening(text, false).is_empty());
        assert!(parse_listening("header\n 0: 0000:0050 0:0 0A\n", true).is_empty());
    }

    #[test]
    fn loopback_first_then_the_specific_addresses() {
        let mut l = Listening::new();
        l.insert(
            8080,
            vec![
                IpAddr::from([0, 0, 0, 0]),
                IpAddr::from([169, 254, 200, 7]),
                IpAddr::from([127, 0, 0, 1]),
            ],
        );
        let got: Vec<String> = candidates(8080, &l).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["127.0.0.1:8080", "[::1]:8080", "169.254.200.7:8080"]);
        assert_eq!(candidates(9, &l).len(), 2);
    }
}
