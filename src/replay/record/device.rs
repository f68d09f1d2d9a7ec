//! The device side of a recorded session: a VFIO device node's iommufd ioctls
//! (VFIO_DEVICE_BIND_IOMMUFD, ATTACH/DETACH_IOMMUFD_PT) join the script of the context the device
//! is bound to, as steps on the device's own open (`{"open": "device:NAME", "as": NAME}`), so the
//! IDs they return (`out_devid`) are variables later steps use, and the session replays against a
//! daemon serving the same device (or, transformed, on the selftest's mock: `replay::mock`).

use super::{Call, DeviceRef, Recorder, MAX_STRUCT};
use crate::caller::CallerMemory;
use crate::replay::layout;
use nix::errno::Errno;
use std::collections::HashMap;
use uiommufd_uapi::vfio::VFIO_DEVICE_BIND_IOMMUFD;

impl Recorder {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_device_ioctl(
        &self,
        device: &str,
        file: u64,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
        call: &mut dyn FnMut(&dyn CallerMemory) -> Result<i64, Errno>,
        bound_context: &dyn Fn() -> Option<u64>,
    ) -> Result<i64, Errno> {
        let Some(before) = read_struct(mem, arg, cmd) else {
            // Nothing a script could replay the same way (an unreadable struct).
            return call(mem);
        };
        let result = call(mem);
        let mut after = vec![0u8; before.len()];
        let after = mem.read(arg, &mut after).is_ok().then_some(after);
        let known = self
            .device_files
            .lock()
            .ok()
            .and_then(|f| f.get(&file).cloned());
        let (ctx, dev) = match known {
            Some(k) => k,
            // Only a successful BIND ties a device file to a context: a failed one, or a call on a
            // file that never bound, belongs to no session.
            None if cmd == VFIO_DEVICE_BIND_IOMMUFD && result.is_ok() => {
                let Some(ctx) = bound_context() else {
                    return result;
                };
                match self.bind_file(file, ctx, device) {
                    Some(k) => k,
                    None => return result,
                }
            }
            None => return result,
        };
        let mut c = Call::new(cmd, arg);
        c.before = Some(before);
        c.after = after;
        c.result = result;
        c.device = Some(dev);
        self.push_call(ctx, c);
        result
    }

    pub(super) fn record_device_release(&self, file: u64) {
        let known = self
            .device_files
            .lock()
            .ok()
            .and_then(|mut f| f.remove(&file));
        if let Some((ctx, dev)) = known {
            let mut c = Call::new(0, 0);
            c.device_closed = Some(dev.handle);
            self.push_call(ctx, c);
        }
    }

    /// Ties device file `file` to context `ctx` (its first successful BIND), or returns the tie
    /// a concurrent BIND of the same file made first. The name is picked and inserted under one
    /// lock, so concurrent BINDs into one context never get the same name.
    fn bind_file(&self, file: u64, ctx: u64, device: &str) -> Option<(u64, DeviceRef)> {
        let mut files = self.device_files.lock().ok()?;
        if let Some(k) = files.get(&file) {
            return Some(k.clone());
        }
        let dev = DeviceRef {
            node: device.to_string(),
            handle: handle_name(&files, ctx, device),
        };
        files.insert(file, (ctx, dev.clone()));
        Some((ctx, dev))
    }
}

/// The name of the device's open in context `ctx`'s script: the node's name as a name a script
/// expression can use (`%name`), unique among the context's device files (`files`) and never the
/// context's own open (`fd`).
fn handle_name(files: &HashMap<u64, (u64, DeviceRef)>, ctx: u64, device: &str) -> String {
    let clean: String = device
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let taken = |n: &str| files.values().any(|(c, d)| *c == ctx && d.handle == n);
    let mut name = clean.clone();
    let mut k = 1;
    while taken(&name) || name == "fd" {
        k += 1;
        name = format!("{clean}_{k}");
    }
    name
}

/// The struct of a device ioctl as the caller passed it: as long as its `argsz` says (at least
/// the descriptor's size, at most [`MAX_STRUCT`]); None when unreadable.
fn read_struct(mem: &dyn CallerMemory, arg: u64, cmd: u32) -> Option<Vec<u8>> {
    let def = layout::device_op(cmd)?;
    let mut size = [0u8; 4];
    mem.read(arg, &mut size).ok()?;
    let want = def
        .size
        .max(u32::from_ne_bytes(size) as usize)
        .min(MAX_STRUCT);
    let mut b = vec![0u8; want];
    match mem.read(arg, &mut b) {
        Ok(()) => Some(b),
        Err(_) => {
            b.truncate(def.size);
            mem.read(arg, &mut b).ok().map(|()| b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn concurrent_binds_with_colliding_names_get_distinct_handles() {
        let dir = std::env::temp_dir().join(format!("uiommufd-bindnames-{}", std::process::id()));
        let rec = Recorder::new(&dir).unwrap();
        // "dev-0", "dev.0", "dev 0" … all clean up to "dev_0".
        let nodes = [
            "dev-0", "dev.0", "dev 0", "dev:0", "dev_0", "dev+0", "dev/0", "dev@0",
        ];
        let start = Barrier::new(nodes.len());
        let mut handles: Vec<String> = std::thread::scope(|s| {
            let threads: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let (rec, start) = (&rec, &start);
                    s.spawn(move || {
                        start.wait();
                        rec.bind_file(i as u64, 7, node).unwrap().1.handle
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        // A second BIND of a bound file keeps its name; another context may reuse a name.
        assert_eq!(rec.bind_file(0, 7, "dev-0").unwrap().1.handle, handles[0]);
        assert_eq!(rec.bind_file(100, 8, "dev-0").unwrap().1.handle, "dev_0");
        assert_eq!(rec.bind_file(101, 8, "fd").unwrap().1.handle, "fd_2");
        handles.sort();
        handles.dedup();
        assert_eq!(handles.len(), nodes.len(), "{handles:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
