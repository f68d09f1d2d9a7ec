//! Object fds in a recorded session: a fault or vEVENT queue made through `uiommufd launch`
//! (UIOMMUFD_HANDLE_BIND) becomes its fd-returning ioctl, rebuilt from the inputs the launcher
//! passed on, with the fd named (`"as": {"objfd1": "out_fault_fd"}`); the bound file's reads,
//! writes and close become steps on that name in the script of the context the object is in.

use super::{Call, Recorder};
use crate::dispatch::daemon::{BoundHandle, HandleIo};
use crate::replay::{exec, layout};
use nix::errno::Errno;

/// What a recorded session did on an object fd.
pub(super) enum FdOp {
    Read {
        size: u32,
        result: Result<Vec<u8>, Errno>,
    },
    Write {
        data: Vec<u8>,
        result: Result<u32, Errno>,
    },
    Close,
}

impl FdOp {
    /// The bytes it keeps.
    pub(super) fn bytes(&self) -> usize {
        match self {
            FdOp::Read { result: Ok(b), .. } => b.len(),
            FdOp::Write { data, .. } => data.len(),
            _ => 0,
        }
    }
}

impl Recorder {
    pub(super) fn record_handle_bound(&self, file_ctx: u64, origin: u64, bound: &BoundHandle) {
        let named = {
            let Ok(mut sessions) = self.sessions.lock() else {
                return;
            };
            // Only a bound file is an object fd (its session is not a context's); after a failed
            // bind it stays an ordinary context, recorded as such if it makes any call.
            if let Some(s) = sessions.get_mut(&file_ctx) {
                match bound.object_id {
                    Ok(_) => s.object_fd = true,
                    Err(_) => s.failed_bind = true,
                }
            }
            let Some(s) = sessions.get_mut(&origin) else {
                return;
            };
            match Call::fd_returning(bound, s.object_fds + 1) {
                Some(c) => {
                    let named = c.fd_as.clone();
                    // Counted against the session's size cap like every call.
                    if !s.keep(origin, c) {
                        return;
                    }
                    let Some(name) = named else {
                        return;
                    };
                    s.object_fds += 1;
                    name
                }
                None => {
                    if let Ok(id) = bound.object_id {
                        s.keep(origin, Call::object_fd(id, bound.what));
                    }
                    return;
                }
            }
        };
        if let Ok(mut files) = self.object_files.lock() {
            files.insert(file_ctx, (origin, named));
        }
    }

    pub(super) fn record_handle_io(&self, file_ctx: u64, io: HandleIo<'_>) {
        let found = self
            .object_files
            .lock()
            .ok()
            .and_then(|mut files| match io {
                HandleIo::Close => files.remove(&file_ctx),
                _ => files.get(&file_ctx).cloned(),
            });
        let Some((origin, name)) = found else {
            return;
        };
        let op = match io {
            HandleIo::Read { size, result } => FdOp::Read {
                size,
                result: result.map(<[u8]>::to_vec),
            },
            HandleIo::Write { data, result } => FdOp::Write {
                data: data.to_vec(),
                result,
            },
            HandleIo::Close => FdOp::Close,
        };
        self.push_call(
            origin,
            Call {
                fd_op: Some((name, op)),
                ..Call::new(0, 0)
            },
        );
    }
}

impl Call {
    /// The fd-returning ioctl behind an object fd made through `uiommufd launch`, as the program
    /// issued it (the launcher passed its inputs on), its fd named `objfd<n>`; None for the
    /// kinds a script cannot make this way (the selftest's accesses and dma-bufs).
    fn fd_returning(bound: &BoundHandle, n: usize) -> Option<Self> {
        use crate::dispatch::private_abi::{UIOMMUFD_HANDLE_FAULT_QUEUE, UIOMMUFD_HANDLE_VEVENTQ};
        let [a0, a1, a2, a3] = bound.args.map(u64::from);
        let (name, inputs, out_id): (_, &[(&str, u64)], _) = match bound.kind {
            UIOMMUFD_HANDLE_FAULT_QUEUE => {
                ("IOMMU_FAULT_QUEUE_ALLOC", &[("flags", a0)], "out_fault_id")
            }
            UIOMMUFD_HANDLE_VEVENTQ => (
                "IOMMU_VEVENTQ_ALLOC",
                &[
                    ("flags", a0),
                    ("viommu_id", a1),
                    ("type", a2),
                    ("veventq_depth", a3),
                ],
                "out_veventq_id",
            ),
            _ => return None,
        };
        let d = layout::by_name(name)?;
        let mut before = vec![0u8; d.size];
        let size = (d.fields[0].name, d.size as u64);
        for (field, v) in std::iter::once(&size).chain(inputs) {
            exec::put(&mut before, d.field(field)?, *v).ok()?;
        }
        let mut after = before.clone();
        if let Ok(id) = bound.object_id {
            exec::put(&mut after, d.field(out_id)?, u64::from(id)).ok()?;
        }
        Some(Call {
            before: Some(before),
            after: Some(after),
            result: bound.object_id.map(|_| 0),
            fd_as: bound.object_id.is_ok().then(|| format!("objfd{n}")),
            ..Call::new(d.cmd, 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Session, MAX_SESSION_BYTES};
    use super::*;
    use crate::dispatch::private_abi::UIOMMUFD_HANDLE_FAULT_QUEUE;
    use crate::service::NodeKind;

    fn session() -> Session {
        Session::new(NodeKind::Iommu)
    }

    fn refused() -> BoundHandle {
        BoundHandle {
            object_id: Err(Errno::EINVAL),
            what: "a fault queue",
            kind: UIOMMUFD_HANDLE_FAULT_QUEUE,
            args: [7, 0, 0, 0],
        }
    }

    /// A refused bind neither stops the file's own recording (a client could hide its session
    /// that way) nor grows the context's script without bound.
    #[test]
    fn refused_binds_leave_the_file_recorded_and_the_script_bounded() {
        let dir = std::env::temp_dir().join(format!("uiommufd-objfd-{}", std::process::id()));
        let rec = Recorder::new(&dir).unwrap();
        {
            let mut s = rec.sessions.lock().unwrap();
            s.insert(1, session());
            s.insert(2, session());
        }
        // File 2 binds (and fails) an object into context 1, over and over.
        let mut n = 0;
        loop {
            rec.record_handle_bound(2, 1, &refused());
            n += 1;
            if rec.sessions.lock().unwrap()[&1].cut || n > 2 * MAX_SESSION_BYTES / 64 {
                break;
            }
        }
        let s = rec.sessions.lock().unwrap();
        assert!(s[&1].cut, "the refused binds were never cut: {n} of them");
        assert!(
            s[&1].calls.len() < n,
            "{} calls kept of {n}",
            s[&1].calls.len()
        );
        assert!(
            !s[&2].object_fd,
            "a refused bind made the file an object fd"
        );
        assert!(s[&2].failed_bind);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
