//! The control socket: `uiommufd status` asks the running daemon what it holds.
//!
//! `serve` listens on a unix stream socket ([`DEFAULT_PATH`], `--control PATH`), mode 0600 owned
//! by the daemon's user (root): status is for administrators. A client connects, sends one line —
//! `status` (a readable table) or `status json` (the JSON of the FUSE `status` file) — and reads
//! the answer until the daemon closes. Anything else gets one line `error: ...`.
//!
//! The socket must never hold the daemon up: it is served on the daemon's tokio runtime, a request
//! is at most [`MAX_REQUEST`] bytes and must arrive within [`IO_TIMEOUT`] (the answer must be taken
//! within it too), at most [`MAX_CLIENTS`] connections are served at once (more are closed
//! unanswered), and the snapshot itself is taken on a blocking thread.
//!
//! The default path is not under `/run/uiommufd`: that is the default FUSE mount point, and the
//! mount would hide a socket below it (`serve` refuses a control path under its mount).

use crate::dispatch::Service;
use crate::transport::{with_transport_status, TransportStats};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where `serve` listens and `status` asks unless told otherwise.
pub const DEFAULT_PATH: &str = "/run/uiommufd.sock";
/// The longest request line, newline included.
pub const MAX_REQUEST: usize = 64;
/// How long a client may take to send its request, and to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;

/// A request the daemon understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `status`: the table of [`render_table`].
    Status,
    /// `status json`: the daemon's status JSON.
    StatusJson,
}

impl Request {
    /// The request line (without its newline).
    pub fn line(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::StatusJson => "status json",
        }
    }

    /// Parses one request line (without its newline; a trailing `\r` is ignored).
    pub fn parse(line: &[u8]) -> Result<Self, String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line {
            b"status" => Ok(Request::Status),
            b"status json" => Ok(Request::StatusJson),
            other => Err(format!(
                "unknown request {:?} (requests: \"status\", \"status json\")",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

/// Refuses a control path the FUSE mount at `mount` would hide.
pub fn check_outside_mount(control: &Path, mount: &Path) -> io::Result<()> {
    let (c, m) = (std::path::absolute(control)?, std::path::absolute(mount)?);
    if c.starts_with(&m) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "control socket {} is under the mount point {}: the mount would hide it \
                 (pass --control with a path outside it)",
                c.display(),
                m.display()
            ),
        ));
    }
    Ok(())
}

/// A bound control socket, not yet served.
pub struct ControlSocket {
    path: PathBuf,
    /// (st_dev, st_ino) of the socket file we made: only that file is removed at the end.
    id: (u64, u64),
    listener: std::os::unix::net::UnixListener,
}

impl ControlSocket {
    /// Creates the parent directory (0755) if missing, removes a stale socket (one nobody answers
    /// on), binds and makes the socket 0600. Refuses when a daemon answers on `path` already or
    /// something else than a socket is there.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let path = std::path::absolute(path)?;
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)?;
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(&path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!(
                                "a daemon answers on the control socket {} already (pass \
                                 --control to use another path)",
                                path.display()
                            ),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(&path)?;
                        tracing::info!(path = %path.display(), "removed a stale control socket");
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("control socket {}: {e}", path.display()),
                        ))
                    }
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket: not replacing it",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        // Until this chmod the umask's mode applies; connecting needs write permission, which the
        // usual umask (022) gives nobody but the owner either.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let m = std::fs::symlink_metadata(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            id: (m.dev(), m.ino()),
            path,
            listener,
        })
    }

    /// The socket's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file without serving (a start that failed later).
    pub fn remove(self) {
        remove_if_ours(&self.path, self.id);
    }

    /// Serves requests on the current tokio runtime until [`ControlTask::stop`]; the status adds
    /// the counters of the transport serving `service` (`stats`).
    pub fn serve(
        self,
        service: Arc<dyn Service>,
        stats: Arc<TransportStats>,
    ) -> io::Result<ControlTask> {
        let listener = match tokio::net::UnixListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                remove_if_ours(&self.path, self.id);
                return Err(e);
            }
        };
        tracing::info!(path = %self.path.display(), "control socket ready");
        let task = tokio::spawn(accept_loop(listener, service, stats));
        Ok(ControlTask {
            path: self.path,
            id: self.id,
            task,
        })
    }
}

/// The running control socket.
pub struct ControlTask {
    path: PathBuf,
    id: (u64, u64),
    task: tokio::task::JoinHandle<()>,
}

impl ControlTask {
    /// Stops serving and removes the socket file (if it is still the one we made).
    pub fn stop(self) {
        self.task.abort();
        remove_if_ours(&self.path, self.id);
    }
}

/// Removes the socket file at `path` if it is still the one made by us (`id`: st_dev, st_ino), not
/// one a later daemon bound there.
fn remove_if_ours(path: &Path, id: (u64, u64)) {
    let ours = std::fs::symlink_metadata(path)
        .map(|m| (m.dev(), m.ino()) == id)
        .unwrap_or(false);
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the control socket");
        }
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    service: Arc<dyn Service>,
    stats: Arc<TransportStats>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::warn_limited!(error = %e, "control socket: accept failed");
                // E.g. out of fds: give the daemon a moment instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::warn_limited!("control socket: too many clients at once; connection closed");
            continue;
        };
        let (service, stats) = (service.clone(), stats.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = answer(stream, service, stats).await {
                tracing::debug!(error = %e, "control socket: client");
            }
        });
    }
}

/// Reads one request line: at most [`MAX_REQUEST`] bytes including the newline.
async fn read_request(stream: &mut tokio::net::UnixStream) -> io::Result<Result<Vec<u8>, String>> {
    let mut buf = Vec::with_capacity(MAX_REQUEST);
    let mut chunk = [0u8; MAX_REQUEST];
    loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(i);
            return Ok(Ok(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(Err(format!("request longer than {MAX_REQUEST} bytes")));
        }
        let n = stream.read(&mut chunk[..MAX_REQUEST - buf.len()]).await?;
        if n == 0 {
            return Ok(Err("no request line (end of input before a newline)".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(
    mut stream: tokio::net::UnixStream,
    service: Arc<dyn Service>,
    stats: Arc<TransportStats>,
) -> io::Result<()> {
    let request = match tokio::time::timeout(IO_TIMEOUT, read_request(&mut stream)).await {
        Ok(r) => r?.and_then(|line| Request::parse(&line)),
        Err(_) => Err(format!("no request line within {} s", IO_TIMEOUT.as_secs())),
    };
    let reply = match request {
        Ok(req) => {
            // The snapshot takes the daemon's locks: off the async workers.
            let json = tokio::task::spawn_blocking(move || {
                with_transport_status(&stats, service.status())
            })
            .await
            .map_err(io::Error::other)?;
            match req {
                Request::StatusJson => json,
                Request::Status => render_table(&json),
            }
        }
        Err(e) => format!("error: {e}\n"),
    };
    match tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing with unread input would reset the connection, and the client could lose the
        // answer: take what it still sends (a bounded amount) until it closes.
        let mut scratch = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match stream.read(&mut scratch).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok(())
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client did not take the answer",
        )),
    }
}

/// The readable form of the daemon's status JSON (the text itself if it is not JSON).
pub fn render_table(json: &str) -> String {
    use std::fmt::Write as _;
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_string();
    };
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "contexts {}   objects {}   pinned pages {}   daemon mappings of client memory {}",
        n("contexts"),
        n("objects"),
        n("pinned_pages"),
        n("live_mappings")
    );
    let detail = v["device_detail"].as_array().cloned().unwrap_or_default();
    let devices: Vec<String> = if detail.is_empty() {
        v["devices"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        detail
            .iter()
            .map(|d| {
                let name = d["name"].as_str().unwrap_or("?");
                match (d["context"].as_u64(), d["device_id"].as_u64()) {
                    (Some(c), Some(id)) => format!("{name} (bound: context {c}, device {id})"),
                    _ => name.to_string(),
                }
            })
            .collect()
    };
    let _ = writeln!(
        out,
        "devices  {}",
        if devices.is_empty() {
            "(none)".to_string()
        } else {
            devices.join(", ")
        }
    );
    if let Some(users) = v["memlock_pages_per_user"].as_object() {
        if !users.is_empty() {
            let list: Vec<String> = users
                .iter()
                .map(|(uid, pages)| format!("uid {uid}: {}", pages.as_u64().unwrap_or(0)))
                .collect();
            let _ = writeln!(out, "memlock  {} (pages charged per user)", list.join(", "));
        }
    }
    let contexts = v["context_detail"].as_array().cloned().unwrap_or_default();
    if contexts.is_empty() {
        return out;
    }
    let rows: Vec<[String; 6]> = contexts
        .iter()
        .map(|c| {
            let objects = c["objects"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(t, k)| format!("{t}={}", k.as_u64().unwrap_or(0)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into());
            let num = |k: &str| c[k].as_u64().map_or_else(|| "-".into(), |u| u.to_string());
            let ioas = c["ioas"].as_array().cloned().unwrap_or_default();
            let mapped = if ioas.is_empty() {
                "-".to_string()
            } else if ioas.iter().any(|i| i["busy"].as_bool() == Some(true)) {
                "busy".to_string()
            } else {
                let bytes: u64 = ioas.iter().filter_map(|i| i["bytes"].as_u64()).sum();
                let areas: u64 = ioas.iter().filter_map(|i| i["areas"].as_u64()).sum();
                format!("{} KiB in {areas}", bytes / 1024)
            };
            [
                c["id"].as_u64().unwrap_or(0).to_string(),
                num("uid"),
                num("pid"),
                c["command"].as_str().unwrap_or("-").to_string(),
                mapped,
                objects,
            ]
        })
        .collect();
    let head = ["CONTEXT", "UID", "PID", "COMMAND", "MAPPED", "OBJECTS"];
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].len())
            .chain([head[col].len()])
            .max()
            .unwrap_or(0)
    };
    let w: Vec<usize> = (0..5).map(width).collect();
    out.push('\n');
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        );
    }
    out
}

/// The client side: sends `req` to the daemon at `path` and returns its whole answer.
pub fn request(path: &Path, req: Request) -> io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("{}\n", req.line()).as_bytes())?;
    let mut out = String::new();
    // Cap what a confused peer can make us hold.
    s.take(64 << 20).read_to_string(&mut out)?;
    Ok(out)
}

/// `uiommufd status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The daemon's control socket (`serve --control`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub control: PathBuf,
    /// Print the daemon's status JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every SECS seconds (default 2) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
}

/// Runs `uiommufd status`: exit 0 when the daemon answered with a status.
pub fn status_main(args: StatusArgs) -> std::process::ExitCode {
    use std::io::IsTerminal;
    let req = if args.json {
        Request::StatusJson
    } else {
        Request::Status
    };
    let interval = match args.watch {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            eprintln!("uiommufd status: --watch takes a positive number of seconds");
            return std::process::ExitCode::FAILURE;
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let clear = interval.is_some() && std::io::stdout().is_terminal();
    loop {
        let answer = match request(&args.control, req) {
            Ok(a) => a,
            Err(e) => {
                let why = match e.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        "no daemon is listening (is `uiommufd serve` running? pass --control \
                         if it uses another socket)"
                            .to_string()
                    }
                    io::ErrorKind::PermissionDenied => {
                        "permission denied (the control socket is for root)".to_string()
                    }
                    _ => e.to_string(),
                };
                eprintln!("uiommufd status: {}: {why}", args.control.display());
                return std::process::ExitCode::FAILURE;
            }
        };
        if let Some(e) = answer.strip_prefix("error: ") {
            eprintln!("uiommufd status: the daemon says: {}", e.trim_end());
            return std::process::ExitCode::FAILURE;
        }
        let mut stdout = std::io::stdout().lock();
        if clear {
            let _ = stdout.write_all(b"\x1b[H\x1b[2J");
        }
        if stdout
            .write_all(answer.as_bytes())
            .and_then(|_| stdout.flush())
            .is_err()
        {
            // A closed pipe (`| head`): nothing more to show.
            return std::process::ExitCode::SUCCESS;
        }
        drop(stdout);
        match interval {
            Some(d) => std::thread::sleep(d),
            None => return std::process::ExitCode::SUCCESS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(Request::parse(b"status"), Ok(Request::Status));
        assert_eq!(Request::parse(b"status json\r"), Ok(Request::StatusJson));
        assert!(Request::parse(b"shutdown")
            .unwrap_err()
            .contains("shutdown"));
        assert!(Request::parse(b"status  json").is_err());
    }

    #[test]
    fn table_has_the_numbers() {
        let json = r#"{"contexts":2,"objects":3,"pinned_pages":16,"live_mappings":1,
            "devices":["dmacopy0"],"memlock_pages_per_user":{"1000":16},
            "context_detail":[{"id":7,"uid":1000,"pid":4242,"command":"qemu","objects":{"ioas":2,"hwpt_paging":1},
                               "ioas":[{"id":1,"areas":2,"bytes":8192},{"id":2,"areas":1,"bytes":4096}]},
                              {"id":12,"uid":null,"objects":{}}]}"#;
        let t = render_table(json);
        assert!(
            t.contains("contexts 2   objects 3   pinned pages 16"),
            "{t}"
        );
        assert!(t.contains("daemon mappings of client memory 1"), "{t}");
        assert!(t.contains("devices  dmacopy0"), "{t}");
        let bound = r#"{"devices":["d0","d1"],"device_detail":[{"name":"d0","context":3,"device_id":1},
            {"name":"d1","context":null,"device_id":null}]}"#;
        assert!(
            render_table(bound).contains("devices  d0 (bound: context 3, device 1), d1"),
            "{}",
            render_table(bound)
        );
        assert!(t.contains("uid 1000: 16"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        let head = lines.iter().position(|l| l.starts_with("CONTEXT")).unwrap();
        assert_eq!(
            lines[head + 1],
            "7        1000  4242  qemu     12 KiB in 3  hwpt_paging=1 ioas=2"
        );
        assert_eq!(
            lines[head + 2],
            "12       -     -     -        -            -"
        );
        assert_eq!(render_table("not json"), "not json");
    }

    #[test]
    fn control_path_under_the_mount_is_refused() {
        let e = check_outside_mount(Path::new("/run/m/c.sock"), Path::new("/run/m")).unwrap_err();
        assert!(e.to_string().contains("hide"));
        check_outside_mount(Path::new("/run/m.sock"), Path::new("/run/m")).unwrap();
    }
}
