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
            if let Some(s) = sessions.get_mut(&file_ctx) {
                s.object_fd = true;
            }
            let Some(s) = sessions.get_mut(&origin) else {
                return;
            };
            match Call::fd_returning(bound, s.object_fds + 1) {
                Some(c) => {
                    let named = c.fd_as.clone();
                    s.calls.push(c);
                    let Some(name) = named else {
                        return;
                    };
                    s.object_fds += 1;
                    name
                }
                None => {
                    if let Ok(id) = bound.object_id {
                        s.calls.push(Call::object_fd(id, bound.what));
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
