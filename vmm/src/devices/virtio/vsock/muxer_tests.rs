//! A guest that floods the muxer while it withholds its RX buffers: the queues of packets
//! for it stay bounded, and the muxer works normally once buffers come.

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::*;
use crate::devices::virtio::vsock::defs::HOST_CID;
use crate::devices::virtio::vsock::queues::{MAX_CONTROLS, MAX_LOOSE_RSTS};

const GUEST_CID: u64 = 3;
/// The host port with a listener behind it.
const LISTENING: u32 = 1;

/// A muxer on a fresh socket path, and a listener for guest connections to [`LISTENING`].
fn muxer() -> (Muxer, UnixListener, PathBuf) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "skiff-muxer-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let m = Muxer::new(GUEST_CID, &uds).unwrap();
    let l = UnixListener::bind(format!("{}_{LISTENING}", uds.display())).unwrap();
    (m, l, dir)
}

fn from_guest(src_port: u32, dst_port: u32, op: u16, flags: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc: 64 * 1024,
        ..Default::default()
    }
}

fn assert_bounded(m: &Muxer) {
    assert!(
        m.loose.len() <= MAX_LOOSE_RSTS,
        "{} loose RSTs",
        m.loose.len()
    );
    for c in m.conns.values() {
        assert!(c.controls.len() <= MAX_CONTROLS);
    }
}

/// Gives the muxer RX buffers until it has nothing left; returns what it sent.
fn drain(m: &mut Muxer) -> Vec<Header> {
    let mut out = Vec::new();
    while let Some(p) = m.next_packet(4096) {
        out.push(p.header);
        assert!(out.len() < 100_000, "the muxer never runs dry");
    }
    out
}

/// After a flood: a new guest connection to the listener is answered with a RESPONSE.
fn assert_still_works(m: &mut Muxer, listener: &UnixListener) {
    drain(m);
    assert!(m.loose.is_empty());
    listener.set_nonblocking(true).unwrap();
    while listener.accept().is_ok() {}
    let src = 60_000;
    m.on_guest_packet(&from_guest(src, LISTENING, OP_REQUEST, 0), &[]);
    let sent = drain(m);
    assert!(
        sent.iter().any(|h| {
            let (op, dst) = (h.op, h.dst_port);
            op == OP_RESPONSE && dst == src
        }),
        "no RESPONSE to a new connection after the flood"
    );
    assert!(listener.accept().is_ok(), "the host side was not dialled");
}

#[test]
fn a_flood_of_requests_to_unknown_ports_keeps_the_queues_bounded() {
    let (mut m, listener, dir) = muxer();
    for i in 0..20_000u32 {
        // Requests to ports nobody listens on, and data for connections that do not exist.
        m.on_guest_packet(&from_guest(i, 5000 + i % 7, OP_REQUEST, 0), &[]);
        m.on_guest_packet(&from_guest(i, 9, OP_RW, 0), &[1, 2, 3]);
    }
    assert_eq!(m.loose.len(), MAX_LOOSE_RSTS);
    // One connection flooded with packets that each call for a RST or a credit update.
    m.on_guest_packet(&from_guest(7, LISTENING, OP_REQUEST, 0), &[]);
    assert_eq!(m.conns.len(), 1);
    for i in 0..20_000u16 {
        let op = [OP_CREDIT_REQUEST, 99, OP_RESPONSE][i as usize % 3];
        m.on_guest_packet(&from_guest(7, LISTENING, op, 0), &[]);
    }
    assert_bounded(&m);
    assert_still_works(&mut m, &listener);
    let _ = std::fs::remove_dir_all(dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn any_packet_flood_without_rx_buffers_stays_bounded(
        packets in proptest::collection::vec(
            (0u32..4096, 0u32..8, 0u16..10, 0u32..4, 0usize..64),
            1..2000,
        ),
    ) {
        let (mut m, listener, dir) = muxer();
        for (src, dst, op, flags, len) in packets {
            // Connections to the listener come from few ports (its backlog is finite).
            let (src, dst) = if dst == 0 { (src % 32, LISTENING) } else { (src, 1000 + dst) };
            let mut h = from_guest(src, dst, op, flags);
            h.len = len as u32;
            m.on_guest_packet(&h, &vec![0xa5; len]);
            assert_bounded(&m);
        }
        assert_still_works(&mut m, &listener);
        let _ = std::fs::remove_dir_all(dir);
    }
}
