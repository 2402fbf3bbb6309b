//! The resolver Skiff runs for tasks (issue 14): one UDP DNS server per task network, on
//! the network's gateway address, port 53. On a named network it answers the names of the
//! network's own tasks (their `name`, their id and their hostname: A records, TTL 5 s);
//! every other name with a dot is forwarded as is to the host's upstream resolvers and the
//! answer relayed. Queries come from tasks, so they are treated as hostile: parsed with
//! hickory-proto (a well-kept DNS crate) before anything is done, bounded in size and in
//! how many are forwarded at once, and upstream answers are relayed only when their id
//! and question match.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// The largest query or answer handled (EDNS's common 4 KiB).
const MAX_DATAGRAM: usize = 4096;
/// How long an upstream has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries being forwarded at once, per network; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 128;
/// The TTL of the answers for tasks' names: short, as tasks come and go.
const TASK_TTL: u32 = 5;

/// One network's names: name → the (task id, address) pairs that answer to it.
type NetworkNames = HashMap<String, Vec<(String, Ipv4Addr)>>;

/// The tasks' names per network.
#[derive(Default)]
pub struct NameTable {
    inner: RwLock<HashMap<String, NetworkNames>>,
}

impl NameTable {
    /// Task `task_id` at `ip` answers to `names` on `network`.
    pub fn add(&self, network: &str, task_id: &str, ip: Ipv4Addr, names: &[String]) {
        let mut all = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let net = all.entry(network.to_owned()).or_default();
        for n in names {
            let entry = net.entry(n.to_ascii_lowercase()).or_default();
            if !entry.iter().any(|(id, _)| id == task_id) {
                entry.push((task_id.to_owned(), ip));
            }
        }
    }

    /// Task `task_id` answers to nothing on `network` any more.
    pub fn remove_task(&self, network: &str, task_id: &str) {
        let mut all = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(net) = all.get_mut(network) {
            net.retain(|_, tasks| {
                tasks.retain(|(id, _)| id != task_id);
                !tasks.is_empty()
            });
        }
    }

    /// Task `task_id` no longer answers to `name` on `network` (its other names stay).
    pub fn remove_name(&self, network: &str, task_id: &str, name: &str) {
        let mut all = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let Some(net) = all.get_mut(network) else {
            return;
        };
        let key = name.to_ascii_lowercase();
        if let Some(tasks) = net.get_mut(&key) {
            tasks.retain(|(id, _)| id != task_id);
            if tasks.is_empty() {
                net.remove(&key);
            }
        }
    }

    /// The addresses `name` has on `network` (case-insensitive; a trailing dot is fine).
    pub fn lookup(&self, network: &str, name: &str) -> Vec<Ipv4Addr> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let all = self.inner.read().unwrap_or_else(|p| p.into_inner());
        all.get(network)
            .and_then(|n| n.get(&name))
            .map(|t| t.iter().map(|(_, ip)| *ip).collect())
            .unwrap_or_default()
    }
}

/// One network's resolver.
#[derive(Clone)]
pub struct Resolver {
    pub network: String,
    pub names: Arc<NameTable>,
    pub upstreams: Arc<Vec<SocketAddr>>,
}

/// The nameservers of a resolv.conf text, as upstreams on port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Resolver {
    /// Serves queries arriving on `sock` until the returned task is aborted.
    pub fn spawn(self, sock: UdpSocket) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.serve(sock))
    }

    /// Serves queries arriving on `sock` for ever.
    pub async fn serve(self, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(network = self.network, "resolver: {e}");
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (me, sock, query) = (self.clone(), sock.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                if let Some(answer) = me.answer(&query).await {
                    let _ = sock.send_to(&answer, peer).await;
                }
                drop(slot);
            });
        }
    }

    /// The answer to one datagram, or None to stay silent.
    pub async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) if query.len() >= 12 => {
                let id = u16::from_be_bytes([query[0], query[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            Err(_) => return None,
        };
        let meta = &msg.metadata;
        if meta.message_type != MessageType::Query {
            return None;
        }
        if meta.op_code != OpCode::Query {
            return reply(&msg, ResponseCode::NotImp, Vec::new());
        }
        let [q] = msg.queries.as_slice() else {
            return reply(&msg, ResponseCode::FormErr, Vec::new());
        };
        let name = q.name.to_ascii();
        let ips = self.names.lookup(&self.network, &name);
        if !ips.is_empty() {
            let answers = if q.query_type == RecordType::A {
                ips.iter()
                    .map(|ip| Record::from_rdata(q.name.clone(), TASK_TTL, RData::A(A(*ip))))
                    .collect()
            } else {
                Vec::new()
            };
            return reply(&msg, ResponseCode::NoError, answers);
        }
        // A bare name that is no task's: not found, and not sent out of the host.
        if !name.trim_end_matches('.').contains('.') {
            return reply(&msg, ResponseCode::NXDomain, Vec::new());
        }
        match self.forward(query, &msg).await {
            Some(a) => Some(a),
            None => reply(&msg, ResponseCode::ServFail, Vec::new()),
        }
    }

    /// Asks each upstream in turn; the first matching answer, unchanged.
    async fn forward(&self, query: &[u8], msg: &Message) -> Option<Vec<u8>> {
        for up in self.upstreams.iter() {
            let bind: SocketAddr = if up.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(sock) = UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let got = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf)).await;
            let Ok(Ok(n)) = got else { continue };
            let Ok(answer) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if answer.metadata.id == msg.metadata.id
                && answer.metadata.message_type == MessageType::Response
                && answer.queries == msg.queries
            {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }
}

fn reply(req: &Message, code: ResponseCode, answers: Vec<Record>) -> Option<Vec<u8>> {
    let mut r = Message::response(req.metadata.id, req.metadata.op_code);
    r.metadata.recursion_desired = req.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.authoritative = !answers.is_empty();
    r.metadata.response_code = code;
    r.queries = req.queries.clone();
    r.answers = answers;
    r.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> (u16, Vec<u8>) {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        (m.metadata.id, m.to_vec().unwrap())
    }

    async fn ask(server: SocketAddr, name: &str, t: RecordType) -> Message {
        let (id, q) = query(name, t);
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&q, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, id);
        m
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    async fn start(network: &str, names: Arc<NameTable>, up: Vec<SocketAddr>) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        Resolver {
            network: network.into(),
            names,
            upstreams: Arc::new(up),
        }
        .spawn(sock);
        addr
    }

    /// A network's resolver answers its tasks' names, refuses bare unknown names, and
    /// forwards the rest to its upstream (here a second resolver of ours, over real UDP,
    /// standing for the host's) and relays the answer.
    #[tokio::test]
    async fn tasks_names_are_answered_and_the_rest_forwarded() {
        let upstream_names = Arc::new(NameTable::default());
        let web: Ipv4Addr = "10.200.0.2".parse().unwrap();
        upstream_names.add("up", "x", web, &["example.test".into()]);
        let upstream = start("up", upstream_names, vec![]).await;

        let names = Arc::new(NameTable::default());
        let front: Ipv4Addr = "10.90.1.2".parse().unwrap();
        names.add("web", "t1", front, &["front".into(), "t1".into()]);
        names.add(
            "other",
            "t9",
            "10.90.2.2".parse().unwrap(),
            &["secret".into()],
        );
        let r = start("web", names.clone(), vec![upstream]).await;

        let m = ask(r, "front.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), [front]);
        assert_eq!(a_records(&ask(r, "FRONT", RecordType::A).await), [front]);
        // A known name has no IPv6 address: an empty answer, not an error.
        let m = ask(r, "front", RecordType::AAAA).await;
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        // Another network's task is not visible here.
        let m = ask(r, "secret", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Forwarded and relayed.
        let m = ask(r, "example.test", RecordType::A).await;
        assert_eq!(a_records(&m), [web]);
        // Gone with its task.
        names.remove_task("web", "t1");
        let m = ask(r, "front", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn garbage_gets_formerr_or_silence_and_no_upstream_is_servfail() {
        let r = Resolver {
            network: "web".into(),
            names: Arc::new(NameTable::default()),
            upstreams: Arc::new(vec![]),
        };
        assert!(r.answer(b"short").await.is_none());
        let mut junk = vec![0xab, 0xcd];
        junk.extend([0xff; 40]);
        let m = Message::from_vec(&r.answer(&junk).await.unwrap()).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        let (_, q) = query("example.test", RecordType::A);
        let m = Message::from_vec(&r.answer(&q).await.unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let text = "# x\nnameserver 10.0.0.2\nsearch a\nnameserver ::1\nnameserver bad\n";
        let ups = upstreams_from_resolv_conf(text);
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0].to_string(), "10.0.0.2:53");
    }
}
