//! Fault queues (IOMMUFD_OBJ_FAULT): I/O page faults of devices attached to HWPTs allocated with
//! IOMMU_HWPT_FAULT_ID_VALID, read by userspace from the queue's fd, answered by writing responses.
//!
//! A fault group waits in `deliver` until a read hands it out; the read gives it a cookie (the
//! smallest free one, from 1) and moves it to `awaiting`; a written response with that cookie
//! retires it.

use super::{Context, Extension, ObjectUser};
use nix::errno::Errno;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use uiommufd_uapi::iommufd::*;
use zerocopy::IntoBytes;

const RECORD: usize = std::mem::size_of::<iommu_hwpt_pgfault>();
const RESPONSE: usize = std::mem::size_of::<iommu_hwpt_page_response>();

/// One page request as the device raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub flags: u32,
    pub dev_id: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub addr: u64,
}

#[derive(Default)]
struct Queue {
    deliver: VecDeque<Vec<PageRequest>>,
    awaiting: BTreeMap<u32, Vec<PageRequest>>,
}

#[derive(Default)]
pub struct FaultQueue {
    queue: Mutex<Queue>,
}

impl FaultQueue {
    /// A fault group (the requests up to and including the one flagged LAST_PAGE) arrives.
    pub fn report(&self, group: Vec<PageRequest>) {
        if !group.is_empty() {
            self.queue.lock().unwrap().deliver.push_back(group);
        }
    }

    /// Groups waiting to be read and groups waiting for a response.
    pub fn pending(&self) -> (usize, usize) {
        let q = self.queue.lock().unwrap();
        (q.deliver.len(), q.awaiting.len())
    }

    /// read() of `count` bytes: whole groups only. ESPIPE unless `count` is a multiple of the
    /// record size; EINVAL when the first group does not fit; empty when nothing is queued.
    pub fn read(&self, count: usize) -> Result<Vec<u8>, Errno> {
        if !count.is_multiple_of(RECORD) {
            return Err(Errno::ESPIPE);
        }
        let mut q = self.queue.lock().unwrap();
        let mut out = Vec::new();
        while let Some(group) = q.deliver.front() {
            if group.len() * RECORD > count - out.len() {
                if out.is_empty() {
                    return Err(Errno::EINVAL);
                }
                break;
            }
            let cookie = (1..=u32::MAX)
                .find(|c| !q.awaiting.contains_key(c))
                .ok_or(Errno::EBUSY)?;
            let group = q.deliver.pop_front().expect("front exists");
            for r in &group {
                let rec = iommu_hwpt_pgfault {
                    flags: r.flags,
                    dev_id: r.dev_id,
                    pasid: r.pasid,
                    grpid: r.grpid,
                    perm: r.perm,
                    reserved: 0,
                    addr: r.addr,
                    length: 0,
                    cookie,
                };
                out.extend_from_slice(rec.as_bytes());
            }
            q.awaiting.insert(cookie, group);
        }
        Ok(out)
    }

    /// write() of responses; returns the bytes consumed. A bad response stops the write: its
    /// errno if it was the first one, the bytes before it otherwise.
    pub fn write(&self, data: &[u8]) -> Result<usize, Errno> {
        if !data.len().is_multiple_of(RESPONSE) {
            return Err(Errno::ESPIPE);
        }
        let mut q = self.queue.lock().unwrap();
        let mut done = 0;
        for chunk in data.chunks_exact(RESPONSE) {
            let cookie = u32::from_ne_bytes(chunk[0..4].try_into().expect("4 bytes"));
            let code = u32::from_ne_bytes(chunk[4..8].try_into().expect("4 bytes"));
            let bad = if code != IOMMUFD_PAGE_RESP_SUCCESS && code != IOMMUFD_PAGE_RESP_INVALID {
                true
            } else {
                q.awaiting.remove(&cookie).is_none()
            };
            if bad {
                return if done == 0 {
                    Err(Errno::EINVAL)
                } else {
                    Ok(done)
                };
            }
            done += RESPONSE;
        }
        Ok(done)
    }
}

impl Extension for FaultQueue {
    fn type_name(&self) -> &'static str {
        "fault"
    }

    fn destroy(&self, _ctx: &Context) {
        // Outstanding groups are answered "invalid" by being dropped: no device waits here.
        let mut q = self.queue.lock().unwrap();
        q.deliver.clear();
        q.awaiting.clear();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(grpid: u32, last: bool) -> PageRequest {
        PageRequest {
            flags: if last {
                IOMMU_PGFAULT_FLAGS_LAST_PAGE
            } else {
                0
            },
            dev_id: 3,
            pasid: 0,
            grpid,
            perm: 1,
            addr: 0x1000 * grpid as u64,
        }
    }

    #[test]
    fn groups_are_read_whole_and_answered_by_cookie() {
        let q = FaultQueue::default();
        assert_eq!(
            q.read(RECORD).unwrap(),
            Vec::<u8>::new(),
            "empty queue reads 0 bytes"
        );
        q.report(vec![req(1, false), req(1, true)]);
        q.report(vec![req(2, true)]);
        assert_eq!(q.read(RECORD + 1), Err(Errno::ESPIPE));
        assert_eq!(
            q.read(RECORD),
            Err(Errno::EINVAL),
            "the first group needs two records"
        );
        let out = q.read(4 * RECORD).unwrap();
        assert_eq!(out.len(), 3 * RECORD);
        let at = std::mem::offset_of!(iommu_hwpt_pgfault, cookie);
        let cookie_of = |i: usize| {
            u32::from_ne_bytes(
                out[i * RECORD + at..i * RECORD + at + 4]
                    .try_into()
                    .unwrap(),
            )
        };
        assert_eq!((cookie_of(0), cookie_of(1), cookie_of(2)), (1, 1, 2));
        assert_eq!(q.pending(), (0, 2));
        let resp = |cookie: u32, code: u32| {
            iommu_hwpt_page_response { cookie, code }
                .as_bytes()
                .to_vec()
        };
        assert_eq!(
            q.write(&resp(1, 7)),
            Err(Errno::EINVAL),
            "unknown response code"
        );
        assert_eq!(q.write(&resp(9, 0)), Err(Errno::EINVAL), "unknown cookie");
        let mut two = resp(2, IOMMUFD_PAGE_RESP_SUCCESS);
        two.extend(resp(2, IOMMUFD_PAGE_RESP_SUCCESS));
        assert_eq!(
            q.write(&two),
            Ok(RESPONSE),
            "stops at the second, already answered"
        );
        assert_eq!(q.write(&resp(1, IOMMUFD_PAGE_RESP_INVALID)), Ok(RESPONSE));
        assert_eq!(q.pending(), (0, 0));
        assert_eq!(q.write(&[0; 3]), Err(Errno::ESPIPE));
    }
}

/// The fault queue a HWPT reports to (IOMMU_HWPT_FAULT_ID_VALID); the queue has the HWPT as a user.
#[derive(Default)]
pub struct FaultLink(std::sync::OnceLock<(ObjectUser, std::sync::Arc<FaultQueue>)>);

impl FaultLink {
    /// Links to fault queue `fault_id` of `ctx` (ENOENT when it is no fault queue).
    pub fn set(&self, ctx: &Context, fault_id: u32) -> Result<(), Errno> {
        let q = ctx.get_as::<FaultQueue>(fault_id)?;
        let user = ctx.take_user(fault_id)?;
        // A second link gives its user back as it is dropped here.
        self.0.set((user, q)).map_err(|_| Errno::EBUSY)
    }

    pub fn queue(&self) -> Option<std::sync::Arc<FaultQueue>> {
        self.0.get().map(|(_, q)| q.clone())
    }

    /// The HWPT goes away: the queue loses it as a user.
    pub fn release(&self) {
        if let Some((user, _)) = self.0.get() {
            user.release();
        }
    }
}
