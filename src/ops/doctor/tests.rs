//! Doctor over fake host trees: sysfs, procfs, /dev, /boot laid out in a temporary directory.

use super::*;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

const RELEASE: &str = "6.12.0-test";
/// CapEff of root: every capability.
const ROOT_CAPS: &str = "000001ffffffffff";

/// A fake host root, removed on drop.
struct Tree {
    root: PathBuf,
}

impl Tree {
    /// A plain host: FUSE, no CUSE, no IOMMU, no VFIO, no iommufd (config says so), root.
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "uiommufd-doctor-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let t = Tree { root };
        t.file("proc/sys/kernel/osrelease", &format!("{RELEASE}\n"));
        t.file(
            "proc/self/status",
            &format!("Name:\tuiommufd\nUid:\t0\t0\t0\t0\nCapEff:\t{ROOT_CAPS}\n"),
        );
        t.limits("8388608", "8388608");
        t.file("proc/self/mountinfo", "");
        t.file("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet\n");
        t.file(
            "proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: GenuineIntel\n",
        );
        t.file("dev/fuse", "");
        t.dir("sys/class/iommu");
        t.config("CONFIG_FUSE_FS=y\n# CONFIG_CUSE is not set\n# CONFIG_IOMMUFD is not set\n");
        t
    }

    /// A host ready for VFIO: an Intel IOMMU, the three modules loaded, /dev/vfio/vfio.
    fn with_vfio() -> Self {
        let t = Self::new();
        t.dir("sys/class/iommu/dmar0");
        for m in ["vfio", "vfio_iommu_type1", "vfio_pci"] {
            t.file(&format!("sys/module/{m}/initstate"), "live\n");
        }
        t.dir("sys/bus/pci/drivers/vfio-pci");
        t.file("dev/vfio/vfio", "");
        t
    }

    /// `rel` inside the tree (a leading `/` too: a test must never write to the real system).
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn dir(&self, rel: &str) {
        std::fs::create_dir_all(self.path(rel)).unwrap();
    }

    fn file(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn link(&self, rel: &str, target: impl AsRef<Path>) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        symlink(target, p).unwrap();
    }

    fn config(&self, text: &str) {
        self.file(&format!("boot/config-{RELEASE}"), text);
    }

    fn limits(&self, soft: &str, hard: &str) {
        self.file(
            "proc/self/limits",
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max open files            1024                 524288               files     \n\
                 Max locked memory         {soft:<20} {hard:<20} bytes     \n"
            ),
        );
    }

    /// A PCI device, its driver (both links, as sysfs has them) and its IOMMU group.
    fn pci(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) {
        let dev = format!("sys/bus/pci/devices/{bdf}");
        self.file(&format!("{dev}/vendor"), "0x8086\n");
        self.file(&format!("{dev}/device"), "0x10d3\n");
        if let Some(d) = driver {
            self.link(
                &format!("{dev}/driver"),
                format!("../../../bus/pci/drivers/{d}"),
            );
            self.link(&format!("sys/bus/pci/drivers/{d}/{bdf}"), self.path(&dev));
        }
        if let Some(n) = group {
            self.link(
                &format!("{dev}/iommu_group"),
                format!("../../../../kernel/iommu_groups/{n}"),
            );
            self.link(
                &format!("sys/kernel/iommu_groups/{n}/devices/{bdf}"),
                self.path(&dev),
            );
        }
    }

    fn host(&self) -> Host {
        Host {
            root: self.root.clone(),
            qemu: vec![self.path("no-such-qemu").into()],
            timeout: Duration::from_secs(10),
        }
    }

    fn check(&self, args: &DoctorArgs) -> Vec<Finding> {
        check(&self.host(), args)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The findings on `topic`.
fn on<'a>(findings: &'a [Finding], topic: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.topic == topic).collect()
}

/// The one finding on `topic`, which must contain every piece of `texts`.
fn one<'a>(findings: &'a [Finding], topic: &str, level: Level, texts: &[&str]) -> &'a Finding {
    let found = on(findings, topic);
    assert_eq!(found.len(), 1, "one {topic} finding in {findings:#?}");
    let f = found[0];
    assert_eq!(f.level, level, "{f}");
    for t in texts {
        assert!(f.text.contains(t), "{t:?} missing in: {f}");
    }
    f
}

fn args(vfio: &[&str]) -> DoctorArgs {
    DoctorArgs::new(vfio)
}

#[test]
fn plain_host_serves_fuse_and_says_why_not_more() {
    let t = Tree::new();
    let f = t.check(&args(&[]));
    assert!(can_serve(&f), "{f:#?}");
    one(&f, "fuse", Level::Ok, &["/dev/fuse opens"]);
    one(
        &f,
        "cuse",
        Level::Note,
        &[
            "no /dev/cuse (the kernel has no CUSE: CONFIG_CUSE unset)",
            "/run/uiommufd/iommu and /run/uiommufd/vfio/vfio",
            "--bind-dev",
        ],
    );
    one(
        &f,
        "kernel",
        Level::Ok,
        &[RELEASE, "no CONFIG_IOMMUFD", "/boot/config-6.12.0-test"],
    );
    one(&f, "privileges", Level::Ok, &["CAP_SYS_ADMIN"]);
    one(
        &f,
        "iommu",
        Level::Warn,
        &[
            "no IOMMU enabled",
            "add intel_iommu=on",
            "VT-d",
            "dmacopy work without",
        ],
    );
    one(
        &f,
        "vfio",
        Level::Warn,
        &["the kernel has no vfio (CONFIG_VFIO unset), vfio_iommu_type1"],
    );
    one(&f, "memlock", Level::Note, &["soft 8 MiB, hard 8 MiB"]);
    one(&f, "qemu", Level::Note, &["not installed"]);
    // No vfio-pci driver: no device listing.
    assert!(on(&f, "vfio-pci").is_empty());
    // The kernel line comes first.
    assert_eq!(f[0].topic, "kernel");
}

#[test]
fn vfio_device_on_another_driver_without_iommu_fails_with_the_commands() {
    let t = Tree::new();
    t.pci("0000:00:04.0", Some("virtio-pci"), None);
    let f = t.check(&args(&["0000:00:04.0"]));
    assert!(!can_serve(&f));
    let dev = on(&f, "--vfio 0000:00:04.0");
    assert_eq!(dev.len(), 2, "{dev:#?}");
    assert_eq!(dev[0].level, Level::Fail);
    assert_eq!(
        dev[0].text,
        "bound to virtio-pci, not vfio-pci: modprobe vfio-pci; \
         echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override; \
         echo 0000:00:04.0 > /sys/bus/pci/devices/0000:00:04.0/driver/unbind; \
         echo 0000:00:04.0 > /sys/bus/pci/drivers_probe"
    );
    assert_eq!(dev[1].level, Level::Fail);
    assert!(dev[1]
        .text
        .starts_with("no IOMMU group: no IOMMU is enabled"));
    // With a device asked for, the missing IOMMU and VFIO are failures too.
    one(&f, "iommu", Level::Fail, &["intel_iommu=on"]);
    one(&f, "vfio", Level::Fail, &["CONFIG_VFIO unset"]);
    assert_eq!(
        dev[0].to_string(),
        format!("FAIL  --vfio 0000:00:04.0: {}", dev[0].text)
    );
}

#[test]
fn bound_device_in_a_viable_group_is_usable() {
    let t = Tree::with_vfio();
    // Group 12: the device, its bridge (pcieport manages no DMA of its own) and a function with
    // no driver.
    t.pci("0000:03:00.0", Some("vfio-pci"), Some(12));
    t.pci("0000:00:01.0", Some("pcieport"), Some(12));
    t.pci("0000:03:00.1", None, Some(12));
    t.file("dev/vfio/12", "");
    let f = t.check(&args(&["0000:03:00.0"]));
    assert!(can_serve(&f), "{f:#?}");
    one(
        &f,
        "--vfio 0000:03:00.0",
        Level::Ok,
        &["on vfio-pci, IOMMU group 12 viable (/dev/vfio/12), not in use"],
    );
    one(
        &f,
        "vfio-pci",
        Level::Ok,
        &["0000:03:00.0 [8086:10d3]: IOMMU group 12 viable"],
    );
    one(&f, "iommu", Level::Ok, &["enabled: dmar0"]);
    one(
        &f,
        "vfio",
        Level::Ok,
        &["vfio loaded, vfio_iommu_type1 loaded, vfio_pci loaded; /dev/vfio/vfio present"],
    );
}

#[test]
fn non_viable_group_names_the_members_in_the_way() {
    let t = Tree::with_vfio();
    t.pci("0000:00:1f.0", Some("vfio-pci"), Some(7));
    t.pci("0000:00:1f.3", Some("snd_hda_intel"), Some(7));
    t.pci("0000:00:1f.4", None, Some(7));
    t.pci("0000:00:1f.5", Some("pci-stub"), Some(7));
    t.pci("0000:00:1f.6", Some("e1000e"), Some(7));
    t.file("dev/vfio/7", "");
    assert_eq!(
        group_blockers(&t.host(), "7"),
        vec![
            "0000:00:1f.3 (bound to snd_hda_intel)".to_string(),
            "0000:00:1f.6 (bound to e1000e)".to_string()
        ]
    );
    let f = t.check(&args(&["0000:00:1f.0"]));
    assert!(!can_serve(&f));
    one(
        &f,
        "--vfio 0000:00:1f.0",
        Level::Fail,
        &["IOMMU group 7 is not viable: 0000:00:1f.3 (bound to snd_hda_intel), 0000:00:1f.6 (bound to e1000e): bind them to vfio-pci too"],
    );
    // Listed, but only a warning without --vfio: serve does not need it.
    let f = t.check(&args(&[]));
    assert!(can_serve(&f));
    one(
        &f,
        "vfio-pci",
        Level::Warn,
        &["0000:00:1f.0 [8086:10d3]: IOMMU group 7 is not viable"],
    );
}

#[test]
fn viability_follows_the_dma_ownership_rule() {
    for ok in [
        None,
        Some("vfio-pci"),
        Some("pci-stub"),
        Some("pcieport"),
        Some("mlx5_vfio_pci"),
    ] {
        assert!(viable_with(ok), "{ok:?}");
    }
    for bad in ["e1000e", "nvme", "virtio-pci", "snd_hda_intel"] {
        assert!(!viable_with(Some(bad)), "{bad}");
    }
}

#[test]
fn unbound_device_and_unknown_addresses() {
    let t = Tree::with_vfio();
    // No driver at all: no unbind step; its own group needs no other change.
    t.pci("0000:05:00.0", None, Some(3));
    let f = t.check(&args(&["0000:05:00.0", "0000:09:00.0", "0000:05:00.0"]));
    assert!(!can_serve(&f));
    let dev = on(&f, "--vfio 0000:05:00.0");
    assert_eq!(dev.len(), 2, "{dev:#?}");
    assert_eq!(
        dev[0].text,
        "bound to no driver, not vfio-pci: modprobe vfio-pci; \
         echo vfio-pci > /sys/bus/pci/devices/0000:05:00.0/driver_override; \
         echo 0000:05:00.0 > /sys/bus/pci/drivers_probe"
    );
    assert_eq!(dev[1].text, "given twice: serve refuses that");
    one(
        &f,
        "--vfio 0000:09:00.0",
        Level::Fail,
        &["no such PCI device (see lspci -D)"],
    );
    one(
        &f,
        "vfio-pci",
        Level::Note,
        &["no PCI device is bound to vfio-pci"],
    );
    // On another driver, alone in its group: the bind commands are the one finding (its own
    // driver is not reported again as what makes the group not viable).
    t.pci("0000:06:00.0", Some("e1000e"), Some(4));
    let f = t.check(&args(&["0000:06:00.0"]));
    one(
        &f,
        "--vfio 0000:06:00.0",
        Level::Fail,
        &["bound to e1000e, not vfio-pci"],
    );
}

#[test]
fn missing_iommu_says_what_to_put_on_the_command_line() {
    let t = Tree::with_vfio();
    std::fs::remove_dir(t.path("sys/class/iommu/dmar0")).unwrap();
    t.file("proc/cpuinfo", "vendor_id\t: AuthenticAMD\n");
    t.pci("0000:03:00.0", Some("vfio-pci"), None);
    let f = t.check(&args(&["0000:03:00.0"]));
    assert!(!can_serve(&f));
    one(
        &f,
        "iommu",
        Level::Fail,
        &[
            "/sys/class/iommu is empty",
            "enable the IOMMU (AMD-Vi) in the firmware setup",
        ],
    );
    one(
        &f,
        "--vfio 0000:03:00.0",
        Level::Fail,
        &["no IOMMU group: no IOMMU is enabled (see the iommu line)"],
    );
    one(
        &f,
        "vfio-pci",
        Level::Warn,
        &["0000:03:00.0 [8086:10d3]: no IOMMU group"],
    );
    // Switched off on the command line: that is what to change.
    t.file("proc/cmdline", "root=/dev/sda1 iommu=off quiet\n");
    let f = t.check(&args(&[]));
    one(
        &f,
        "iommu",
        Level::Warn,
        &["remove iommu=off from the kernel command line"],
    );
}

#[test]
fn iommu_hints_per_vendor() {
    let intel = "vendor_id\t: GenuineIntel\n";
    let amd = "vendor_id\t: AuthenticAMD\n";
    let h = iommu_hint("quiet", intel);
    assert!(
        h.starts_with("add intel_iommu=on to the kernel command line"),
        "{h}"
    );
    assert!(h.ends_with("enable VT-d in the firmware setup"), "{h}");
    let h = iommu_hint("quiet intel_iommu=on", intel);
    assert!(h.starts_with("enable VT-d in the firmware setup"), "{h}");
    let h = iommu_hint("quiet", amd);
    assert!(
        h.starts_with("enable the IOMMU (AMD-Vi) in the firmware setup"),
        "{h}"
    );
    let h = iommu_hint("amd_iommu=off", amd);
    assert!(h.starts_with("remove amd_iommu=off"), "{h}");
    let h = iommu_hint("", "");
    assert!(h.starts_with("add intel_iommu=on (on Intel)"), "{h}");
}

#[test]
fn module_states() {
    let t = Tree::new();
    t.config("CONFIG_VFIO=m\nCONFIG_VFIO_IOMMU_TYPE1=m\nCONFIG_VFIO_PCI=y\n");
    let h = t.host();
    let config = KernelConfig::read(&h, RELEASE);
    let c = config.as_ref();
    assert_eq!(
        module_state(&h, RELEASE, c, "vfio", "CONFIG_VFIO"),
        ModuleState::Loadable
    );
    assert_eq!(
        module_state(&h, RELEASE, c, "vfio_pci", "CONFIG_VFIO_PCI"),
        ModuleState::BuiltIn
    );
    assert_eq!(
        module_state(&h, RELEASE, c, "vfio_x", "CONFIG_VFIO_X"),
        ModuleState::Missing
    );
    t.file("sys/module/vfio/initstate", "live\n");
    assert_eq!(
        module_state(&h, RELEASE, c, "vfio", "CONFIG_VFIO"),
        ModuleState::Loaded
    );
    // No config: the module lists decide.
    t.file(
        &format!("lib/modules/{RELEASE}/modules.builtin"),
        "kernel/drivers/vfio/pci/vfio-pci.ko\n",
    );
    t.file(
        &format!("lib/modules/{RELEASE}/modules.dep"),
        "kernel/drivers/vfio/vfio_iommu_type1.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n",
    );
    assert_eq!(
        module_state(&h, RELEASE, None, "vfio_pci", "CONFIG_VFIO_PCI"),
        ModuleState::BuiltIn
    );
    assert_eq!(
        module_state(
            &h,
            RELEASE,
            None,
            "vfio_iommu_type1",
            "CONFIG_VFIO_IOMMU_TYPE1"
        ),
        ModuleState::Loadable
    );
    assert_eq!(
        module_state(&h, RELEASE, None, "cuse", "CONFIG_CUSE"),
        ModuleState::Unknown
    );
    // In the report: one modprobe line for what is loadable.
    let f = t.check(&args(&[]));
    one(
        &f,
        "vfio",
        Level::Warn,
        &["vfio_iommu_type1 not loaded: modprobe -a vfio_iommu_type1"],
    );
    // Everything loaded but no container node.
    let t = Tree::with_vfio();
    std::fs::remove_file(t.path("dev/vfio/vfio")).unwrap();
    let f = t.check(&args(&[]));
    one(
        &f,
        "vfio",
        Level::Warn,
        &["no /dev/vfio/vfio although VFIO is loaded"],
    );
}

#[test]
fn kernel_with_iommufd_is_named() {
    let t = Tree::new();
    t.config("CONFIG_IOMMUFD=m\n# CONFIG_CUSE is not set\n");
    let f = t.check(&args(&[]));
    one(
        &f,
        "kernel",
        Level::Note,
        &[
            "CONFIG_IOMMUFD=m",
            "modprobe iommufd",
            "uiommufd is not needed",
        ],
    );
    t.config("CONFIG_IOMMUFD=y\n");
    let f = t.check(&args(&[]));
    one(
        &f,
        "kernel",
        Level::Note,
        &["CONFIG_IOMMUFD=y", "uiommufd is not needed"],
    );
    assert!(can_serve(&f));
    assert_eq!(
        node_of_class("../../devices/virtual/misc/iommu", 10, 123),
        IommuNode::Kernel
    );
    assert_eq!(
        node_of_class("../../devices/virtual/cuse/iommu", 240, 0),
        IommuNode::Cuse
    );
    assert_eq!(
        node_of_class("", 240, 0),
        IommuNode::Other("character device 240:0".into())
    );
}

#[test]
fn dev_iommu_in_the_way() {
    let t = Tree::new();
    // A running daemon's FUSE file bind-mounted over /dev/iommu (mountinfo names our source).
    t.file("dev/iommu", "");
    t.file(
        "proc/self/mountinfo",
        "40 30 0:45 / /run/uiommufd rw,nosuid,nodev - fuse uiommufd rw\n\
         41 30 0:45 /iommu /dev/iommu rw,nosuid,nodev - fuse uiommufd rw\n",
    );
    let f = t.check(&args(&[]));
    one(
        &f,
        "/dev/iommu",
        Level::Warn,
        &["a running uiommufd's FUSE file"],
    );
    one(
        &f,
        "mount",
        Level::Warn,
        &["a uiommufd filesystem is mounted at /run/uiommufd"],
    );
    assert!(can_serve(&f));
    // Something else at /dev/iommu and CUSE available: serve in CUSE mode refuses to start.
    t.file("proc/self/mountinfo", "");
    t.file("dev/cuse", "");
    let f = t.check(&args(&[]));
    one(&f, "cuse", Level::Ok, &["/dev/cuse opens"]);
    one(
        &f,
        "/dev/iommu",
        Level::Fail,
        &[
            "/dev/iommu exists (not a character device)",
            "--transport fuse",
        ],
    );
    assert!(!can_serve(&f));
    // In FUSE mode it is only noted.
    let mut a = args(&[]);
    a.serve.transport = TransportKind::Fuse;
    let f = t.check(&a);
    one(
        &f,
        "cuse",
        Level::Ok,
        &["--transport fuse serves FUSE files"],
    );
    one(&f, "/dev/iommu", Level::Note, &["not the kernel's"]);
    assert!(can_serve(&f));
}

#[test]
fn transports_and_privileges() {
    let t = Tree::new();
    let mut a = args(&[]);
    a.serve.transport = TransportKind::Cuse;
    let f = t.check(&a);
    one(
        &f,
        "cuse",
        Level::Fail,
        &["--transport cuse needs /dev/cuse (the kernel has no CUSE: CONFIG_CUSE unset)"],
    );
    assert!(!can_serve(&f));
    t.config("CONFIG_CUSE=m\n");
    let f = t.check(&args(&[]));
    one(&f, "cuse", Level::Note, &["CONFIG_CUSE=m: modprobe cuse"]);

    std::fs::remove_file(t.path("dev/fuse")).unwrap();
    let f = t.check(&args(&[]));
    one(&f, "fuse", Level::Fail, &["cannot open /dev/fuse"]);
    assert!(!can_serve(&f));
    t.file("dev/fuse", "");

    t.file(
        "proc/self/status",
        "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n",
    );
    let f = t.check(&args(&[]));
    one(
        &f,
        "privileges",
        Level::Fail,
        &["uid 1000 without CAP_SYS_ADMIN: run serve as root"],
    );
    assert!(!can_serve(&f));

    // A file where the mount point should be.
    t.file(
        "proc/self/status",
        &format!("Uid:\t0\nCapEff:\t{ROOT_CAPS}\n"),
    );
    t.file("srv/not-a-dir", "");
    let mut a = args(&[]);
    a.serve.mount = PathBuf::from("/srv/not-a-dir");
    let f = t.check(&a);
    one(
        &f,
        "mount",
        Level::Fail,
        &["/srv/not-a-dir exists and is not a directory"],
    );
}

#[test]
fn config_from_proc_config_gz() {
    let t = Tree::new();
    std::fs::remove_file(t.path(&format!("boot/config-{RELEASE}"))).unwrap();
    let text = "CONFIG_IOMMUFD=m\n# CONFIG_CUSE is not set\n";
    let gz = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("gzip");
    t.file("proc/config.gz", "");
    std::fs::write(t.path("proc/config.gz"), gz.stdout).unwrap();
    let c = KernelConfig::read(&t.host(), RELEASE).expect("config read");
    assert_eq!(c.source, "/proc/config.gz");
    assert_eq!(c.get("CONFIG_IOMMUFD"), Tristate::Module);
    assert_eq!(c.get("CONFIG_CUSE"), Tristate::No);
    assert_eq!(c.get("CONFIG_NOT_LISTED"), Tristate::No);
    // Neither file: unknown.
    std::fs::remove_file(t.path("proc/config.gz")).unwrap();
    assert!(KernelConfig::read(&t.host(), RELEASE).is_none());
    let f = t.check(&args(&[]));
    one(&f, "kernel", Level::Ok, &["no kernel config"]);
}

#[test]
fn memlock_lines() {
    assert_eq!(
        parse_memlock(
            "Max locked memory         8388608              16777216             bytes\n"
        ),
        Some((8 << 20, 16 << 20))
    );
    assert_eq!(
        parse_memlock(
            "Max locked memory         unlimited            unlimited            bytes\n"
        ),
        Some((u64::MAX, u64::MAX))
    );
    assert_eq!(parse_memlock("Max open files 1024 1024 files\n"), None);
    let t = Tree::new();
    t.limits("65536", "16777216");
    t.file(
        "proc/self/status",
        "Uid:\t1000\nCapEff:\t0000000000000000\n",
    );
    let f = t.check(&args(&[]));
    let m = one(
        &f,
        "memlock",
        Level::Note,
        &[
            "soft 64 KiB, hard 16 MiB",
            "can pin at most 64 KiB",
            "(up to 16 MiB without privileges)",
        ],
    );
    assert!(!m.text.contains("CAP_IPC_LOCK: its own"), "{m}");
    t.limits("unlimited", "unlimited");
    let f = t.check(&args(&[]));
    one(
        &f,
        "memlock",
        Level::Note,
        &["soft unlimited", "not limited"],
    );
}

/// A fake QEMU: `sh -c SCRIPT qemu ARGS...`.
fn fake_qemu(t: &Tree, script: &str) -> Host {
    Host {
        qemu: vec!["sh".into(), "-c".into(), script.into(), "qemu".into()],
        timeout: Duration::from_secs(10),
        ..t.host()
    }
}

#[test]
fn qemu_versions_and_the_iommufd_backend() {
    assert_eq!(
        parse_qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
        Some((10, 0, 2))
    );
    assert_eq!(
        parse_qemu_version("QEMU emulator version 7.2"),
        Some((7, 2, 0))
    );
    assert_eq!(parse_qemu_version("something else"), None);
    let t = Tree::new();
    let qemu_line = |h: &Host| {
        let f = check(h, &args(&[]));
        on(&f, "qemu")
            .first()
            .map(|f| (*f).clone())
            .expect("a qemu line")
    };
    // (version, what -object help lists or None when it fails, level, the line's start)
    let cases: [(&str, Option<&str>, Level, &str); 3] = [
        (
            "8.2.50",
            Some("iommufd iothread"),
            Level::Ok,
            "QEMU 8.2.50 has the iommufd backend",
        ),
        (
            "7.2.15 (Debian)",
            Some("iothread"),
            Level::Note,
            "QEMU 7.2.15 has no iommufd backend",
        ),
        (
            "9.1.0",
            None,
            Level::Ok,
            "QEMU 9.1.0 has the iommufd backend",
        ),
    ];
    for (version, objects, level, start) in cases {
        let help = match objects {
            Some(list) => format!(
                "echo 'List of user creatable objects:'; for o in {list}; do echo \"  $o\"; done"
            ),
            None => "exit 1".into(),
        };
        let script = format!(
            r#"case "$1" in --version) echo "QEMU emulator version {version}";; *) {help};; esac"#
        );
        let q = qemu_line(&fake_qemu(&t, &script));
        assert_eq!(q.level, level, "{q}");
        assert!(q.text.starts_with(start), "{q}");
    }
    // Hangs: killed at the time limit, and said so.
    let mut h = fake_qemu(&t, "exec sleep 30");
    h.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let q = qemu_line(&h);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(q.level, Level::Warn, "{q}");
    assert!(q.text.contains("no answer within 0.3 s"), "{q}");
}

#[test]
fn io_uring_is_reported_by_the_fuse_module_parameter() {
    let t = Tree::new();
    // Auto by default.
    let auto = args(&[]);
    assert_eq!(auto.serve.io_uring, crate::transport::UringMode::Auto);
    one(&t.check(&auto), "io_uring", Level::Note, &["Linux >= 6.14"]);
    t.file("/sys/module/fuse/parameters/enable_uring", "N\n");
    one(&t.check(&auto), "io_uring", Level::Note, &["echo Y >"]);
    let mut on = args(&[]);
    on.serve.io_uring = crate::transport::UringMode::On;
    one(&t.check(&on), "io_uring", Level::Fail, &["echo Y >"]);
    t.file("/sys/module/fuse/parameters/enable_uring", "Y\n");
    one(&t.check(&on), "io_uring", Level::Ok, &["enabled"]);
    let mut off = args(&[]);
    off.serve.io_uring = crate::transport::UringMode::Off;
    assert!(on_topic_is_empty(&t.check(&off)));
}

fn on_topic_is_empty(found: &[Finding]) -> bool {
    on(found, "io_uring").is_empty()
}
