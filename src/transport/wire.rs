//! FUSE/CUSE message framing: the structs of `<linux/fuse.h>` that this daemon uses, as zerocopy types,
//! and bounds-checked parsing of one kernel message. Nothing here panics on bad input.

use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Protocol major version (the kernel only speaks 7).
pub const KERNEL_VERSION: u32 = 7;
/// The minor version we implement; the kernel uses the smaller of its own and ours.
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// Smallest minor version CUSE accepts in the CUSE_INIT reply.
pub const CUSE_MIN_MINOR: u32 = 11;

/// Largest write payload we negotiate (and the read size we allow). Writes to our files are small
/// (fault responses, device registers); a queued request holds one message, so keep it modest.
pub const MAX_WRITE: u32 = 128 << 10;
/// Read buffer for one message: the kernel refuses reads smaller than a header + write_in + max_write.
pub const BUFFER_SIZE: usize = MAX_WRITE as usize + 64 * 1024;

/// Opcodes (the subset we act on; everything else is answered ENOSYS).
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const BATCH_FORGET: u32 = 42;
    pub const CUSE_INIT: u32 = 4096;
}

/// A short name for log lines.
pub fn opcode_name(op: u32) -> &'static str {
    match op {
        opcode::LOOKUP => "LOOKUP",
        opcode::FORGET => "FORGET",
        opcode::GETATTR => "GETATTR",
        opcode::SETATTR => "SETATTR",
        opcode::OPEN => "OPEN",
        opcode::READ => "READ",
        opcode::WRITE => "WRITE",
        opcode::STATFS => "STATFS",
        opcode::RELEASE => "RELEASE",
        opcode::FLUSH => "FLUSH",
        opcode::INIT => "INIT",
        opcode::OPENDIR => "OPENDIR",
        opcode::READDIR => "READDIR",
        opcode::RELEASEDIR => "RELEASEDIR",
        opcode::ACCESS => "ACCESS",
        opcode::INTERRUPT => "INTERRUPT",
        opcode::DESTROY => "DESTROY",
        opcode::IOCTL => "IOCTL",
        opcode::BATCH_FORGET => "BATCH_FORGET",
        opcode::CUSE_INIT => "CUSE_INIT",
        _ => "OTHER",
    }
}

// INIT flags (fuse_init_in/out.flags).
pub const FUSE_ASYNC_READ: u32 = 1 << 0;
pub const FUSE_BIG_WRITES: u32 = 1 << 5;
pub const FUSE_PARALLEL_DIROPS: u32 = 1 << 18;
pub const FUSE_MAX_PAGES: u32 = 1 << 22;
/// INIT flag: the reply's `flags2` holds the upper 32 flag bits.
pub const FUSE_INIT_EXT: u32 = 1 << 30;
/// `flags2` bit (flag 41): requests may travel over io_uring (the kernel offers it only while the
/// fuse module's `enable_uring` is set).
pub const FUSE_OVER_IO_URING_FLAGS2: u32 = 1 << 9;
/// CUSE_INIT flag: ioctls reach the server with the raw argument, unrestricted.
pub const CUSE_UNRESTRICTED_IOCTL: u32 = 1 << 0;
/// fuse_open_out.open_flags: bypass the page cache.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// fuse_open_out.open_flags: close() sends no FLUSH.
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// fuse_ioctl_in.flags bits.
pub const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;
pub const FUSE_IOCTL_DIR: u32 = 1 << 4;

macro_rules! wire_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
    };
}

wire_struct!(
    /// Header of every kernel → server message.
    InHeader { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32,
    /// Length of trailing extensions in 8-byte units.
    total_extlen: u16, padding: u16 }
);
wire_struct!(
    /// Header of every server → kernel reply.
    OutHeader { len: u32, error: i32, unique: u64 }
);
wire_struct!(InitIn {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32
});
wire_struct!(InitOut {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    max_background: u16,
    congestion_threshold: u16,
    max_write: u32,
    time_gran: u32,
    max_pages: u16,
    map_alignment: u16,
    flags2: u32,
    max_stack_depth: u32,
    request_timeout: u16,
    unused: [u16; 11],
});
/// Where `flags2` sits in INIT's argument (after major, minor, max_readahead, flags).
const INIT_IN_FLAGS2_OFFSET: usize = 16;

/// The `flags2` of an INIT argument (0 from a kernel that sends the short form).
pub fn init_flags2(body: &[u8]) -> u32 {
    body.get(INIT_IN_FLAGS2_OFFSET..)
        .and_then(|b| u32::read_from_prefix(b).ok())
        .map_or(0, |(v, _)| v)
}

wire_struct!(CuseInitIn {
    major: u32,
    minor: u32,
    unused: u32,
    flags: u32
});
wire_struct!(CuseInitOut {
    major: u32,
    minor: u32,
    unused: u32,
    flags: u32,
    max_read: u32,
    max_write: u32,
    dev_major: u32,
    dev_minor: u32,
    spare: [u32; 10],
});
wire_struct!(Attr {
    ino: u64,
    size: u64,
    blocks: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    blksize: u32,
    flags: u32,
});
wire_struct!(
    /// SETATTR's argument.
    SetattrIn { valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64, atime: u64,
    mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32,
    unused4: u32, uid: u32, gid: u32, unused5: u32 }
);
/// fuse_setattr_in.valid bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
wire_struct!(EntryOut {
    nodeid: u64,
    generation: u64,
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
    attr: Attr,
});
wire_struct!(AttrOut {
    attr_valid: u64,
    attr_valid_nsec: u32,
    dummy: u32,
    attr: Attr
});
wire_struct!(GetattrIn {
    getattr_flags: u32,
    dummy: u32,
    fh: u64
});
wire_struct!(OpenIn {
    flags: u32,
    open_flags: u32
});
wire_struct!(OpenOut {
    fh: u64,
    open_flags: u32,
    backing_id: i32
});
wire_struct!(ReleaseIn {
    fh: u64,
    flags: u32,
    release_flags: u32,
    lock_owner: u64
});
wire_struct!(FlushIn {
    fh: u64,
    unused: u32,
    padding: u32,
    lock_owner: u64
});
wire_struct!(ReadIn {
    fh: u64,
    offset: u64,
    size: u32,
    read_flags: u32,
    lock_owner: u64,
    flags: u32,
    padding: u32,
});
wire_struct!(WriteIn {
    fh: u64,
    offset: u64,
    size: u32,
    write_flags: u32,
    lock_owner: u64,
    flags: u32,
    padding: u32,
});
wire_struct!(WriteOut {
    size: u32,
    padding: u32
});
wire_struct!(Kstatfs {
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
    bsize: u32,
    namelen: u32,
    frsize: u32,
    padding: u32,
    spare: [u32; 6],
});
wire_struct!(IoctlIn {
    fh: u64,
    flags: u32,
    cmd: u32,
    arg: u64,
    in_size: u32,
    out_size: u32
});
wire_struct!(IoctlOut {
    result: i32,
    flags: u32,
    in_iovs: u32,
    out_iovs: u32
});
wire_struct!(Dirent {
    ino: u64,
    off: u64,
    namelen: u32,
    typ: u32
});

/// FUSE over io_uring: each ring entry has a header buffer of this layout (`fuse_uring_req_header`)
/// and a payload buffer. A request's `fuse_in_header` sits in `in_out`, the opcode's first
/// argument in `op_in`, the rest in the payload; a reply's `fuse_out_header` goes in `in_out`, its
/// arguments in the payload.
pub mod ring {
    /// Size of the `in_out` area (a fuse_in_header or fuse_out_header at its start).
    pub const IN_OUT: usize = 128;
    /// Size of the `op_in` area (the opcode's first argument).
    pub const OP_IN: usize = 128;
    /// Offset of [`super::RingEntInOut`] in the header buffer.
    pub const ENT_IN_OUT: usize = IN_OUT + OP_IN;
    /// The whole header buffer.
    pub const HEADER_SIZE: usize = ENT_IN_OUT + std::mem::size_of::<super::RingEntInOut>();
    /// `cmd_op` of IORING_OP_URING_CMD: hand an entry (with its buffers) to the kernel.
    pub const CMD_REGISTER: u32 = 1;
    /// `cmd_op`: commit the reply held by an entry and hand the entry back for the next request.
    pub const CMD_COMMIT_AND_FETCH: u32 = 2;
}

wire_struct!(
    /// `fuse_uring_ent_in_out`: the payload's size both ways and the id a commit names.
    RingEntInOut { flags: u64, commit_id: u64, payload_sz: u32, padding: u32, reserved: u64 }
);
wire_struct!(
    /// `fuse_uring_cmd_req`: the command area of a URING_CMD.
    RingCmdReq { flags: u64, commit_id: u64, qid: u16, padding: [u8; 6] }
);

/// What is wrong with a message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {0} bytes is shorter than a header")]
    ShortHeader(usize),
    #[error("header says {header} bytes, read returned {actual}")]
    LengthMismatch { header: u32, actual: usize },
    #[error("extensions ({0} bytes) longer than the body")]
    BadExtensions(usize),
    #[error("body of {actual} bytes too short for {what} ({need} bytes)")]
    ShortBody {
        what: &'static str,
        need: usize,
        actual: usize,
    },
    #[error("name is not NUL-terminated")]
    BadName,
}

/// One parsed kernel message: the header and its argument bytes (extensions stripped).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub header: InHeader,
    pub body: &'a [u8],
}

/// Reads just the header, for when the rest is malformed but a reply is still owed.
pub fn peek_header(msg: &[u8]) -> Option<InHeader> {
    InHeader::read_from_prefix(msg).ok().map(|(h, _)| h)
}

/// Splits a kernel message into header and body, checking the lengths.
pub fn parse(msg: &[u8]) -> Result<Request<'_>, WireError> {
    let (header, rest) =
        InHeader::read_from_prefix(msg).map_err(|_| WireError::ShortHeader(msg.len()))?;
    if header.len as usize != msg.len() {
        return Err(WireError::LengthMismatch {
            header: header.len,
            actual: msg.len(),
        });
    }
    let ext = header.total_extlen as usize * 8;
    let body_len = rest
        .len()
        .checked_sub(ext)
        .ok_or(WireError::BadExtensions(ext))?;
    Ok(Request {
        header,
        body: &rest[..body_len],
    })
}

impl<'a> Request<'a> {
    /// The fixed-size argument struct at the start of the body.
    pub fn arg<T: FromBytes>(&self) -> Result<T, WireError> {
        T::read_from_prefix(self.body)
            .map(|(v, _)| v)
            .map_err(|_| WireError::ShortBody {
                what: std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("arg"),
                need: std::mem::size_of::<T>(),
                actual: self.body.len(),
            })
    }

    /// The argument struct and the bytes after it (WRITE data, BATCH_FORGET entries).
    pub fn arg_and_tail<T: FromBytes>(&self) -> Result<(T, &'a [u8]), WireError> {
        let need = std::mem::size_of::<T>();
        let (v, tail) = T::read_from_prefix(self.body).map_err(|_| WireError::ShortBody {
            what: "argument",
            need,
            actual: self.body.len(),
        })?;
        Ok((v, tail))
    }

    /// The NUL-terminated name that is LOOKUP's whole body.
    pub fn name(&self) -> Result<&'a [u8], WireError> {
        let end = self
            .body
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::BadName)?;
        Ok(&self.body[..end])
    }
}

/// Rebuilds the /dev/fuse form of a request (header, arguments, payload: what [`parse`] takes) from
/// a ring entry's header buffer and the first `payload_sz` bytes of its payload buffer. The size
/// of `op_in`'s argument follows from the header's total length.
pub fn ring_request(header: &[u8], payload: &[u8]) -> Result<(Vec<u8>, RingEntInOut), WireError> {
    let too_short = |need| WireError::ShortBody {
        what: "ring header",
        need,
        actual: header.len(),
    };
    let (ent, _) = header
        .get(ring::ENT_IN_OUT..)
        .and_then(|b| RingEntInOut::read_from_prefix(b).ok())
        .ok_or_else(|| too_short(ring::HEADER_SIZE))?;
    let h = peek_header(header).ok_or_else(|| too_short(ring::HEADER_SIZE))?;
    let hdr = std::mem::size_of::<InHeader>();
    let payload_len = ent.payload_sz as usize;
    let body = payload.get(..payload_len).ok_or(WireError::ShortBody {
        what: "ring payload",
        need: payload_len,
        actual: payload.len(),
    })?;
    let op_in_len = (h.len as usize)
        .checked_sub(hdr + payload_len)
        .filter(|&n| n <= ring::OP_IN)
        .ok_or(WireError::LengthMismatch {
            header: h.len,
            actual: hdr + payload_len,
        })?;
    let mut msg = Vec::with_capacity(h.len as usize);
    msg.extend_from_slice(&header[..hdr]);
    msg.extend_from_slice(&header[ring::IN_OUT..ring::IN_OUT + op_in_len]);
    msg.extend_from_slice(body);
    Ok((msg, ent))
}

/// A reply: the out header followed by `parts`, as one buffer for one write(2).
pub fn reply(unique: u64, error: i32, parts: &[&[u8]]) -> Vec<u8> {
    let payload: usize = if error == 0 {
        parts.iter().map(|p| p.len()).sum()
    } else {
        0
    };
    let len = std::mem::size_of::<OutHeader>() + payload;
    let mut out = Vec::with_capacity(len);
    let header = OutHeader {
        // Replies are bounded by max_write; one past 4 GiB would be refused by the kernel as the
        // wrong length it then is, never cut to a plausible one.
        len: u32::try_from(len).unwrap_or(u32::MAX),
        error,
        unique,
    };
    out.extend_from_slice(header.as_bytes());
    if error == 0 {
        for p in parts {
            out.extend_from_slice(p);
        }
    }
    out
}

/// An error reply: `errno` is positive, the wire carries it negated.
pub fn reply_err(unique: u64, errno: i32) -> Vec<u8> {
    reply(unique, -errno.abs(), &[])
}

/// Appends one directory entry if it fits in `max` bytes overall; returns false when full.
pub fn push_dirent(
    buf: &mut Vec<u8>,
    max: usize,
    ino: u64,
    off: u64,
    typ: u32,
    name: &[u8],
) -> bool {
    let base = std::mem::size_of::<Dirent>() + name.len();
    let padded = (base + 7) & !7;
    if buf.len() + padded > max {
        return false;
    }
    let Ok(namelen) = u32::try_from(name.len()) else {
        return false;
    };
    let d = Dirent {
        ino,
        off,
        namelen,
        typ,
    };
    buf.extend_from_slice(d.as_bytes());
    buf.extend_from_slice(name);
    buf.resize(buf.len() + (padded - base), 0);
    true
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    fn msg(op: u32, body: &[u8]) -> Vec<u8> {
        let h = InHeader {
            len: (40 + body.len()) as u32,
            opcode: op,
            unique: 7,
            nodeid: 1,
            pid: 42,
            ..Default::default()
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<InHeader>(), 40);
        assert_eq!(std::mem::size_of::<OutHeader>(), 16);
        assert_eq!(std::mem::size_of::<InitOut>(), 64);
        assert_eq!(std::mem::size_of::<CuseInitOut>(), 72);
        assert_eq!(std::mem::size_of::<Attr>(), 88);
        assert_eq!(std::mem::size_of::<EntryOut>(), 128);
        assert_eq!(std::mem::size_of::<AttrOut>(), 104);
        assert_eq!(std::mem::size_of::<SetattrIn>(), 88);
        assert_eq!(std::mem::size_of::<ReadIn>(), 40);
        assert_eq!(std::mem::size_of::<WriteIn>(), 40);
        assert_eq!(std::mem::size_of::<IoctlIn>(), 32);
        assert_eq!(std::mem::size_of::<IoctlOut>(), 16);
        assert_eq!(std::mem::size_of::<Kstatfs>(), 80);
        assert_eq!(std::mem::size_of::<Dirent>(), 24);
        assert_eq!(std::mem::size_of::<RingEntInOut>(), 32);
        assert_eq!(std::mem::size_of::<RingCmdReq>(), 24);
        assert_eq!(ring::HEADER_SIZE, 288);
    }

    #[test]
    fn parses_a_good_message() {
        let io = IoctlIn {
            fh: 3,
            cmd: 0x3b80,
            arg: 0x1000,
            ..Default::default()
        };
        let m = msg(opcode::IOCTL, io.as_bytes());
        let r = parse(&m).unwrap();
        assert_eq!(r.header.opcode, opcode::IOCTL);
        assert_eq!(r.arg::<IoctlIn>().unwrap(), io);
    }

    #[test]
    fn rejects_malformed_messages() {
        assert_eq!(parse(&[]).unwrap_err(), WireError::ShortHeader(0));
        assert_eq!(parse(&[0u8; 39]).unwrap_err(), WireError::ShortHeader(39));
        let mut m = msg(opcode::IOCTL, &[0u8; 8]);
        assert!(matches!(
            parse(&m[..45]),
            Err(WireError::LengthMismatch { .. })
        ));
        // A body too short for its argument struct.
        let r = parse(&m).unwrap();
        assert!(matches!(
            r.arg::<IoctlIn>(),
            Err(WireError::ShortBody {
                need: 32,
                actual: 8,
                ..
            })
        ));
        // Extensions claiming more than the body.
        m[36] = 2;
        assert_eq!(parse(&m).unwrap_err(), WireError::BadExtensions(16));
        // Header length lying upward.
        let mut m = msg(opcode::GETATTR, &[]);
        m[0] = 0xff;
        assert!(matches!(parse(&m), Err(WireError::LengthMismatch { .. })));
    }

    #[test]
    fn names_must_be_terminated() {
        let m = msg(opcode::LOOKUP, b"iommu");
        assert_eq!(parse(&m).unwrap().name().unwrap_err(), WireError::BadName);
        let m = msg(opcode::LOOKUP, b"iommu\0");
        assert_eq!(parse(&m).unwrap().name().unwrap(), b"iommu");
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let mut b = Vec::new();
        assert!(push_dirent(&mut b, 4096, 2, 1, 8, b"iommu"));
        assert_eq!(b.len(), 32);
        assert!(!push_dirent(&mut b, 40, 3, 2, 4, b"vfio"));
        assert_eq!(b.len(), 32);
    }

    #[test]
    fn ring_requests_rebuild_the_device_form() {
        let io = IoctlIn {
            fh: 3,
            cmd: 0x3b80,
            ..Default::default()
        };
        let mut m = msg(opcode::IOCTL, io.as_bytes());
        m.extend_from_slice(b"tail");
        m[0] = m.len() as u8;
        let mut header = vec![0u8; ring::HEADER_SIZE];
        header[..40].copy_from_slice(&m[..40]);
        header[ring::IN_OUT..ring::IN_OUT + 32].copy_from_slice(io.as_bytes());
        let ent = RingEntInOut {
            commit_id: 7,
            payload_sz: 4,
            ..Default::default()
        };
        header[ring::ENT_IN_OUT..].copy_from_slice(ent.as_bytes());
        let mut payload = b"tail".to_vec();
        payload.resize(4096, 0xee);
        let (rebuilt, got) = ring_request(&header, &payload).unwrap();
        assert_eq!(rebuilt, m);
        assert_eq!(got.commit_id, 7);
        // A payload size the header's length cannot hold, or a payload beyond the buffer.
        header[0] = 40;
        assert!(matches!(
            ring_request(&header, &payload),
            Err(WireError::LengthMismatch { .. })
        ));
        assert!(matches!(
            ring_request(&header, &payload[..2]),
            Err(WireError::ShortBody { .. })
        ));
    }

    #[test]
    fn error_replies_carry_no_payload() {
        let r = reply(9, -22, &[b"ignored"]);
        assert_eq!(r.len(), 16);
        let h = OutHeader::read_from_bytes(&r).unwrap();
        assert_eq!((h.len, h.error, h.unique), (16, -22, 9));
        assert_eq!(reply_err(9, 22), r);
    }
}
