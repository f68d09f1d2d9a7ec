//! systemd's readiness protocol (`sd_notify`): with `Type=notify` the service manager passes
//! `$NOTIFY_SOCKET`, a unix datagram socket (a path, or an abstract name written with a leading
//! `@`), and waits for a datagram `READY=1`. `STOPPING=1` says shutdown has begun.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `$NOTIFY_SOCKET`. Ok(false) when the
/// variable is unset or empty (not started by a service manager that wants notifications).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(addr) if !addr.is_empty() => {
            send(
                std::os::unix::ffi::OsStrExt::as_bytes(addr.as_os_str()),
                state,
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sends `state` to the datagram socket `addr` (`@name` for an abstract socket, else a path).
pub fn send(addr: &[u8], state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = addr.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &a)?;
    } else if addr.first() == Some(&b'/') {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(addr));
        sock.send_to(state.as_bytes(), path)?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
        ));
    }
    Ok(())
}

/// [`notify`], logging (not failing) when the message cannot be sent.
pub fn notify_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "sd_notify"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "sd_notify: cannot notify the service manager"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_abstract_addresses() {
        let dir = std::env::temp_dir().join(format!("uiommufd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("n.sock");
        let _ = std::fs::remove_file(&p);
        let rx = UnixDatagram::bind(&p).unwrap();
        send(p.as_os_str().as_encoded_bytes(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("uiommufd-notify-test-{}", std::process::id());
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&a).unwrap();
        send(format!("@{name}").as_bytes(), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert_eq!(
            send(b"relative", "READY=1").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
