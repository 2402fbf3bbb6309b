//! Health checks of a service's tasks. `httpGet` is a GET from the host to the task's
//! address; healthy on a 2xx or 3xx status within the timeout. The answer is read only as
//! far as its status line, and at most [`MAX_STATUS_LINE`] bytes of it: a task cannot make
//! the host read more. Written by hand: one request line and one status line do not need an
//! HTTP client crate.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest status line read.
const MAX_STATUS_LINE: usize = 512;

/// One HTTP check: `Ok` on 2xx or 3xx, else why not (one line).
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, get_status(addr, path)).await {
        Err(_) => Err(format!(
            "GET http://{addr}{path}: no answer in {} s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("GET http://{addr}{path}: {e}")),
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("GET http://{addr}{path}: status {code}")),
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: skiff-health-check\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(MAX_STATUS_LINE);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n.min(MAX_STATUS_LINE - buf.len())]);
    }
    parse_status(&buf)
}

/// A `command` check's verdict: exit code 0 passes; else the code and the first line of
/// what it printed.
pub fn command_result(o: &crate::launcher::ExecOutcome, timeout: Duration) -> Result<(), String> {
    if o.timed_out {
        return Err(format!(
            "the command did not end in {} s",
            timeout.as_secs()
        ));
    }
    if o.exit_code == 0 {
        return Ok(());
    }
    let first: String = o
        .output
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if first.is_empty() {
        Err(format!("the command exited {}", o.exit_code))
    } else {
        Err(format!("the command exited {}: {first}", o.exit_code))
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status(b: &[u8]) -> Result<u16, String> {
    let line = b.split(|c| *c == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse::<u16>()
            .ok()
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| format!("bad status line {:?}", text.trim_end())),
        _ if b.is_empty() => Err("the connection closed without an answer".into()),
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            text.chars().take(60).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(answer).await;
            }
        });
        a
    }

    #[tokio::test]
    async fn statuses_decide_and_garbage_is_a_failure() {
        let t = Duration::from_secs(2);
        let ok = server(b"HTTP/1.0 200 OK\r\n\r\nhi").await;
        assert_eq!(http_get(ok, "/", t).await, Ok(()));
        let redirect = server(b"HTTP/1.1 302 Found\r\n\r\n").await;
        assert_eq!(http_get(redirect, "/", t).await, Ok(()));
        let missing = server(b"HTTP/1.0 404 Not Found\r\n\r\n").await;
        assert!(http_get(missing, "/x", t)
            .await
            .unwrap_err()
            .ends_with("status 404"));
        let garbage = server(b"\x00\x01hello").await;
        assert!(http_get(garbage, "/", t)
            .await
            .unwrap_err()
            .contains("not an HTTP answer"));
        // A status line without end: read no further than the cap.
        let endless: &'static [u8] = Box::leak(vec![b'A'; 1 << 20].into_boxed_slice());
        let huge = server(endless).await;
        assert!(http_get(huge, "/", t).await.is_err());
        // Silence: the timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = l.local_addr().unwrap();
        let e = http_get(silent, "/", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("no answer in 1 s"), "{e}");
        drop(l);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert!(parse_status(b"HTTP/1.1 99 x\r\n").is_err());
        assert!(parse_status(b"").is_err());
    }
}
