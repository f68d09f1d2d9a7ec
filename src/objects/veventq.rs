//! vEVENT queues (IOMMUFD_OBJ_VEVENTQ): events a vIOMMU reports for its vDEVICEs, read by
//! userspace from the queue's fd as a header (flags, sequence) followed by the event data.
//!
//! A queue holds at most `depth` events. An event that finds it full is dropped and replaced by
//! one LOST_EVENTS header at the tail (a single one: a later loss moves it to the tail again with
//! a new sequence number); every report takes the next sequence number, wrapping at 2^31.

use super::viommu::Viommu;
use super::{Context, Extension, ObjectUser};
use nix::errno::Errno;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use uiommufd_uapi::iommufd::{iommufd_vevent_header, IOMMU_VEVENTQ_FLAG_LOST_EVENTS};
use zerocopy::IntoBytes;

/// The kernel's bound on `veventq_depth`.
pub const VEVENTQ_MAX_DEPTH: u32 = 1 << 19;

const HEADER: usize = std::mem::size_of::<iommufd_vevent_header>();

enum Entry {
    Event { sequence: u32, data: Vec<u8> },
    Lost { sequence: u32 },
}

#[derive(Default)]
struct Queue {
    deliver: VecDeque<Entry>,
    /// Real events queued (the LOST_EVENTS header does not count).
    num_events: u32,
    sequence: u32,
}

pub struct VeventQueue {
    pub viommu_id: u32,
    pub viommu: Arc<Viommu>,
    /// The queue is a user of its vIOMMU.
    viommu_user: ObjectUser,
    pub veventq_type: u32,
    depth: u32,
    queue: Mutex<Queue>,
}

impl VeventQueue {
    /// IOMMU_VEVENTQ_ALLOC's object: EOPNOTSUPP for flags or the default type, EINVAL for a depth
    /// of 0 or past [`VEVENTQ_MAX_DEPTH`], ENOENT without such a vIOMMU, EEXIST when the vIOMMU has
    /// a queue of that type. The vIOMMU gains a user.
    pub fn alloc(
        ctx: &Context,
        flags: u32,
        viommu_id: u32,
        veventq_type: u32,
        depth: u32,
    ) -> Result<(u32, Arc<VeventQueue>, ObjectUser), Errno> {
        let viommu = Self::check(ctx, flags, viommu_id, veventq_type, depth)?;
        let mut queues = viommu.veventqs.lock().unwrap();
        if queues.contains_key(&veventq_type) {
            return Err(Errno::EEXIST);
        }
        let q = Arc::new(VeventQueue {
            viommu_id,
            viommu: viommu.clone(),
            viommu_user: ctx.take_user(viommu_id)?,
            veventq_type,
            depth,
            queue: Mutex::new(Queue::default()),
        });
        // Held from the start for the fd it is made for.
        let (id, user) = ctx.insert_held(super::Object::from(q.clone()))?;
        queues.insert(veventq_type, Arc::downgrade(&q));
        Ok((id, q, user))
    }

    /// IOMMU_VEVENTQ_ALLOC's checks, in the kernel's order, without making anything: the vIOMMU
    /// the queue would belong to.
    pub fn check(
        ctx: &Context,
        flags: u32,
        viommu_id: u32,
        veventq_type: u32,
        depth: u32,
    ) -> Result<Arc<Viommu>, Errno> {
        if flags != 0 || veventq_type == uiommufd_uapi::iommufd::IOMMU_VEVENTQ_TYPE_DEFAULT {
            return Err(Errno::EOPNOTSUPP);
        }
        if depth == 0 || depth > VEVENTQ_MAX_DEPTH {
            return Err(Errno::EINVAL);
        }
        let viommu = ctx.get_as::<Viommu>(viommu_id)?;
        if viommu.veventqs.lock().unwrap().contains_key(&veventq_type) {
            return Err(Errno::EEXIST);
        }
        Ok(viommu)
    }

    /// The vIOMMU reports an event with `data`.
    pub fn report(&self, data: &[u8]) {
        let mut q = self.queue.lock().unwrap();
        if matches!(q.deliver.back(), Some(Entry::Lost { .. })) {
            q.deliver.pop_back();
        }
        let sequence = q.sequence;
        q.sequence = (q.sequence + 1) & i32::MAX as u32;
        if q.num_events == self.depth {
            q.deliver.push_back(Entry::Lost { sequence });
        } else {
            q.num_events += 1;
            q.deliver.push_back(Entry::Event {
                sequence,
                data: data.to_vec(),
            });
        }
    }

    /// read() of `count` bytes: whole events only. EINVAL below one header, or when the first
    /// event does not fit; empty when nothing is queued.
    pub fn read(&self, count: usize) -> Result<Vec<u8>, Errno> {
        if count < HEADER {
            return Err(Errno::EINVAL);
        }
        let mut q = self.queue.lock().unwrap();
        let mut out = Vec::new();
        while let Some(front) = q.deliver.front() {
            let room = count - out.len();
            let (flags, sequence, data): (u32, u32, &[u8]) = match front {
                Entry::Lost { sequence } => (IOMMU_VEVENTQ_FLAG_LOST_EVENTS, *sequence, &[]),
                Entry::Event { sequence, data } => (0, *sequence, data),
            };
            if HEADER + data.len() > room {
                if out.is_empty() && HEADER <= room {
                    return Err(Errno::EINVAL);
                }
                break;
            }
            out.extend_from_slice(iommufd_vevent_header { flags, sequence }.as_bytes());
            out.extend_from_slice(data);
            if matches!(q.deliver.pop_front(), Some(Entry::Event { .. })) {
                q.num_events -= 1;
            }
        }
        Ok(out)
    }
}

impl Extension for VeventQueue {
    fn type_name(&self) -> &'static str {
        "veventq"
    }

    fn destroy(&self, _ctx: &Context) {
        self.viommu
            .veventqs
            .lock()
            .unwrap()
            .remove(&self.veventq_type);
        self.queue.lock().unwrap().deliver.clear();
        self.viommu_user.release();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{HwptPaging, Ioas, Object};
    use uiommufd_uapi::iommufd::iommufd_vevent_header;
    use zerocopy::FromBytes;

    /// A vIOMMU driver without any feature.
    struct Plain;
    impl crate::objects::ViommuDriver for Plain {}

    fn queue(depth: u32) -> (Context, Arc<VeventQueue>) {
        let ctx = Context::new();
        let ioas = ctx.insert(Object::Ioas(Ioas::new())).unwrap();
        use crate::backends::mock::{MockDomain, MockKind};
        let d: Arc<dyn crate::backends::Domain> = Arc::new(MockDomain::new(MockKind::Normal));
        let (hwpt_id, hwpt) = HwptPaging::alloc(&ctx, ioas, d, 0, false).unwrap();
        let (vid, _) = Viommu::alloc(&ctx, 1, None, hwpt_id, hwpt, Box::new(Plain)).unwrap();
        assert_eq!(
            VeventQueue::alloc(&ctx, 1, vid, 7, 2).err(),
            Some(Errno::EOPNOTSUPP)
        );
        assert_eq!(
            VeventQueue::alloc(&ctx, 0, vid, 0, 2).err(),
            Some(Errno::EOPNOTSUPP)
        );
        assert_eq!(
            VeventQueue::alloc(&ctx, 0, vid, 7, 0).err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(
            VeventQueue::alloc(&ctx, 0, vid, 7, VEVENTQ_MAX_DEPTH + 1).err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(
            VeventQueue::alloc(&ctx, 0, 99, 7, 2).err(),
            Some(Errno::ENOENT)
        );
        let (_, q, _user) = VeventQueue::alloc(&ctx, 0, vid, 7, depth).unwrap();
        assert_eq!(
            VeventQueue::alloc(&ctx, 0, vid, 7, depth).err(),
            Some(Errno::EEXIST)
        );
        assert_eq!(
            ctx.destroy(vid),
            Err(Errno::EBUSY),
            "the queue holds its vIOMMU"
        );
        (ctx, q)
    }

    fn headers(bytes: &[u8], data_len: usize) -> Vec<(u32, u32)> {
        bytes
            .chunks(HEADER + data_len)
            .map(|c| {
                let h = iommufd_vevent_header::read_from_prefix(c).unwrap().0;
                (h.flags, h.sequence)
            })
            .collect()
    }

    #[test]
    fn events_overflow_into_one_lost_header() {
        let (_ctx, q) = queue(2);
        assert_eq!(q.read(HEADER - 1), Err(Errno::EINVAL));
        assert_eq!(q.read(HEADER).unwrap(), Vec::<u8>::new(), "empty queue");
        q.report(&[1, 0, 0, 0]);
        assert_eq!(
            q.read(HEADER),
            Err(Errno::EINVAL),
            "the header fits, the data does not"
        );
        for i in 2..=4u8 {
            q.report(&[i, 0, 0, 0]);
        }
        // Two events, then one LOST header carrying the last sequence number.
        let out = q.read(1024).unwrap();
        assert_eq!(out.len(), 2 * (HEADER + 4) + HEADER);
        let lost = iommufd_vevent_header::read_from_prefix(&out[2 * (HEADER + 4)..])
            .unwrap()
            .0;
        assert_eq!(
            (lost.flags, lost.sequence),
            (IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 3)
        );
        assert_eq!(headers(&out[..2 * (HEADER + 4)], 4), vec![(0, 0), (0, 1)]);
        // Room again: the next event follows with the next sequence number.
        q.report(&[5, 0, 0, 0]);
        assert_eq!(headers(&q.read(1024).unwrap(), 4), vec![(0, 4)]);
    }
}
