//! A TCP relay in front of a server that sends the server's bytes on at a set rate, so that a
//! test can stop the server while a download is surely in the middle.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Small socket buffers on both sides: little can be in flight, so what the client has
/// received is close to what the server has sent.
const SOCKET_BUFFER: usize = 64 << 10;
const CHUNK: usize = 16 << 10;

/// Listens on 127.0.0.1 and relays each connection to `upstream`; stops on drop.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays to `upstream` (`127.0.0.1:PORT`), server-to-client at `bytes_per_second`
    /// (0: as fast as it comes).
    pub fn start(upstream: SocketAddr, bytes_per_second: u64) -> io::Result<Relay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rate = Arc::new(AtomicU64::new(bytes_per_second));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (rate, stop) = (rate.clone(), stop.clone());
            thread::spawn(move || accept_loop(listener, upstream, rate, stop))
        };
        Ok(Relay {
            addr,
            rate,
            stop,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`, for references.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Changes the rate of every connection, open ones included (0: unthrottled).
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let (rate, stop) = (rate.clone(), stop.clone());
                thread::spawn(move || {
                    let _ = relay(client, upstream, rate, stop);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = match TcpStream::connect(upstream) {
        Ok(s) => s,
        Err(e) => {
            let _ = client.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(&server, sockopt::RcvBuf, &SOCKET_BUFFER);
    let _ = setsockopt(&client, sockopt::SndBuf, &SOCKET_BUFFER);
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;

    // Client to server: requests, unthrottled.
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });

    // Server to client: at the rate, re-read for every chunk.
    let (mut from_server, mut to_client) = (server, client);
    from_server.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; CHUNK];
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let n = match from_server.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => break Err(e),
        };
        if let Err(e) = to_client.write_all(&buf[..n]) {
            break Err(e);
        }
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if let Some(us) = n
            .saturating_mul(1_000_000)
            .checked_div(rate.load(Ordering::Relaxed))
        {
            thread::sleep(Duration::from_micros(us));
        }
    };
    // The server went away (or we stop): so does the client's connection, mid-body if it was.
    let _ = to_client.shutdown(Shutdown::Both);
    let _ = from_server.shutdown(Shutdown::Both);
    result
}
