//! The launcher's seccomp user-notify filter program (installed, and its listener driven, by
//! [`crate::sys::seccomp`]).
//!
//! The filter sends `ioctl(fd, N, arg)` to the listener when the low 32 bits of the request are one
//! of the intercepted numbers (the kernel's `ioctl` takes an `unsigned int` request, so the upper
//! half never matters), and every `read(fd, buf, 0)`; it allows every other system call untouched.

use libc::sock_filter;

/// `AUDIT_ARCH_*` of the architecture this binary is built for (`<linux/audit.h>`), the only one
/// whose system calls the filter inspects: a compat (32-bit) syscall has other numbers and passes.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH_NATIVE: Option<u32> = Some(0xc000_003e); // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH_NATIVE: Option<u32> = Some(0xc000_00b7); // AUDIT_ARCH_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const AUDIT_ARCH_NATIVE: Option<u32> = None;

// Offsets into `struct seccomp_data` {int nr; u32 arch; u64 instruction_pointer; u64 args[6]};
// they, the BPF opcodes and the system call numbers are small kernel constants, narrowed to the
// widths of `sock_filter`'s fields.
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const OFF_NR: u32 = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const OFF_ARCH: u32 = std::mem::offset_of!(libc::seccomp_data, arch) as u32;
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const OFF_ARGS: u32 = std::mem::offset_of!(libc::seccomp_data, args) as u32;
/// The low 32 bits of `args[1]`.
#[cfg(target_endian = "little")]
const OFF_ARG1_LO: u32 = OFF_ARGS + 8;
#[cfg(target_endian = "big")]
const OFF_ARG1_LO: u32 = OFF_ARGS + 12;
/// The two halves of `args[2]` (a read's count).
#[cfg(target_endian = "little")]
const OFF_ARG2_LO: u32 = OFF_ARGS + 16;
#[cfg(target_endian = "little")]
const OFF_ARG2_HI: u32 = OFF_ARGS + 20;
#[cfg(target_endian = "big")]
const OFF_ARG2_LO: u32 = OFF_ARGS + 20;
#[cfg(target_endian = "big")]
const OFF_ARG2_HI: u32 = OFF_ARGS + 16;

#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The system calls that open a file by path, trapped when the launcher redirects opens of the
/// kernel's VFIO container to the daemon's compat node ([`super::open`]).
#[cfg(target_arch = "x86_64")]
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const OPEN_CALLS: [u32; 2] = [libc::SYS_openat as u32, libc::SYS_open as u32];
#[cfg(not(target_arch = "x86_64"))]
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const OPEN_CALLS: [u32; 2] = [libc::SYS_openat as u32, libc::SYS_openat as u32];
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const SYS_IOCTL: u32 = libc::SYS_ioctl as u32;
#[expect(clippy::cast_possible_truncation, reason = "a small kernel constant")]
const SYS_READ: u32 = libc::SYS_read as u32;
/// A system call number no architecture has: the slot of a check that is switched off.
const NO_CALL: u32 = u32::MAX;

/// The classic-BPF program: `arch == arch && nr == SYS_ioctl && (u32)args[1] ∈ ioctls`,
/// `arch == arch && nr == SYS_read && args[2] == 0` (a zero-length read, which FUSE and CUSE answer
/// without asking their server) and, with `opens`, every `openat`/`open` of the native arch →
/// `SECCOMP_RET_USER_NOTIF`, anything else → `SECCOMP_RET_ALLOW`.
///
/// Panics if `ioctls` has more than 240 numbers (BPF conditional jumps reach 255 instructions).
pub fn filter_program(arch: u32, ioctls: &[u32], opens: bool) -> Vec<sock_filter> {
    let n = ioctls.len();
    assert!(n <= 240, "too many intercepted ioctls for one BPF jump");
    // Layout: 0 ld arch, 1 jeq, 2 ld nr, 3 jeq ioctl, 4-5 jeq open calls, 6 jeq read, 7 ld arg1,
    // 8.. one jeq per number, 8+n allow; read: 9+n ld arg2 lo, jeq 0, ld arg2 hi, jeq 0; then
    // allow, notify.
    let ioctl = 7;
    let read = 9 + n;
    let allow = read + 4;
    let notify = allow + 1;
    // Jumps stay within 255 instructions: the assert above bounds the program.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "bounded by the assert on n"
    )]
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    let [open_a, open_b] = if opens { OPEN_CALLS } else { [NO_CALL; 2] };
    let mut prog = vec![
        insn(LD_W_ABS, 0, 0, OFF_ARCH),
        insn(JEQ_K, 0, to(1, allow), arch),
        insn(LD_W_ABS, 0, 0, OFF_NR),
        insn(JEQ_K, to(3, ioctl), 0, SYS_IOCTL),
        insn(JEQ_K, to(4, notify), 0, open_a),
        insn(JEQ_K, to(5, notify), 0, open_b),
        insn(JEQ_K, to(6, read), to(6, allow), SYS_READ),
        insn(LD_W_ABS, 0, 0, OFF_ARG1_LO),
    ];
    for (k, &nr) in ioctls.iter().enumerate() {
        prog.push(insn(JEQ_K, to(8 + k, notify), 0, nr));
    }
    prog.push(insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    prog.extend([
        insn(LD_W_ABS, 0, 0, OFF_ARG2_LO),
        insn(JEQ_K, 0, to(read + 1, allow), 0),
        insn(LD_W_ABS, 0, 0, OFF_ARG2_HI),
        insn(JEQ_K, to(read + 3, notify), to(read + 3, allow), 0),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
    ]);
    prog
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    /// A tiny interpreter of the four opcodes the program uses.
    fn run(prog: &[sock_filter], data: &libc::seccomp_data) -> u32 {
        // The struct's bytes, field by field (plain integers, no padding).
        let mut bytes = Vec::with_capacity(std::mem::size_of::<libc::seccomp_data>());
        bytes.extend_from_slice(&data.nr.to_ne_bytes());
        bytes.extend_from_slice(&data.arch.to_ne_bytes());
        bytes.extend_from_slice(&data.instruction_pointer.to_ne_bytes());
        for a in data.args {
            bytes.extend_from_slice(&a.to_ne_bytes());
        }
        assert_eq!(bytes.len(), std::mem::size_of::<libc::seccomp_data>());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(bytes[k..k + 4].try_into().unwrap());
                }
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn data(arch: u32, nr: i64, arg1: u64) -> libc::seccomp_data {
        libc::seccomp_data {
            nr: nr as i32,
            arch,
            instruction_pointer: 0,
            args: [3, arg1, 0x1000, 0, 0, 0],
        }
    }

    fn read_of(arch: u32, count: u64) -> libc::seccomp_data {
        libc::seccomp_data {
            nr: libc::SYS_read as i32,
            arch,
            instruction_pointer: 0,
            args: [3, 0x7000, count, 0, 0, 0],
        }
    }

    #[test]
    fn notifies_zero_length_reads_only() {
        let arch = 0xc000_003e;
        let prog = filter_program(arch, &[0x3ba0], false);
        assert_eq!(run(&prog, &read_of(arch, 0)), libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(run(&prog, &read_of(arch, 1)), libc::SECCOMP_RET_ALLOW);
        assert_eq!(run(&prog, &read_of(arch, 1 << 32)), libc::SECCOMP_RET_ALLOW);
        assert_eq!(
            run(&prog, &read_of(0x4000_0003, 0)),
            libc::SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn notifies_only_the_listed_ioctls_of_the_native_arch() {
        let arch = 0xc000_003e;
        let prog = filter_program(arch, &[0x3ba0, 0x3b8b], false);
        let notify = libc::SECCOMP_RET_USER_NOTIF;
        let allow = libc::SECCOMP_RET_ALLOW;
        assert_eq!(run(&prog, &data(arch, libc::SYS_ioctl, 0x3ba0)), notify);
        assert_eq!(run(&prog, &data(arch, libc::SYS_ioctl, 0x3b8b)), notify);
        // Upper half of the request is ignored, as the kernel does.
        assert_eq!(
            run(&prog, &data(arch, libc::SYS_ioctl, 0xdead_0000_3ba0)),
            notify
        );
        assert_eq!(run(&prog, &data(arch, libc::SYS_ioctl, 0x3ba1)), allow);
        assert_eq!(run(&prog, &data(arch, libc::SYS_read, 0x3ba0)), allow);
        assert_eq!(
            run(&prog, &data(0x4000_0003, libc::SYS_ioctl, 0x3ba0)),
            allow
        );
        assert_eq!(
            run(
                &filter_program(arch, &[], false),
                &data(arch, libc::SYS_ioctl, 0)
            ),
            allow
        );
    }

    #[test]
    fn notifies_opens_only_when_asked() {
        let arch = 0xc000_003e;
        let notify = libc::SECCOMP_RET_USER_NOTIF;
        let allow = libc::SECCOMP_RET_ALLOW;
        let off = filter_program(arch, &[0x3ba0], false);
        let on = filter_program(arch, &[0x3ba0], true);
        for nr in OPEN_CALLS {
            assert_eq!(run(&off, &data(arch, i64::from(nr), 0)), allow);
            assert_eq!(run(&on, &data(arch, i64::from(nr), 0)), notify);
            assert_eq!(run(&on, &data(0x4000_0003, i64::from(nr), 0)), allow);
        }
        // The other checks are unchanged by it.
        assert_eq!(run(&on, &data(arch, libc::SYS_ioctl, 0x3ba0)), notify);
        assert_eq!(run(&on, &data(arch, libc::SYS_ioctl, 0x3ba1)), allow);
        assert_eq!(run(&on, &read_of(arch, 0)), notify);
        assert_eq!(run(&on, &read_of(arch, 8)), allow);
        assert_eq!(run(&on, &data(arch, libc::SYS_close, 0)), allow);
    }
}
