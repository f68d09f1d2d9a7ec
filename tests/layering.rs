//! The layering the README states, checked against the imports: no module of `src/` names a
//! module of a layer above its own (`crate::X` outside comments), and no layer names a role.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom: a module may name modules of its own layer and of the layers below it.
/// `service` is the interface between the transport and what serves it; `caller` (the caller's
/// memory, fds and identity) and `sys` are foundations every layer uses; `ratelimit` gives the
/// logging macros; `narrow` the lossless integer conversions.
const LAYERS: &[&str] = &[
    "transport",
    "dispatch",
    "devices",
    "objects",
    "iopt",
    "backends",
    "service",
    "caller",
    "sys",
    "ratelimit",
    "narrow",
];

/// Built on the layers: they may name anything; no layer names them.
const ROLES: &[&str] = &["launch", "ops", "replay"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/iopt/mod.rs` → iopt).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// `text` without its comments (whole comment lines, and what follows ` // ` on a line).
fn code_of(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first path segments of what follows a `PREFIX::`: one name, or each top-level item of a
/// `{a, b::c}` group.
fn segments_at(rest: &str, out: &mut BTreeSet<String>) {
    let Some(group) = rest.strip_prefix('{') else {
        out.insert(ident(rest));
        return;
    };
    // Top-level items of the group: split at commas outside nested braces, up to the brace that
    // closes it.
    let mut depth = 0;
    let mut start = 0;
    for (i, ch) in group.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.insert(ident(group[start..i].trim()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.insert(ident(group[start..i].trim()));
                start = i + 1;
            }
            _ => {}
        }
    }
}

/// The first segments of every path after `prefix` in `code` (see [`segments_at`]).
fn segments_after(code: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        segments_at(rest, out);
    }
}

/// Every module named as `crate::NAME` in `text`, comments left out, `crate::{a, b::c}` groups
/// included.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    segments_after(&code_of(text), "crate::", &mut out);
    out.retain(|m| !m.is_empty());
    out
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

#[test]
fn no_module_names_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "the source tree was not found: {src:?}");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        let Some(own) = rank(&module) else {
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_modules(&text) {
            let above = match rank(&named) {
                Some(r) => r < own,
                None => ROLES.contains(&named.as_str()),
            };
            if above {
                wrong.push(format!(
                    "{} ({module}) names {named}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} files of layers checked");
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_import_scan_sees_groups_paths_and_skips_comments() {
    let text = "use crate::iopt::Pages;\n\
                use crate::{caller::CallerMemory, objects::{Context, Ioas}, sys};\n\
                // crate::launch in a comment\n\
                let x = crate::transport::fuse_channel(); // crate::ops here\n";
    let got: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(got, ["caller", "iopt", "objects", "sys", "transport"]);
}

/// The files of `src/dispatch/` of different concerns whose imports must run one way: each file
/// is one node, the `selftest/` directory one node (its files are one concern).
const DISPATCH_NODES: &[&str] = &["daemon", "handles", "ioas_cmds", "table", "selftest"];

/// The module path of a file of `src/dispatch/` below `dispatch` (`selftest/access.rs` →
/// [selftest, access], `selftest/mod.rs` → [selftest]).
fn dispatch_module_path(rel: &Path) -> Vec<String> {
    let mut path: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    path
}

/// The modules directly under `dispatch` that code of the module at `own` (as
/// [`dispatch_module_path`] gives it) names: `crate::dispatch::X`, or `super::X` climbing up to
/// `dispatch` (`super::super::X` from `selftest/access.rs`). Comments are left out.
fn named_dispatch_modules(text: &str, own: &[String]) -> BTreeSet<String> {
    let code = code_of(text);
    let mut out = BTreeSet::new();
    segments_after(&code, "crate::dispatch::", &mut out);
    let mut rest = code.as_str();
    while let Some(at) = rest.find("super::") {
        let mut climbed = 0;
        rest = &rest[at..];
        while let Some(after) = rest.strip_prefix("super::") {
            climbed += 1;
            rest = after;
        }
        // From a module `own.len()` deep, that many `super::` reach `dispatch`; fewer stay in
        // the file's own directory.
        if climbed == own.len() {
            segments_at(rest, &mut out);
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// A cycle through `edges` (node → nodes it names), as the nodes along it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn dispatch_concerns_import_each_other_one_way() {
    let dispatch = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dispatch");
    let mut files = Vec::new();
    rust_files(&dispatch, &mut files);
    // node → (named node → the files that name it)
    let mut named_by: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&dispatch).unwrap();
        let own = dispatch_module_path(rel);
        let Some(node) = own.first().filter(|n| DISPATCH_NODES.contains(&n.as_str())) else {
            continue;
        };
        seen.insert(node.clone());
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_dispatch_modules(&text, &own) {
            if named != *node && DISPATCH_NODES.contains(&named.as_str()) {
                named_by
                    .entry(node.clone())
                    .or_default()
                    .entry(named)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    assert_eq!(
        seen.len(),
        DISPATCH_NODES.len(),
        "files not found: {seen:?}"
    );
    let edges = named_by
        .iter()
        .map(|(n, to)| (n.clone(), to.keys().cloned().collect()))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} → {} (in {:?})", w[0], w[1], named_by[&w[0]][&w[1]]))
            .collect();
        panic!(
            "dispatch files import each other in a cycle:\n{}",
            steps.join("\n")
        );
    }
}

#[test]
fn the_dispatch_scan_climbs_to_dispatch_and_finds_cycles() {
    let own = |p: &str| dispatch_module_path(Path::new(p));
    let text = "use super::handles::{HandleObject, Handle};\n\
                use super::super::table;\n\
                use crate::dispatch::{daemon::Daemon, ucmd};\n\
                // super::ioas_cmds in a comment\n\
                let x = super::payload(cmd);\n";
    let got: Vec<String> = named_dispatch_modules(text, &own("selftest/access.rs"))
        .into_iter()
        .collect();
    assert_eq!(got, ["daemon", "table", "ucmd"]);
    let got: Vec<String> = named_dispatch_modules(text, &own("selftest/mod.rs"))
        .into_iter()
        .collect();
    assert_eq!(got, ["daemon", "handles", "payload", "ucmd"]);
    let edges = |pairs: &[(&str, &str)]| {
        let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            e.entry(a.to_string()).or_default().insert(b.to_string());
        }
        e
    };
    let one_way = edges(&[("a", "b"), ("b", "c"), ("a", "c")]);
    assert_eq!(find_cycle(&one_way), None);
    let round = edges(&[("a", "b"), ("b", "c"), ("c", "a")]);
    assert_eq!(
        find_cycle(&round),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
