//! The counters of one running transport, for its status (the FUSE status file and the control
//! socket): shared by the transport, its handlers and its io_uring queues, never process-wide, so
//! two transports in one process (tests) each report their own.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Which channel carries a transport's FUSE requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseChannel {
    /// Not settled yet (the FUSE session is starting), or a CUSE-only handler.
    None = 0,
    DevFuse = 1,
    IoUring = 2,
}

impl FuseChannel {
    /// Its name in the status: "none", "/dev/fuse" or "io_uring".
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::DevFuse => super::DEV_FUSE,
            Self::IoUring => "io_uring",
        }
    }
}

/// The counters of one transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    channel: AtomicU8,
    /// Requests answered through the rings since start.
    ring_requests: AtomicU64,
    /// Ring threads (each one entry) started beyond `uring::INITIAL_THREADS` per CPU, all CPUs together.
    extra_entries: AtomicU64,
}

impl TransportStats {
    /// The FUSE request channel in use.
    pub fn fuse_channel(&self) -> FuseChannel {
        match self.channel.load(Ordering::Relaxed) {
            1 => FuseChannel::DevFuse,
            2 => FuseChannel::IoUring,
            _ => FuseChannel::None,
        }
    }

    pub(super) fn set_fuse_channel(&self, channel: FuseChannel) {
        self.channel.store(channel as u8, Ordering::Relaxed);
    }

    /// How many requests travelled over this transport's io_uring queues.
    pub fn ring_requests(&self) -> u64 {
        self.ring_requests.load(Ordering::Relaxed)
    }

    pub(super) fn count_ring_request(&self) {
        self.ring_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// How many ring threads (each one entry) the CPUs started beyond their first
    /// `uring::INITIAL_THREADS` each.
    pub fn extra_entries(&self) -> u64 {
        self.extra_entries.load(Ordering::Relaxed)
    }

    pub(super) fn count_extra_entry(&self) {
        self.extra_entries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The daemon's status (JSON, from `Service::status`) with the part of the transport counted by
/// `stats` added: the channel in use and the io_uring counters. Unchanged when it is not a JSON
/// object.
pub fn with_transport_status(stats: &TransportStats, status: String) -> String {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(&status) else {
        return status;
    };
    map.insert("fuse_channel".into(), stats.fuse_channel().name().into());
    map.insert("io_uring_requests".into(), stats.ring_requests().into());
    map.insert(
        "io_uring_extra_entries".into(),
        stats.extra_entries().into(),
    );
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transport_reports_its_own_counters() {
        let (a, b) = (TransportStats::default(), TransportStats::default());
        a.set_fuse_channel(FuseChannel::IoUring);
        a.count_ring_request();
        a.count_ring_request();
        a.count_extra_entry();
        b.set_fuse_channel(FuseChannel::DevFuse);
        let status = |s: &TransportStats| -> serde_json::Value {
            serde_json::from_str(&with_transport_status(s, r#"{"contexts":1}"#.into())).unwrap()
        };
        let (sa, sb) = (status(&a), status(&b));
        assert_eq!(sa["fuse_channel"], "io_uring");
        assert_eq!(sa["io_uring_requests"], 2);
        assert_eq!(sa["io_uring_extra_entries"], 1);
        assert_eq!(sa["contexts"], 1);
        assert_eq!(sb["fuse_channel"], "/dev/fuse");
        assert_eq!(sb["io_uring_requests"], 0);
        assert_eq!(status(&TransportStats::default())["fuse_channel"], "none");
        assert_eq!(with_transport_status(&a, "not json".into()), "not json");
    }
}
