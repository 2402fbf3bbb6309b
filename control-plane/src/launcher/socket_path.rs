//! Unix sockets at any depth of the state dir. `sockaddr_un` holds at most 107 bytes of
//! path, and the sockets of tasks and snapshot builds, such as
//! `<state>/snapshots/<key>.building/vm/v.sock_1024`, pass that as soon as the state dir
//! is some 45 bytes deep. A longer path is reached through the directory's descriptor
//! instead: `/proc/self/fd/N/NAME`, which the kernel resolves to the same directory.
//! Written here because it is a few lines and no crate on our list offers it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path `sockaddr_un` takes (its 108 bytes less the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds a listening socket at `path`, however long.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    with_short_path(path, |p| UnixListener::bind(p))
}

/// Connects to the socket at `path`, however long.
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    with_short_path(path, |p| UnixStream::connect(p))
}

/// Calls `f` with `path` if it fits, else with a short path to the same file through a
/// descriptor of its directory (held open until `f` returns).
fn with_short_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return f(path);
    }
    let invalid = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {what}", path.display()),
        )
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid("not a path to a file in a directory"));
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let short = through_fd(&dir).join(name);
    if short.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(invalid(
            "the socket's own name is too long for a Unix socket",
        ));
    }
    f(&short)
}

fn through_fd(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn sockets_deeper_than_sockaddr_un_holds_bind_and_connect() {
        let base = std::env::temp_dir().join(format!("skiff-socket-path-{}", std::process::id()));
        let deep = base.join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("v.sock_1024");
        assert!(path.as_os_str().len() > MAX_SOCKET_PATH);
        assert!(
            UnixListener::bind(&path).is_err(),
            "the plain bind must fail here"
        );

        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket is made at the long path itself");
        let mut client = connect(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");

        let missing = deep.join("nothing-here");
        assert_eq!(
            connect(&missing).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        let long_name = deep.join("n".repeat(120));
        assert_eq!(
            bind(&long_name).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
