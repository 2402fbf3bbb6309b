//! The virtio-net device against a real TAP (in a network namespace of the test's own) and
//! virtqueues in guest memory, without a VM: frames cross both ways byte for byte; hostile
//! chains are dropped and counted while the good ones around them still pass; a guest
//! that gives no receive buffers makes the device stop wanting the TAP (frames wait in the
//! kernel's TAP queue, none is read) until buffers come, then they arrive in order.

mod common;

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use common::netns::{netns_available, NetNs};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::net::{MacAddr, Net, NetConfig, HDR_LEN, RX_QUEUE, TX_QUEUE};
use vmm::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm_sys_util::eventfd::EventFd;

const F_WRITE: u16 = 2;
const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const RX_RING: u64 = 0x1_0000;
const TX_RING: u64 = 0x2_0000;
const BUFS: u64 = 0x10_0000;
const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x22];

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// An Ethernet frame of our test ethertype carrying `tag` and `len` bytes of payload.
fn frame(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.push(tag);
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(tag)));
    f
}

/// A raw packet socket on the TAP's host side: what it sends, the device reads from the
/// TAP; what the device writes to the TAP, it receives.
struct PacketSocket(RawFd);

impl PacketSocket {
    fn bind(ifname: &str) -> Self {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the fd is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: reads the NUL-terminated name, alive for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0);
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = index as i32;
        // SAFETY: the address points to a live sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        Self(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: reads `frame.len()` bytes of a live slice.
        let n = unsafe { libc::send(self.0, frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame of our ethertype, within 10 s (generous: a loaded CI host).
    fn recv_ours(&self) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if !poll_in(self.0, 100) {
                continue;
            }
            let mut buf = vec![0u8; 70_000];
            // SAFETY: writes at most `buf.len()` bytes into a live buffer.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 14 && buf[12..14] == ETHERTYPE.to_be_bytes() {
                buf.truncate(n as usize);
                return Some(buf);
            }
        }
        None
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn poll_in(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

fn used_idx(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    mem.read_obj::<u16>(q.used_addr().unchecked_add(2)).unwrap()
}

/// The (id, len) of used element `i`.
fn used_elem(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u16) -> (u32, u32) {
    let at = q.used_addr().unchecked_add(4 + 8 * i as u64);
    (
        mem.read_obj::<u32>(at).unwrap(),
        mem.read_obj::<u32>(at.unchecked_add(4)).unwrap(),
    )
}

use vm_memory::Address;

#[test]
fn frames_cross_both_ways_hostile_chains_are_dropped_and_rx_waits_for_buffers() {
    let test = "frames_cross_both_ways_hostile_chains_are_dropped_and_rx_waits_for_buffers";
    if !netns_available(test) {
        return;
    }
    let ns = NetNs::create("dev");
    ns.add_tap("sktap1", "10.201.0.1/24");
    // This test's thread (and so the TAP's fd and the packet socket) lives in the namespace.
    NetNs::enter_this_thread(&ns.name);
    let mut net = Net::open(&NetConfig {
        tap: "sktap1".into(),
        mac: Some(MacAddr(GUEST_MAC)),
    })
    .unwrap();
    let host = PacketSocket::bind("sktap1");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RX_RING), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TX_RING), 16);
    let mut queues: Vec<Queue> = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let mut cfg = [0u8; 8];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &GUEST_MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert!(!net.backend_wanted(), "not before activation");
    net.activate(VIRTIO_F_VERSION_1 | net.features()).unwrap();
    assert!(net.backend_wanted());

    // Transmit: a hostile chain of each kind around two good frames.
    let good1 = frame(1, 100);
    let good2 = frame(2, 1400);
    let mut at = BUFS;
    let mut put = |bytes: &[u8]| {
        let a = at;
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(a)).unwrap();
        mem.write_slice(bytes, GuestAddress(a + HDR_LEN as u64))
            .unwrap();
        at += 0x1_0000;
        (a, (HDR_LEN + bytes.len()) as u32)
    };
    let (a1, l1) = put(&good1);
    let (a2, l2) = put(&good2);
    let chains = [
        desc(a1, 0, 0),                           // zero length
        desc(a1, 11, 0),                          // shorter than the header
        desc(a1, l1, F_WRITE),                    // write-only where the device reads
        desc(a1, l1, 0),                          // good
        desc((4 << 20) - 16, l1, 0),              // outside guest memory
        desc(a2, 65_562 + HDR_LEN as u32 + 1, 0), // too long
        desc(a2, l2, 0),                          // good
    ];
    txq.add_desc_chains(&chains, 0).unwrap();
    net.process_queue(TX_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert_eq!(
        used_idx(&mem, &txq),
        chains.len() as u16,
        "every chain returned"
    );
    assert_eq!(host.recv_ours().as_deref(), Some(&good1[..]));
    assert_eq!(host.recv_ours().as_deref(), Some(&good2[..]));
    assert_eq!(net.counters.tx_frames.load(Ordering::Relaxed), 2);
    assert_eq!(net.counters.tx_dropped.load(Ordering::Relaxed), 5);

    // Receive with no buffers: the device reads nothing and stops wanting the TAP.
    let frames: Vec<Vec<u8>> = (10..14).map(|t| frame(t, 60 + t as usize * 50)).collect();
    for f in &frames {
        host.send(f);
    }
    assert!(poll_in(net.backend_fd().unwrap(), 2000), "TAP readable");
    net.process_backend(&mut queues, &mem, &irq, true).unwrap();
    assert!(!net.backend_wanted(), "no buffers: TAP unwatched");
    assert_eq!(net.counters.rx_frames.load(Ordering::Relaxed), 0);
    assert!(
        poll_in(net.backend_fd().unwrap(), 0),
        "frames wait in the TAP"
    );

    // Buffers come: a read-only one, one too short for a header, then good ones.
    let rx = |i: u64| BUFS + 0x10_0000 + i * 0x1000;
    let bufs = [
        desc(rx(0), 2048, 0),
        desc(rx(1), 8, F_WRITE),
        desc(rx(2), 2048, F_WRITE),
        desc(rx(3), 2048, F_WRITE),
        desc(rx(4), 2048, F_WRITE),
        desc(rx(5), 2048, F_WRITE),
    ];
    rxq.add_desc_chains(&bufs, 0).unwrap();
    net.process_queue(RX_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert!(net.backend_wanted(), "buffers: TAP watched again");
    net.process_backend(&mut queues, &mem, &irq, true).unwrap();
    assert_eq!(net.counters.rx_bad_buffers.load(Ordering::Relaxed), 2);
    assert_eq!(net.counters.rx_frames.load(Ordering::Relaxed), 4);
    assert_eq!(used_idx(&mem, &rxq), 6);
    for (i, f) in frames.iter().enumerate() {
        let (id, len) = used_elem(&mem, &rxq, 2 + i as u16);
        assert_eq!(id, 2 + i as u32);
        assert_eq!(len as usize, HDR_LEN + f.len());
        let mut got = vec![0u8; len as usize];
        mem.read_slice(&mut got, GuestAddress(rx(2 + i as u64)))
            .unwrap();
        assert_eq!(&got[HDR_LEN..], &f[..], "frame {i} in order, byte for byte");
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    }
    assert!(irq.status() & 1 != 0, "used-ring interrupt raised");

    // A reset forgets the activation: no TAP readiness wanted.
    net.reset();
    assert!(!net.backend_wanted());
}

/// The device's saved part (MAC, link status) survives the snapshot's JSON and comes back
/// on a new TAP; a restore with another MAC or without its TAP is refused.
#[test]
fn saved_card_restores_on_a_new_tap() {
    use vmm::devices::persist::DeviceState;
    use vmm::persist::Persist;

    let test = "saved_card_restores_on_a_new_tap";
    if !netns_available(test) {
        return;
    }
    let ns = NetNs::create("persist");
    ns.add_tap("sktapa", "10.202.0.1/24");
    ns.add_tap("sktapb", "10.203.0.1/24");
    NetNs::enter_this_thread(&ns.name);
    let net = Net::open(&NetConfig {
        tap: "sktapa".into(),
        mac: None,
    })
    .unwrap();
    let mac = net.mac();
    assert_eq!(mac.0[0] & 0x03, 0x02, "random MAC is local unicast: {mac}");
    let Some(DeviceState::Net(state)) = DeviceState::of(&net) else {
        panic!("a net device saves as DeviceState::Net");
    };
    let json = serde_json::to_string(&DeviceState::Net(state.clone())).unwrap();
    assert!(json.contains(&mac.to_string()), "{json}");
    let back: DeviceState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, DeviceState::Net(state.clone()));
    drop(net);

    let given = NetConfig {
        tap: "sktapb".into(),
        mac: None,
    };
    let restored = Net::restore(&given, &state).unwrap();
    assert_eq!(restored.mac(), mac);
    let mut cfg = [0u8; 8];
    restored.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &mac.0);
    assert_eq!(restored.save(), state);

    let other = NetConfig {
        tap: "sktapa".into(),
        mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
    };
    let e = Net::restore(&other, &state).err().unwrap().to_string();
    assert!(e.contains("the guest keeps"), "{e}");
    let gone = NetConfig {
        tap: "sktapz".into(),
        mac: None,
    };
    let e = Net::restore(&gone, &state).err().unwrap().to_string();
    assert!(e.contains("no such network interface"), "{e}");
    // The TAP is taken: a second attach is refused while the first holds it.
    let e = Net::restore(&given, &state).err().unwrap().to_string();
    assert!(e.contains("in use"), "{e}");
    drop(restored);
}
