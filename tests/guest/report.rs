//! Checks and their tally: `ok NAME` / `FAIL NAME: why` per check.

use crate::sys::Res;

#[derive(Default)]
pub struct Report {
    pub passed: u32,
    pub failed: u32,
}

impl Report {
    pub fn check<T>(&mut self, name: &str, r: Res<T>) -> Option<T> {
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
