//! Host ports published by tasks, held for them: at submission the server binds each
//! mapping's host address and port (a bound socket that never listens, as Docker's port
//! reservations do), so a port that a host service or another task already has is refused
//! at once with a clear message, and no one else can take it while the task lives. The
//! traffic itself never reaches these sockets: the portmap plugin's DNAT sends it to the
//! task first. Released when the task's life ends.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;

use crate::tasks::{PortMapping, Protocol};

#[derive(Debug, thiserror::Error)]
#[error("portMappings[{index}].hostPort: {mapping}: the host port is not free: {source}")]
pub struct PortTaken {
    pub index: usize,
    pub mapping: PortMapping,
    #[source]
    pub source: std::io::Error,
}

/// One held host port.
enum Held {
    // Kept only to hold the port.
    Tcp(#[allow(dead_code)] tokio::net::TcpSocket),
    Udp(#[allow(dead_code)] UdpSocket),
}

fn hold(m: &PortMapping) -> std::io::Result<Held> {
    let addr = SocketAddr::V4(SocketAddrV4::new(m.bind_ip(), m.host_port));
    Ok(match m.protocol {
        Protocol::Tcp => {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(addr)?;
            Held::Tcp(s)
        }
        Protocol::Udp => Held::Udp(UdpSocket::bind(addr)?),
    })
}

/// The ports held per task.
#[derive(Default)]
pub struct PortReservations {
    held: Mutex<HashMap<String, Vec<Held>>>,
}

impl PortReservations {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Held>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds every host port of task `id` (all or none); a task that holds them already
    /// keeps them.
    pub fn reserve(&self, id: &str, mappings: &[PortMapping]) -> Result<(), PortTaken> {
        if mappings.is_empty() || self.map().contains_key(id) {
            return Ok(());
        }
        let mut held = Vec::with_capacity(mappings.len());
        for (index, m) in mappings.iter().enumerate() {
            held.push(hold(m).map_err(|source| PortTaken {
                index,
                mapping: *m,
                source,
            })?);
        }
        self.map().insert(id.to_owned(), held);
        Ok(())
    }

    /// Lets task `id`'s host ports go.
    pub fn release(&self, id: &str) {
        self.map().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    fn tcp(host_port: u16) -> PortMapping {
        PortMapping {
            container_port: 80,
            host_port,
            protocol: Protocol::Tcp,
            host_ip: Some(Ipv4Addr::LOCALHOST),
        }
    }

    #[tokio::test]
    async fn a_held_port_is_refused_to_others_until_released() {
        // A port the OS picks, free again once the probe goes.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = PortReservations::default();
        r.reserve("a", &[tcp(port)]).unwrap();
        let e = r.reserve("b", &[tcp(port)]).unwrap_err();
        assert_eq!(e.index, 0);
        assert!(e.to_string().contains("portMappings[0].hostPort"), "{e}");
        // A host service cannot take it either.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
        r.release("a");
        r.reserve("b", &[tcp(port)]).unwrap();
    }

    #[tokio::test]
    async fn a_port_a_host_service_has_is_refused_and_nothing_is_held() {
        let svc = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = svc.local_addr().unwrap().port();
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = PortReservations::default();
        let e = r.reserve("a", &[tcp(free), tcp(taken)]).unwrap_err();
        assert_eq!(e.index, 1);
        // The first one was let go with the failure.
        TcpListener::bind(("127.0.0.1", free)).unwrap();
    }
}
