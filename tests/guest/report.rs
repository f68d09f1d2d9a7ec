//! Checks and their tally: `ok NAME` / `FAIL NAME: why` per check.

use crate::sys::Res;

#[derive(Default)]
pub struct Report {
    pub passed: u32,
    pub failed: u32,
    /// (prefix, replacement): check names starting with the prefix are reported under the
    /// replacement instead (one scenario run twice under two names).
    pub rename: Option<(String, String)>,
}

impl Report {
    pub fn check<T>(&mut self, name: &str, r: Res<T>) -> Option<T> {
        let name = match &self.rename {
            Some((from, to)) if name.starts_with(from.as_str()) => {
                format!("{to}{}", &name[from.len()..])
            }
            _ => name.to_string(),
        };
        match r {
            Ok(v) => {
                self.passed += 1;
                println!("ok {name}");
                Some(v)
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
                None
            }
        }
    }
}

/// Runs one check; on failure the enclosing test function stops (later steps depend on it).
macro_rules! step {
    ($r:expr, $name:expr, $e:expr) => {
        match $r.check($name, $e) {
            Some(v) => v,
            None => return,
        }
    };
}
