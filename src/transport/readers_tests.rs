//! Reader tests: a SOCK_SEQPACKET socket pair stands in for the device (one message per read,
//! one reply per write) and a CUSE handler answers.

use super::*;
use crate::caller::{CallerMemory, ProcessMemory};
use crate::service::{NodeKind, OpenFile, Service};
use crate::transport::handler::{CallerResolver, Role};
use crate::transport::wire::{
    opcode, CuseInitIn, InHeader, IoctlIn, OpenIn, OpenOut, OutHeader, FUSE_IOCTL_UNRESTRICTED,
};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use zerocopy::{FromBytes, IntoBytes};

/// Waits until the test opens the gate.
const BLOCK: u32 = 1;
/// Answers 1 when run on a session reader, 2 elsewhere.
const WHERE: u32 = 2;

struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    open: Mutex<mpsc::Receiver<()>>,
}

struct GateService(Arc<Gate>);
struct GateFile(Arc<Gate>);

impl Service for GateService {
    fn open(&self, _node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno> {
        Ok(Arc::new(GateFile(self.0.clone())))
    }
}

impl OpenFile for GateFile {
    fn ioctl(&self, cmd: u32, _arg: u64, _mem: &dyn CallerMemory) -> Result<i64, Errno> {
        match cmd {
            BLOCK => {
                let _ = lock(&self.0.entered).send(());
                let _ = lock(&self.0.open).recv();
                Ok(0)
            }
            WHERE => Ok(
                if std::thread::current().name() == Some("uiommufd-reader") {
                    1
                } else {
                    2
                },
            ),
            _ => Err(Errno::ENOTTY),
        }
    }
    fn release(&self) {}
}

struct SelfCallers;
impl CallerResolver for SelfCallers {
    fn caller(&self, _tid: u32) -> Result<Box<dyn CallerMemory>, Errno> {
        Ok(Box::new(ProcessMemory::current()))
    }
}

/// The kernel's end of the pair.
struct Kernel(OwnedFd);

impl Kernel {
    fn send(&self, op: u32, unique: u64, uid: u32, body: &[u8]) {
        let h = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: op,
            unique,
            uid,
            pid: 1,
            ..Default::default()
        };
        let mut m = h.as_bytes().to_vec();
        m.extend_from_slice(body);
        assert_eq!(rustix::io::write(&self.0, &m), Ok(m.len()));
    }

    /// The next reply: (unique, error, body).
    fn reply(&self) -> (u64, i32, Vec<u8>) {
        let mut buf = vec![0u8; 4096];
        let n = rustix::io::read(&self.0, &mut buf).unwrap();
        let (h, body) = OutHeader::read_from_prefix(&buf[..n]).unwrap();
        (h.unique, h.error, body.to_vec())
    }

    fn ioctl(&self, unique: u64, uid: u32, fh: u64, cmd: u32) {
        let i = IoctlIn {
            fh,
            flags: FUSE_IOCTL_UNRESTRICTED,
            cmd,
            ..Default::default()
        };
        self.send(opcode::IOCTL, unique, uid, i.as_bytes());
    }
}

fn ioctl_result(body: &[u8]) -> i32 {
    i32::from_ne_bytes(body[..4].try_into().unwrap())
}

#[test]
fn a_request_waiting_in_place_leaves_others_served_in_place() {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let (entered_tx, entered) = mpsc::channel();
    let (open_gate, open_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        open: Mutex::new(open_rx),
    });
    let handler = Arc::new(Handler::new(
        Role::Cuse {
            node: NodeKind::Iommu,
            devname: "iommu".into(),
        },
        Arc::new(GateService(gate)),
        Arc::new(SelfCallers),
    ));
    let pools = Arc::new(Pools::new().unwrap());
    let readers = Readers::start(
        Arc::new(Channel::new(ours).unwrap()),
        handler,
        pools.clone(),
    )
    .unwrap();
    // A reply that never comes fails the test instead of hanging it.
    nix::sys::socket::setsockopt(
        &theirs,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(20, 0),
    )
    .unwrap();
    let k = Kernel(theirs);
    let init = CuseInitIn {
        major: 7,
        minor: 45,
        ..Default::default()
    };
    k.send(opcode::CUSE_INIT, 1, 0, init.as_bytes());
    assert_eq!(k.reply().0, 1);
    k.send(opcode::OPEN, 2, 1000, OpenIn::default().as_bytes());
    let (unique, error, body) = k.reply();
    assert_eq!((unique, error), (2, 0));
    let fh = OpenOut::read_from_prefix(&body).unwrap().0.fh;

    // Users 1000 and 3000 wait on two readers (the second one started a third, as no reader was
    // left idle); user 2000 is answered meanwhile, on a reader too.
    k.ioctl(3, 1000, fh, BLOCK);
    entered.recv().unwrap();
    k.ioctl(4, 3000, fh, BLOCK);
    entered.recv().unwrap();
    assert_eq!(
        pools.requests.load(),
        (0, 2),
        "the waiting requests run in place"
    );
    k.ioctl(5, 2000, fh, WHERE);
    let (unique, error, body) = k.reply();
    assert_eq!((unique, error, ioctl_result(&body)), (5, 0, 1));
    assert!(readers.live() >= 3);
    open_gate.send(()).unwrap();
    open_gate.send(()).unwrap();
    let mut done = [k.reply().0, k.reply().0];
    done.sort_unstable();
    assert_eq!(done, [3, 4]);
    assert!(pools.drain(Duration::from_secs(10)));

    // Stop interrupts the readers in read(2).
    readers.stop();
    assert_eq!(lock(&readers.shared.registry).idle(), 0);
    drop(k);
}
