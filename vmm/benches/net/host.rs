//! The host side of the network benchmark: a TCP server on a thread of the bench
//! process, listening on a socket made inside the bench's namespace, serving the guest
//! program's three connections (UP, DOWN, ECHO; see tests/guest/net-test.c) one at a time
//! and timing them with the host's clock.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::NetNs;
use super::{HOST_IP, PERIOD, PORT};

/// A host-side read or write that waits this long means the guest is gone or stalled.
const IO_TIMEOUT: Duration = Duration::from_secs(180);

/// One period of the test pattern, byte i = i * 7 + i / 2048 (`pattern` in net-test.c).
fn pattern_table() -> Vec<u8> {
    (0..PERIOD as u64)
        .map(|i| (i.wrapping_mul(7) + (i >> 11)) as u8)
        .collect()
}

/// One bulk transfer as the host saw it.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
    /// Chunks that differed from the pattern (as counted by the receiving end).
    pub bad: u64,
}

impl Transfer {
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

/// What the host side saw during one VM run.
#[derive(Debug, Default)]
pub struct HostSide {
    pub up: Option<Transfer>,
    pub down: Option<Transfer>,
    /// When each echo message had fully arrived.
    pub arrivals: Vec<Instant>,
    pub errors: Vec<String>,
}

/// Makes the listening socket inside the namespace: a socket belongs to the namespace it
/// was created in, so only this short-lived thread has to enter it; the listener can be
/// used from any thread afterwards.
pub fn listen_in(ns: &NetNs) -> TcpListener {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        NetNs::enter_this_thread(&name);
        TcpListener::bind((HOST_IP, PORT))
    })
    .join()
    .expect("the thread entering the namespace panicked")
    .unwrap_or_else(|e| panic!("listen on {HOST_IP}:{PORT} in {}: {e}", ns.name))
}

/// The host side of one run: serves the guest's connections one at a time on a thread
/// until [`Server::finish`].
pub struct Server {
    stop: Arc<AtomicBool>,
    /// The connection being served, so that `finish` can cut it when the VM is gone.
    current: Arc<Mutex<Option<TcpStream>>>,
    thread: JoinHandle<HostSide>,
}

impl Server {
    pub fn start(listener: &TcpListener) -> Self {
        let listener = listener.try_clone().expect("clone the listener");
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let (s, c) = (stop.clone(), current.clone());
        let thread = std::thread::spawn(move || accept_loop(&listener, &s, &c));
        Self {
            stop,
            current,
            thread,
        }
    }

    /// Stops accepting, cuts a connection still open (a guest that died mid-transfer) and
    /// returns what was seen.
    pub fn finish(self) -> HostSide {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.current.lock().unwrap().take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.thread.join().expect("the host side panicked")
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    current: &Mutex<Option<TcpStream>>,
) -> HostSide {
    let table = pattern_table();
    let mut side = HostSide::default();
    while !stop.load(Ordering::SeqCst) {
        let s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Nothing to wait on but the guest: a short poll keeps this simple.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                side.errors.push(format!("accept: {e}"));
                break;
            }
        };
        *current.lock().unwrap() = s.try_clone().ok();
        // Checked after publishing the stream: either `finish` sees it and cuts it, or
        // this sees the stop.
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(e) = serve(&s, &table, &mut side) {
            side.errors.push(e);
        }
        *current.lock().unwrap() = None;
    }
    side
}

/// Serves one connection: its first line says what the guest wants.
fn serve(s: &TcpStream, table: &[u8], side: &mut HostSide) -> Result<(), String> {
    s.set_nonblocking(false).map_err(io("blocking"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("timeout"))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(io("timeout"))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    (&mut r)
        .take(64)
        .read_line(&mut line)
        .map_err(io("command"))?;
    let words: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    match (line.split_whitespace().next(), words.as_slice()) {
        (Some("UP"), &[bytes]) => side.up = Some(receive(&mut r, s, table, bytes)?),
        (Some("DOWN"), &[bytes]) => side.down = Some(send(&mut r, s, table, bytes)?),
        (Some("ECHO"), &[msg, rounds]) => side.arrivals = echo(&mut r, s, msg, rounds)?,
        _ => return Err(format!("unknown command {line:?}")),
    }
    Ok(())
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Counts the chunks of `data` (at stream offset `at`) that differ from the pattern.
fn check(table: &[u8], at: u64, data: &[u8]) -> u64 {
    let mut bad = 0;
    let mut done = 0;
    while done < data.len() {
        let off = (at as usize + done) % PERIOD;
        let n = (PERIOD - off).min(data.len() - done);
        bad += u64::from(data[done..done + n] != table[off..off + n]);
        done += n;
    }
    bad
}

/// UP: reads to EOF, checking the pattern, then answers "OK GOT BAD".
fn receive(
    r: &mut impl Read,
    mut s: &TcpStream,
    table: &[u8],
    want: u64,
) -> Result<Transfer, String> {
    let t0 = Instant::now();
    let (mut got, mut bad) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| format!("UP after {got} of {want} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        bad += check(table, got, &buf[..n]);
        got += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    s.write_all(format!("OK {got} {bad}\n").as_bytes())
        .map_err(|e| format!("UP answer: {e}"))?;
    Ok(Transfer {
        bytes: got,
        secs,
        bad,
    })
}

/// DOWN: sends `bytes` of the pattern, shuts down writing and waits for the guest's
/// "OK GOT BAD" (so the time covers the bytes reaching the guest's program).
fn send(
    r: &mut impl BufRead,
    mut s: &TcpStream,
    table: &[u8],
    bytes: u64,
) -> Result<Transfer, String> {
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let off = (sent % PERIOD as u64) as usize;
        let n = ((PERIOD - off) as u64).min(64 << 10).min(bytes - sent) as usize;
        s.write_all(&table[off..off + n])
            .map_err(|e| format!("DOWN after {sent} of {bytes} bytes: {e}"))?;
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("DOWN shutdown: {e}"))?;
    let mut answer = String::new();
    r.read_line(&mut answer)
        .map_err(|e| format!("DOWN answer: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let mut words = answer.split_whitespace().skip(1).map(str::parse::<u64>);
    match (words.next(), words.next()) {
        (Some(Ok(got)), Some(Ok(bad))) => Ok(Transfer {
            bytes: got,
            secs,
            bad,
        }),
        _ => Err(format!("DOWN: the guest answered {answer:?}")),
    }
}

/// ECHO: sends every `msg`-byte message back; returns when each had arrived.
fn echo(
    r: &mut impl Read,
    mut s: &TcpStream,
    msg: u64,
    rounds: u64,
) -> Result<Vec<Instant>, String> {
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut buf = vec![0u8; msg.min(PERIOD as u64) as usize];
    let mut arrivals = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        r.read_exact(&mut buf)
            .map_err(|e| format!("ECHO round {i}: {e}"))?;
        arrivals.push(Instant::now());
        s.write_all(&buf)
            .map_err(|e| format!("ECHO round {i}: {e}"))?;
    }
    Ok(arrivals)
}
