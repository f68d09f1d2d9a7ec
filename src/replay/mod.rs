//! Scripted ioctl replay and session recording.
//!
//! A script is a JSON-lines file (format in [`script`] and `tests/replay/README.md`): open a node,
//! allocate named buffers, issue ioctls by name with symbolic fields, check the errno and the output
//! fields, fork a second client, close. [`run_files`] runs scripts against a real node or an
//! in-process daemon; [`record::Recorder`] turns every context served by the daemon back into such
//! a script.

pub mod client;
pub mod exec;
pub mod layout;
pub mod mock;
pub mod record;
pub mod script;
pub mod trace;

pub use client::Mode;
pub use exec::Failure;

use std::io::Write;
use std::path::Path;

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

/// Parses and runs one script file.
pub fn run_file(path: &Path, mode: &Mode) -> Result<(), Failure> {
    run_file_traced(path, mode, None)
}

/// [`run_file`], printing the [`trace`] lines of its ioctl steps to `trace`.
pub fn run_file_traced(
    path: &Path,
    mode: &Mode,
    trace: Option<&mut dyn Write>,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure {
        line: 0,
        msg: format!("cannot read: {e}"),
    })?;
    let steps = script::parse(&text).map_err(|e| Failure {
        line: e.line,
        msg: format!("malformed script: {}", e.msg),
    })?;
    let sink = trace.map(|out| exec::TraceSink {
        script: path.display().to_string(),
        out,
    });
    exec::run_traced(mode, &steps, sink)
}

/// Runs each script with a fresh mode from `mode` (a fresh daemon for in-process runs), printing
/// `PASS path` or `FAIL path:line: problem` per script and then the line `N passed, M failed`;
/// with `trace`, each script's [`trace`] lines come before its PASS/FAIL line.
pub fn run_files(
    paths: &[std::path::PathBuf],
    mode: &dyn Fn() -> Mode,
    out: &mut dyn Write,
    trace: bool,
) -> Summary {
    let mut s = Summary::default();
    for p in paths {
        let mut lines = Vec::new();
        let sink: Option<&mut dyn Write> = if trace { Some(&mut lines) } else { None };
        let result = run_file_traced(p, &mode(), sink);
        let _ = out.write_all(&lines);
        match result {
            Ok(()) => {
                s.passed += 1;
                let _ = writeln!(out, "PASS {}", p.display());
            }
            Err(f) => {
                s.failed += 1;
                let _ = writeln!(out, "FAIL {}:{}: {}", p.display(), f.line, f.msg);
            }
        }
    }
    let _ = writeln!(out, "{} passed, {} failed", s.passed, s.failed);
    s
}

/// The script files named by `args`: files as given, directories expanded to their `*.jsonl`
/// (sorted).
pub fn expand(args: &[std::path::PathBuf]) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(a)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(a.clone());
        }
    }
    Ok(files)
}

/// Half-open spans `[start, end)` sorted, those that overlap or touch merged into one.
pub(crate) fn merge_spans(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Options of `uiommufd replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The iommufd node the scripts open ("open": "iommu").
    #[arg(long, default_value = "/dev/iommu")]
    pub node: std::path::PathBuf,
    /// The VFIO container node ("open": "vfio"); default: vfio/vfio next to --node.
    #[arg(long)]
    pub vfio_node: Option<std::path::PathBuf>,
    /// Run against a daemon inside this process instead of a node.
    #[arg(long)]
    pub in_process: bool,
    /// Record the in-process daemon's sessions into this directory (with --in-process).
    #[arg(long, requires = "in_process")]
    pub record: Option<std::path::PathBuf>,
    /// Print, per ioctl step, what the call left behind: its result, the struct after the call and
    /// the caller buffers it points to (format in `replay::trace`), before each PASS/FAIL line.
    #[arg(long)]
    pub trace: bool,
    /// Run nothing: write each script transformed for the selftest's mock device into this
    /// directory (same file name), its device node's BIND/ATTACH/DETACH as IOMMU_TEST_CMD mock
    /// steps ([`mock`]); the result runs on an IOMMUFD_TEST kernel and `serve --selftest`.
    #[arg(long, conflicts_with_all = ["in_process", "record", "trace"])]
    pub to_mock: Option<std::path::PathBuf>,
    /// Script files, or directories of *.jsonl scripts.
    #[arg(required = true)]
    pub scripts: Vec<std::path::PathBuf>,
}

/// `uiommufd replay`: runs the scripts, prints the summary, fails when any script failed.
pub fn main(args: ReplayArgs) -> std::process::ExitCode {
    let files = match expand(&args.scripts) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("uiommufd replay: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(dir) = &args.to_mock {
        return write_mock(&files, dir);
    }
    let vfio = args.vfio_node.clone().unwrap_or_else(|| {
        args.node
            .parent()
            .unwrap_or(Path::new("/"))
            .join("vfio/vfio")
    });
    let recorder = match &args.record {
        Some(dir) => match record::Recorder::new(dir) {
            Ok(r) => Some(std::sync::Arc::new(r)),
            Err(e) => {
                eprintln!("uiommufd replay: --record {}: {e}", dir.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let mode = || {
        if args.in_process {
            let daemon =
                crate::dispatch::Daemon::new(crate::dispatch::extensions::daemon_extensions());
            if let Some(r) = &recorder {
                daemon.set_observer(r.clone());
            }
            Mode::InProcess(std::sync::Arc::new(crate::dispatch::DaemonService(daemon)))
        } else {
            Mode::Real {
                iommu: args.node.clone(),
                vfio: vfio.clone(),
            }
        }
    };
    let summary = run_files(&files, &mode, &mut std::io::stdout(), args.trace);
    if summary.failed == 0 && summary.passed > 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `replay --to-mock DIR`: see [`mock`].
fn write_mock(files: &[std::path::PathBuf], dir: &Path) -> std::process::ExitCode {
    let run = || -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for f in files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let out = mock::to_mock(&text).map_err(|e| format!("{}: {e}", f.display()))?;
            let name = f
                .file_name()
                .ok_or_else(|| format!("{}: no file name", f.display()))?;
            let to = dir.join(name);
            std::fs::write(&to, out).map_err(|e| format!("{}: {e}", to.display()))?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uiommufd replay --to-mock: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
