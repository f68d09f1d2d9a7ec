//! Integer narrowing that cannot lose bits, said once. The crate denies
//! `clippy::cast_possible_truncation`: a value from a caller is narrowed with `try_from` and the
//! kernel's errno; what is lossless by construction goes through these helpers, so a bare `as`
//! that could truncate does not compile.

// The daemon serves 64-bit hosts only (the uAPI's addresses and lengths are u64 and are used as
// the daemon's own sizes): a u64 always fits a usize.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("uiommufd builds for 64-bit hosts only (a u64 length or address is a usize there)");

/// A u64 (an address, length or count) as a usize: lossless, as the crate builds for 64-bit
/// hosts only.
#[inline]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "64-bit hosts only (compile_error above)"
)]
pub const fn usize_from(v: u64) -> usize {
    v as usize
}

/// The low 32 bits of `v`, on purpose: a 64-bit register's low half, or a word the kernel reads
/// as a 32-bit int from a 64-bit slot (a seccomp argument, an ioctl number, an fd).
#[inline]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "the low half is the point")]
pub const fn low_u32(v: u64) -> u32 {
    v as u32
}

/// `size_of::<T>()` as the u32 of a uAPI `argsz`/`size` word; a type too big fails the build.
#[inline]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the const assert bounds the size"
)]
pub const fn struct_size<T>() -> u32 {
    const { assert!(size_of::<T>() as u64 <= u32::MAX as u64) };
    size_of::<T>() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_size_is_size_of() {
        assert_eq!(struct_size::<[u8; 40]>(), 40);
        assert_eq!(struct_size::<u64>(), 8);
        assert_eq!(usize_from(u64::MAX), usize::MAX);
        assert_eq!(low_u32(0x1234_5678_9abc_def0), 0x9abc_def0);
    }
}
