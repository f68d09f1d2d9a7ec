//! The configuration file of `serve` (TOML, default `/etc/uiommufd/uiommufd.toml`).
//!
//! Every key is a `serve` flag without its dashes, with the same values:
//!
//! ```toml
//! transport = "auto"
//! mount = "/run/uiommufd"
//! vfio = ["0000:03:00.0"]
//! device = ["dmacopy:copy0"]
//! iommu-perm = "0660:root:kvm"
//! max-contexts-per-user = 256
//! selftest = false
//! ```
//!
//! The file becomes command-line arguments placed before the real ones, so the command line wins
//! for single values (the last occurrence counts) and adds to lists. An unknown key is the same
//! error as an unknown flag. `--config PATH` names another file; `--config none` reads none.

use std::ffi::OsString;
use std::path::Path;

/// Where `serve` looks when no `--config` is given (a missing file there is fine).
pub const DEFAULT_PATH: &str = "/etc/uiommufd/uiommufd.toml";

/// The arguments the TOML text stands for, in key order. Errors name the key.
pub fn args_of(text: &str) -> Result<Vec<OsString>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        if key == "config" {
            return Err("`config` cannot name another file".into());
        }
        let flag = format!("--{key}");
        let mut scalar = |v: &toml::Value| -> Result<(), String> {
            match v {
                toml::Value::String(s) => out.push(format!("{flag}={s}").into()),
                toml::Value::Integer(i) => out.push(format!("{flag}={i}").into()),
                toml::Value::Boolean(true) => out.push(flag.clone().into()),
                toml::Value::Boolean(false) => {}
                other => {
                    return Err(format!(
                        "{key}: a string, integer or boolean, not {}",
                        other.type_str()
                    ))
                }
            }
            Ok(())
        };
        match value {
            toml::Value::Array(items) => {
                for v in items {
                    if matches!(v, toml::Value::Boolean(_)) {
                        return Err(format!("{key}: a list of strings or integers"));
                    }
                    scalar(v)?;
                }
            }
            v => scalar(v)?,
        }
    }
    Ok(out)
}

/// `argv` with the configuration's arguments inserted after `serve`: from `--config PATH` (or
/// `--config=PATH`), else from [`DEFAULT_PATH`] if it exists. Other commands pass unchanged.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(serve) = argv.iter().position(|a| a == "serve") else {
        return Ok(argv);
    };
    // Only a `serve` that is the subcommand (the first non-option argument).
    if argv[1..serve]
        .iter()
        .any(|a| !a.to_string_lossy().starts_with('-'))
    {
        return Ok(argv);
    }
    let mut path: Option<OsString> = None;
    let mut it = argv[serve + 1..].iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            path = it.next().cloned();
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(p.into());
        }
    }
    let (path, required) = match path {
        Some(p) if p == "none" => return Ok(argv),
        Some(p) => (p, true),
        None => (DEFAULT_PATH.into(), false),
    };
    let text = match std::fs::read_to_string(Path::new(&path)) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(argv),
        Err(e) => return Err(format!("{}: {e}", Path::new(&path).display())),
    };
    let extra = args_of(&text).map_err(|e| format!("{}: {e}", Path::new(&path).display()))?;
    let mut out = argv[..=serve].to_vec();
    out.extend(extra);
    out.extend(argv[serve + 1..].iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn keys_become_flags() {
        let args = args_of(
            r#"
            transport = "fuse"
            vfio = ["0000:03:00.0", "0000:04:00.0"]
            selftest = true
            bind-dev = false
            max-contexts-per-user = 16
            "#,
        )
        .unwrap();
        assert_eq!(
            strs(args),
            [
                "--max-contexts-per-user=16",
                "--selftest",
                "--transport=fuse",
                "--vfio=0000:03:00.0",
                "--vfio=0000:04:00.0"
            ]
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        assert!(args_of("x = 1.5").unwrap_err().contains('x'));
        assert!(args_of("[perms]\niommu = \"0660\"")
            .unwrap_err()
            .contains("perms"));
        assert!(args_of("config = \"/etc/other\"").is_err());
        assert!(args_of("this is not toml").is_err());
    }

    #[test]
    fn the_file_goes_before_the_command_line() {
        let dir = std::env::temp_dir().join(format!("uiommufd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "mount = \"/from/file\"\n").unwrap();
        let argv: Vec<OsString> = [
            "uiommufd",
            "serve",
            "--config",
            f.to_str().unwrap(),
            "--mount",
            "/cli",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let got = strs(expand(argv).unwrap());
        assert_eq!(got[..3], ["uiommufd", "serve", "--mount=/from/file"]);
        assert_eq!(got.last().unwrap(), "/cli");
        // A named file that is missing is an error; `none` reads nothing.
        let missing: Vec<OsString> = ["uiommufd", "serve", "--config", "/nonexistent.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(expand(missing).is_err());
        let none: Vec<OsString> = ["uiommufd", "serve", "--config=none"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(strs(expand(none).unwrap()).len(), 3);
        // Other commands are left alone.
        let other: Vec<OsString> = ["uiommufd", "replay", "serve"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            strs(expand(other).unwrap()),
            ["uiommufd", "replay", "serve"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
