//! `uiommufd replay --trace`: one line per ioctl step with everything the call left behind, so that
//! two runs of the same script (the real kernel's node and uiommufd's) can be compared token by
//! token (`scripts/refkernel.sh` does).
//!
//! ```text
//! TRACE <script> <step> <ioctl> result=<ret|ERRNO> [arg=<v>] <field>=<v>... [@<off>=<bytes>]... [*<field>=<bytes>]...
//! ```
//!
//! * `result`: the return value, or the errno name.
//! * `arg`: the raw ioctl argument, when the step gives one.
//! * The struct after the call, the whole of it as sent (trailing bytes included): each field of
//!   the uAPI descriptor table as an integer (`0x…`), the bytes no field covers (padding, trailing
//!   bytes, unknown ioctls, structs cut short by their size word) as `@<offset>=<bytes>`.
//! * `*<field>`: what the caller buffer a `Ptr` / `Ranges` field points to holds after the call
//!   (length from the field the table names, as sent), `unmapped` when it cannot be read.
//!
//! An `fd_read` / `fd_write` step on an object fd traces as `TRACE <script> <step> read|write
//! result=<n|ERRNO>`, a read followed by ` bytes=<hex>` (what it returned).
//!
//! Bytes are `<n>:<hex>` with runs of 8 or more equal bytes as `(<byte>*<count>)`; past
//! [`SHOWN`] bytes only a digest of the rest follows (`~<fnv64>`).
//!
//! Normalised, because they legitimately differ between two runs of the same script:
//! * addresses (a pointer field, or any 8-byte field and the argument) that fall inside one of the
//!   client's buffers or its scratch area print as `&<buffer>+0x<offset>`: each run is its own
//!   process, so ASLR places the buffers elsewhere;
//! * an `Fd` field holding a buffer's memfd prints as `#<buffer>`, and an `OutFd` the call
//!   installed as `newfd`: descriptor numbers depend on what else the process holds open (the
//!   daemon's node over FUSE versus the kernel's), not on the ioctl.
//!
//! Object IDs and IOVAs are not normalised: both allocate them the same way.

use super::layout::{Field, Role, RANGE_SIZE};
use super::script::to_hex;
use crate::narrow::low_u32;

/// Bytes of a caller buffer printed in full; the rest only as a digest.
pub const SHOWN: usize = 256;
/// Most bytes read from a caller buffer (a mapping's length can be anything).
pub const READ_CAP: usize = 1 << 20;

/// A named piece of the client's memory, for printing addresses symbolically.
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub addr: u64,
    /// Bytes that belong to it (its guard page included).
    pub len: u64,
    /// Its memfd, if any.
    pub fd: Option<i32>,
}

/// How values of one client print.
pub struct Normalizer<'a> {
    pub regions: &'a [Region],
}

impl Normalizer<'_> {
    /// `&name+0xoff` for an address inside a region, else `0x…`.
    pub fn addr(&self, v: u64) -> String {
        self.regions
            .iter()
            .find(|r| v >= r.addr && v - r.addr < r.len)
            .map_or_else(
                || format!("{v:#x}"),
                |r| format!("&{}+{:#x}", r.name, v - r.addr),
            )
    }

    fn fd(&self, v: u64) -> String {
        self.regions
            .iter()
            .find(|r| r.fd.is_some_and(|fd| fd as u64 == v))
            .map_or_else(|| format!("{v:#x}"), |r| format!("#{}", r.name))
    }

    /// The token value of a field read from the struct after a call that `succeeded`.
    fn field(&self, f: &Field, v: u64, succeeded: bool) -> String {
        match f.role {
            Role::Fd => self.fd(v),
            // The kernel writes a descriptor number >= 0 only on success.
            Role::OutFd if succeeded && low_u32(v).cast_signed() >= 0 => "newfd".into(),
            _ if f.width == 8 => self.addr(v),
            _ => format!("{v:#x}"),
        }
    }
}

/// The struct tokens: table fields as integers, uncovered bytes as `@off=bytes`. `bytes` is what
/// could be read of the struct after the call (shorter than sent where it ran into unmapped
/// memory: then `@<len>=unmapped` ends it).
pub fn struct_tokens(
    bytes: &[u8],
    sent_len: usize,
    fields: &[Field],
    norm: &Normalizer,
    succeeded: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sorted: Vec<&Field> = fields.iter().collect();
    sorted.sort_by_key(|f| f.off);
    for f in sorted {
        // A field the bytes do not hold whole ends the fields; the rest prints as bytes.
        if f.off + f.width > bytes.len() {
            break;
        }
        if f.off > pos {
            out.push(format!("@{pos}={}", show_bytes(&bytes[pos..f.off])));
        }
        let v = super::exec::get(bytes, *f);
        out.push(format!("{}={}", f.name, norm.field(f, v, succeeded)));
        pos = f.off + f.width;
    }
    if pos < bytes.len() {
        out.push(format!("@{pos}={}", show_bytes(&bytes[pos..])));
    }
    if bytes.len() < sent_len {
        out.push(format!("@{}=unmapped", bytes.len()));
    }
    out
}

/// The (field name, address, length in bytes) of each caller buffer the struct `sent` points to.
pub fn pointees(sent: &[u8], fields: &[Field]) -> Vec<(&'static str, u64, u64)> {
    let value = |name: &str| {
        fields
            .iter()
            .find(|f| f.name == name && f.off + f.width <= sent.len())
            .map(|f| super::exec::get(sent, *f))
    };
    fields
        .iter()
        .filter(|f| f.off + f.width <= sent.len())
        .filter_map(|f| {
            let len = match f.role {
                Role::Ptr { len } => value(len)?,
                Role::Ranges { count, .. } => value(count)?.saturating_mul(RANGE_SIZE as u64),
                _ => return None,
            };
            Some((f.name, super::exec::get(sent, *f), len))
        })
        .collect()
}

/// `<n>:<hex>`, runs of 8 or more equal bytes as `(<byte>*<count>)`; beyond [`SHOWN`] bytes a
/// digest of the whole follows.
pub fn show_bytes(b: &[u8]) -> String {
    let shown = &b[..b.len().min(SHOWN)];
    let mut s = format!("{}:", b.len());
    let mut i = 0;
    while i < shown.len() {
        let run = shown[i..].iter().take_while(|&&x| x == shown[i]).count();
        if run >= 8 {
            s.push_str(&format!("({:02x}*{run})", shown[i]));
            i += run;
        } else {
            s.push_str(&to_hex(&shown[i..i + 1]));
            i += 1;
        }
    }
    if b.len() > SHOWN {
        s.push_str(&format!("~{:016x}", fnv64(b)));
    }
    s
}

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;
    use crate::replay::layout::by_name;

    fn regions() -> Vec<Region> {
        vec![
            Region {
                name: "scratch".into(),
                addr: 0x7f00_0000_0000,
                len: 0x11000,
                fd: None,
            },
            Region {
                name: "mem".into(),
                addr: 0x7f10_0000_0000,
                len: 0x2000,
                fd: Some(5),
            },
        ]
    }

    #[test]
    fn bytes_compress_runs_and_digest_the_rest() {
        assert_eq!(show_bytes(&[]), "0:");
        assert_eq!(show_bytes(&[1, 0, 0, 2]), "4:01000002");
        let mut b = vec![0u8; 20];
        b[19] = 0xff;
        assert_eq!(show_bytes(&b), "20:(00*19)ff");
        let big = vec![7u8; SHOWN + 1];
        let s = show_bytes(&big);
        assert!(
            s.starts_with(&format!("{}:(07*{SHOWN})~", SHOWN + 1)),
            "{s}"
        );
        let mut other = big.clone();
        other[SHOWN] = 8;
        assert_ne!(
            s,
            show_bytes(&other),
            "the digest covers the bytes not shown"
        );
    }

    #[test]
    fn struct_fields_gaps_and_normalised_values() {
        let r = regions();
        let norm = Normalizer { regions: &r };
        let d = by_name("IOMMU_IOAS_MAP_FILE").unwrap();
        let mut s = vec![0u8; d.size + 4];
        s[0] = (d.size + 4) as u8;
        let fd = d.field("fd").unwrap();
        s[fd.off] = 5;
        s[d.size + 3] = 0xaa;
        let t = struct_tokens(&s, s.len(), &d.fields, &norm, true);
        assert_eq!(t[0], format!("size={:#x}", d.size + 4));
        assert!(t.contains(&"fd=#mem".to_string()), "{t:?}");
        assert_eq!(t.last().unwrap(), &format!("@{}=4:000000aa", d.size));

        let d = by_name("IOMMU_IOAS_MAP").unwrap();
        let mut s = vec![0u8; d.size];
        let va = d.field("user_va").unwrap();
        s[va.off..va.off + 8].copy_from_slice(&(0x7f10_0000_0010u64).to_ne_bytes());
        let t = struct_tokens(&s, s.len(), &d.fields, &norm, true);
        assert!(t.contains(&"user_va=&mem+0x10".to_string()), "{t:?}");
        // Cut short by unmapped memory: the fields that fit, then where it stops.
        let t = struct_tokens(&s[..6], s.len(), &d.fields, &norm, false);
        assert_eq!(t, vec!["size=0x0", "@4=2:0000", "@6=unmapped"]);
    }

    #[test]
    fn out_fd_is_normalised_only_when_installed() {
        let r = regions();
        let norm = Normalizer { regions: &r };
        let d = by_name("IOMMU_FAULT_QUEUE_ALLOC").unwrap();
        let mut s = vec![0u8; d.size];
        let f = d.field("out_fault_fd").unwrap();
        s[f.off] = 9;
        assert!(struct_tokens(&s, s.len(), &d.fields, &norm, true)
            .contains(&"out_fault_fd=newfd".into()));
        assert!(struct_tokens(&s, s.len(), &d.fields, &norm, false)
            .contains(&"out_fault_fd=0x9".into()));
    }

    #[test]
    fn pointees_follow_the_table() {
        let d = by_name("IOMMU_IOAS_IOVA_RANGES").unwrap();
        let mut s = vec![0u8; d.size];
        let n = d.field("num_iovas").unwrap();
        s[n.off] = 3;
        let p = d.field("allowed_iovas").unwrap();
        s[p.off..p.off + 8].copy_from_slice(&0x1000u64.to_ne_bytes());
        assert_eq!(pointees(&s, &d.fields), vec![("allowed_iovas", 0x1000, 48)]);
        // A struct cut short before the pointer has none.
        assert!(pointees(&s[..8], &d.fields).is_empty());
    }
}
