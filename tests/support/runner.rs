//! A minimal test runner for `harness = false` test binaries: binaries whose `main` must stay
//! single-threaded (to fork clients) or that double as the client program they spawn (a role
//! chosen by an environment variable), so that no role ever runs as a plain test.
//!
//! Runs the named tests one after the other (arguments that do not start with `-` filter by
//! substring, as libtest does) and prints libtest's summary line, which `scripts/test.sh` adds up.

use std::time::Instant;

pub type Test = (&'static str, fn());

/// Runs `tests`; exits with 101 if any failed.
pub fn run(tests: &[Test]) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let start = Instant::now();
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for &(name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            filtered += 1;
            continue;
        }
        println!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out; finished in {:.2}s",
        if failed == 0 { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(101);
    }
}
