//! Handler tests: constructed kernel messages in, replies checked byte for byte.

use super::*;
use crate::caller::read_struct;
use crate::transport::wire::*;
use std::sync::atomic::AtomicUsize;
use zerocopy::FromBytes;

#[derive(Default)]
struct Counters {
    opens: AtomicUsize,
    releases: AtomicUsize,
}

struct TestService(Arc<Counters>);
struct TestFile(Arc<Counters>);

impl Service for TestService {
    fn open(&self, _node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno> {
        self.0.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(TestFile(self.0.clone())))
    }
    fn device_names(&self) -> Vec<String> {
        vec!["dev0".into()]
    }
    fn status(&self) -> String {
        "hello status\n".into()
    }
}

impl OpenFile for TestFile {
    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        match cmd {
            1 => {
                let v: u32 = read_struct(mem, arg)?;
                crate::caller::write_struct(mem, arg, &(v + 1))?;
                Ok(0)
            }
            2 => Ok(7),
            3 => Ok(i64::MAX),
            4 => panic!("a handler bug"),
            _ => Err(Errno::ENOTTY),
        }
    }
    fn read(&self, offset: u64, size: u32, _mem: &dyn CallerMemory) -> Result<Vec<u8>, Errno> {
        Ok(format!("{offset}:{size}").into_bytes())
    }
    fn inline_ioctl(&self, cmd: u32) -> bool {
        cmd == 2
    }
    fn release(&self) {
        self.0.releases.fetch_add(1, Ordering::SeqCst);
    }
}

/// Resolves every pid but 0 to the test's own memory.
struct SelfCallers;
impl CallerResolver for SelfCallers {
    fn caller(&self, tid: u32) -> Result<Box<dyn CallerMemory>, Errno> {
        if tid == 0 {
            return Err(Errno::ESRCH);
        }
        Ok(Box::new(ProcessMemory::current()))
    }
}

fn msg(op: u32, unique: u64, nodeid: u64, pid: u32, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (40 + body.len()) as u32,
        opcode: op,
        unique,
        nodeid,
        pid,
        ..Default::default()
    };
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn split(reply: &[u8]) -> (OutHeader, &[u8]) {
    let (h, rest) = OutHeader::read_from_prefix(reply).unwrap();
    assert_eq!(h.len as usize, reply.len());
    (h, rest)
}

fn handler(role: Role) -> (Handler, Arc<Counters>) {
    let c = Arc::new(Counters::default());
    let h = Handler::new(
        role,
        Arc::new(TestService(c.clone())),
        Arc::new(SelfCallers),
    );
    (h, c)
}

fn cuse_handler() -> (Handler, Arc<Counters>) {
    handler(Role::Cuse {
        node: NodeKind::Iommu,
        devname: "iommu".into(),
    })
}

fn cuse_init(h: &Handler) -> Vec<u8> {
    let i = CuseInitIn {
        major: 7,
        minor: 45,
        unused: 0,
        flags: 0,
    };
    h.handle(&msg(opcode::CUSE_INIT, 1, 0, 0, i.as_bytes()))
        .unwrap()
}

fn open(h: &Handler, nodeid: u64) -> u64 {
    let o = OpenIn::default();
    let r = h
        .handle(&msg(opcode::OPEN, 2, nodeid, 100, o.as_bytes()))
        .unwrap();
    let (hd, body) = split(&r);
    assert_eq!(hd.error, 0);
    let out = OpenOut::read_from_bytes(body).unwrap();
    assert_eq!(out.open_flags, FOPEN_DIRECT_IO | FOPEN_NOFLUSH);
    out.fh
}

fn ioctl(h: &Handler, fh: u64, cmd: u32, arg: u64, pid: u32) -> Result<i32, i32> {
    let i = IoctlIn {
        fh,
        flags: FUSE_IOCTL_UNRESTRICTED,
        cmd,
        arg,
        ..Default::default()
    };
    let r = h
        .handle(&msg(opcode::IOCTL, 3, 0, pid, i.as_bytes()))
        .unwrap();
    let (hd, body) = split(&r);
    if hd.error != 0 {
        assert!(body.is_empty());
        return Err(-hd.error);
    }
    let out = IoctlOut::read_from_bytes(body).unwrap();
    assert_eq!(
        (out.flags, out.in_iovs, out.out_iovs),
        (0, 0, 0),
        "never a retry"
    );
    Ok(out.result)
}

#[test]
fn cuse_init_reply() {
    let (h, _) = cuse_handler();
    assert!(!h.is_ready());
    let r = cuse_init(&h);
    let (hd, body) = split(&r);
    assert_eq!((hd.error, hd.unique), (0, 1));
    let (out, info) = CuseInitOut::read_from_prefix(body).unwrap();
    assert_eq!(out.major, 7);
    assert!(out.minor >= CUSE_MIN_MINOR);
    assert_eq!(out.flags & CUSE_UNRESTRICTED_IOCTL, CUSE_UNRESTRICTED_IOCTL);
    assert!(out.max_write >= 128 * 1024);
    assert_eq!(info, b"DEVNAME=iommu\0");
    assert!(h.is_ready());
}

#[test]
fn requests_before_init_fail() {
    let (h, c) = cuse_handler();
    let r = h
        .handle(&msg(opcode::OPEN, 5, 0, 1, OpenIn::default().as_bytes()))
        .unwrap();
    assert_eq!(split(&r).0.error, -libc::EIO);
    assert_eq!(c.opens.load(Ordering::SeqCst), 0);
}

#[test]
fn cuse_unrestricted_ioctl_uses_raw_arg() {
    let (h, c) = cuse_handler();
    cuse_init(&h);
    let fh = open(&h, 0);
    let mut value = Box::new(41u32);
    let addr = &mut *value as *mut u32 as u64;
    assert_eq!(ioctl(&h, fh, 1, addr, 1234), Ok(0));
    assert_eq!(**std::hint::black_box(&value), 42);
    assert_eq!(ioctl(&h, fh, 2, 0, 1234), Ok(7));
    assert_eq!(ioctl(&h, fh, 9, 0, 1234), Err(libc::ENOTTY));
    assert_eq!(ioctl(&h, fh, 1, 8, 1234), Err(libc::EFAULT));
    assert_eq!(ioctl(&h, fh, 3, 0, 1234), Err(libc::EOVERFLOW));
    // pid 0 (invisible caller) never reaches the service.
    assert_eq!(ioctl(&h, fh, 2, 0, 0), Err(libc::EPERM));
    assert_eq!(ioctl(&h, fh + 100, 2, 0, 1), Err(libc::EBADF));
    // RELEASE comes with pid 0 and is keyed by fh.
    let rel = ReleaseIn {
        fh,
        ..Default::default()
    };
    let r = h
        .handle(&msg(opcode::RELEASE, 9, 0, 0, rel.as_bytes()))
        .unwrap();
    assert_eq!(split(&r).0.error, 0);
    assert_eq!(c.releases.load(Ordering::SeqCst), 1);
    assert_eq!(h.open_handles(), 0);
}

#[test]
fn cuse_read_and_unknown_ops() {
    let (h, _) = cuse_handler();
    cuse_init(&h);
    let fh = open(&h, 0);
    let rd = ReadIn {
        fh,
        offset: 0,
        size: 3,
        ..Default::default()
    };
    let r = h
        .handle(&msg(opcode::READ, 4, 0, 1, rd.as_bytes()))
        .unwrap();
    assert_eq!(split(&r).1, b"0:3");
    let r = h.handle(&msg(opcode::LOOKUP, 5, 1, 1, b"iommu\0")).unwrap();
    assert_eq!(split(&r).0.error, -libc::ENOSYS);
    let r = h
        .handle(&msg(opcode::INIT, 6, 0, 1, InitIn::default().as_bytes()))
        .unwrap();
    assert_eq!(split(&r).0.error, -libc::ENOSYS);
    let r = h.handle(&msg(999, 7, 0, 1, &[])).unwrap();
    assert_eq!(split(&r).0.error, -libc::ENOSYS);
    assert_eq!(h.release_all(), 1);
}

fn fuse_handler() -> (Handler, Arc<Counters>) {
    let (h, c) = handler(Role::Fuse(tree::Tree::new(vec!["dev0".into()])));
    let i = InitIn {
        major: 7,
        minor: 45,
        max_readahead: 4096,
        flags: FUSE_MAX_PAGES | FUSE_BIG_WRITES | (1 << 7),
    };
    let r = h.handle(&msg(opcode::INIT, 1, 0, 0, i.as_bytes())).unwrap();
    let (hd, body) = split(&r);
    assert_eq!(hd.error, 0);
    let out = InitOut::read_from_bytes(body).unwrap();
    assert_eq!(out.flags, FUSE_MAX_PAGES | FUSE_BIG_WRITES, "no splice");
    assert!(out.max_write >= 128 * 1024);
    (h, c)
}

#[test]
fn fuse_lookup_getattr_readdir_status() {
    let (h, _) = fuse_handler();
    let r = h
        .handle(&msg(opcode::LOOKUP, 2, tree::ROOT, 1, b"vfio\0"))
        .unwrap();
    let e = EntryOut::read_from_bytes(split(&r).1).unwrap();
    assert_eq!(e.nodeid, tree::VFIO_DIR);
    let r = h
        .handle(&msg(opcode::LOOKUP, 2, tree::DEVICES_DIR, 1, b"dev0\0"))
        .unwrap();
    assert_eq!(
        EntryOut::read_from_bytes(split(&r).1).unwrap().nodeid,
        tree::FIRST_DEVICE
    );
    let r = h
        .handle(&msg(opcode::LOOKUP, 2, tree::ROOT, 1, b"nope\0"))
        .unwrap();
    assert_eq!(split(&r).0.error, -libc::ENOENT);
    let r = h
        .handle(&msg(
            opcode::GETATTR,
            3,
            tree::STATUS,
            1,
            GetattrIn::default().as_bytes(),
        ))
        .unwrap();
    let a = AttrOut::read_from_bytes(split(&r).1).unwrap();
    // Built only at open (on a worker), never for a stat on the reader.
    assert_eq!(a.attr.size, 0);
    // readdir of the root, starting past "." and "..".
    let r = h
        .handle(&msg(
            opcode::OPENDIR,
            4,
            tree::ROOT,
            1,
            OpenIn::default().as_bytes(),
        ))
        .unwrap();
    let dfh = OpenOut::read_from_bytes(split(&r).1).unwrap().fh;
    let rd = ReadIn {
        fh: dfh,
        offset: 2,
        size: 4096,
        ..Default::default()
    };
    let r = h
        .handle(&msg(opcode::READDIR, 5, tree::ROOT, 1, rd.as_bytes()))
        .unwrap();
    let (d, rest) = Dirent::read_from_prefix(split(&r).1).unwrap();
    assert_eq!(
        (d.ino, d.off, &rest[..d.namelen as usize]),
        (tree::IOMMU, 3, b"iommu".as_slice())
    );
    // status: open read-only, read at an offset; write access refused.
    let fh = open(&h, tree::STATUS);
    let rd = ReadIn {
        fh,
        offset: 6,
        size: 100,
        ..Default::default()
    };
    let r = h
        .handle(&msg(opcode::READ, 6, tree::STATUS, 0, rd.as_bytes()))
        .unwrap();
    assert_eq!(split(&r).1, b"status\n");
    let o = OpenIn {
        flags: libc::O_RDWR as u32,
        open_flags: 0,
    };
    let r = h
        .handle(&msg(opcode::OPEN, 7, tree::STATUS, 1, o.as_bytes()))
        .unwrap();
    assert_eq!(split(&r).0.error, -libc::EACCES);
    let r = h
        .handle(&msg(
            opcode::OPEN,
            7,
            tree::ROOT,
            1,
            OpenIn::default().as_bytes(),
        ))
        .unwrap();
    assert_eq!(split(&r).0.error, -libc::EISDIR);
}

#[test]
fn fuse_malformed_messages_get_errors_not_panics() {
    let (h, c) = fuse_handler();
    // Too short for a header: nothing to answer to.
    assert_eq!(h.handle(&[1, 2, 3]), None);
    // Truncated IOCTL body: EINVAL.
    let r = h
        .handle(&msg(opcode::IOCTL, 8, tree::IOMMU, 1, &[0; 10]))
        .unwrap();
    assert_eq!(
        split(&r).0,
        OutHeader {
            len: 16,
            error: -libc::EINVAL,
            unique: 8
        }
    );
    // Header length disagreeing with the message: EIO.
    let mut m = msg(opcode::GETATTR, 9, tree::ROOT, 1, &[0; 16]);
    m[0] = 200;
    let r = h.handle(&m).unwrap();
    assert_eq!(split(&r).0.error, -libc::EIO);
    // Unterminated LOOKUP name, WRITE claiming more data than sent.
    let r = h
        .handle(&msg(opcode::LOOKUP, 10, tree::ROOT, 1, b"iommu"))
        .unwrap();
    assert_eq!(split(&r).0.error, -libc::EINVAL);
    let fh = open(&h, tree::IOMMU);
    let w = WriteIn {
        fh,
        size: 100,
        ..Default::default()
    };
    let r = h
        .handle(&msg(opcode::WRITE, 11, tree::IOMMU, 1, w.as_bytes()))
        .unwrap();
    assert_eq!(split(&r).0.error, -libc::EINVAL);
    // No reply to FORGET/INTERRUPT, even malformed.
    assert_eq!(h.handle(&msg(opcode::FORGET, 12, 2, 1, &[])), None);
    assert_eq!(h.handle(&msg(opcode::INTERRUPT, 13, 0, 1, &[1])), None);
    // Random garbage of every length never panics.
    let mut seed = 0x12345678u64;
    for len in 0..300 {
        let mut m: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        if len >= 40 {
            m[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            m[4..8].copy_from_slice(&((seed % 45) as u32).to_ne_bytes());
        }
        let _ = h.handle(&m);
    }
    assert_eq!(c.opens.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_handler_answers_eio_and_the_session_goes_on() {
    let (h, _) = cuse_handler();
    cuse_init(&h);
    let fh = open(&h, 0);
    let i = IoctlIn {
        fh,
        flags: FUSE_IOCTL_UNRESTRICTED,
        cmd: 4,
        ..Default::default()
    };
    let r = h
        .handle_guarded(&msg(opcode::IOCTL, 9, 0, 100, i.as_bytes()))
        .expect("a reply is owed");
    let (hd, _) = split(&r);
    assert_eq!((hd.unique, hd.error), (9, -(Errno::EIO as i32)));
    assert_eq!(ioctl(&h, fh, 2, 0, 100), Ok(7));
}

#[test]
fn lanes() {
    let (h, _) = cuse_handler();
    cuse_init(&h);
    let fh = open(&h, 0);
    let ioctl_msg = |cmd| {
        let i = IoctlIn {
            fh,
            cmd,
            ..Default::default()
        };
        let mut m = msg(opcode::IOCTL, 5, 0, 100, i.as_bytes());
        // uid 1234 in the header
        m[24..28].copy_from_slice(&1234u32.to_ne_bytes());
        m
    };
    assert_eq!(h.lane(&ioctl_msg(1)), Lane::User(1234));
    assert_eq!(h.lane(&ioctl_msg(2)), Lane::Inline);
    let rel = ReleaseIn {
        fh,
        ..Default::default()
    };
    // RELEASE comes without credentials: it runs in the lane of the uid that opened the file.
    assert_eq!(
        h.lane(&msg(opcode::RELEASE, 6, 0, 0, rel.as_bytes())),
        Lane::User(0)
    );
    let mut o = msg(opcode::OPEN, 8, 0, 100, OpenIn::default().as_bytes());
    o[24..28].copy_from_slice(&4321u32.to_ne_bytes());
    let reply = h.handle(&o).unwrap();
    let (hd, body) = split(&reply);
    assert_eq!(hd.error, 0);
    let fh2 = OpenOut::read_from_bytes(body).unwrap().fh;
    let rel2 = ReleaseIn {
        fh: fh2,
        ..Default::default()
    };
    let release2 = msg(opcode::RELEASE, 9, 0, 0, rel2.as_bytes());
    assert_eq!(h.lane(&release2), Lane::User(4321));
    h.handle(&release2);
    assert_eq!(h.lane(&release2), Lane::User(0), "forgotten once released");
    assert_eq!(
        h.lane(&msg(opcode::GETATTR, 7, 1, 100, &[0; 16])),
        Lane::Inline
    );
    assert_eq!(h.lane(&[1, 2, 3]), Lane::Inline);
    let refused = Handler::refuse(&ioctl_msg(1), Errno::ENOMEM).unwrap();
    assert_eq!(split(&refused).0.error, -(Errno::ENOMEM as i32));
}
