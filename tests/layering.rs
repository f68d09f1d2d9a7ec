//! The layering the README states, checked against the imports: no module of `src/` names a
//! module of a layer above its own (`crate::X` outside comments), and no layer names a role.

use std::collections::BTreeSet;
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

/// Every module named as `crate::NAME` in `text`, comments left out, `crate::{a, b::c}` groups
/// included.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces, up to the
            // brace that closes it.
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
        } else {
            out.insert(ident(rest));
        }
    }
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
