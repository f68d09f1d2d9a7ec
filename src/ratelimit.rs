//! Rate-limited logging for lines a client can cause.
//!
//! Any local user can send the daemon bad requests as fast as it likes; a log line per bad request
//! would let them fill the disk or drown real messages. Each call site of [`crate::warn_limited!`] gets its
//! own budget (like the kernel's printk_ratelimit: a burst per interval) and reports how many lines
//! it swallowed with the next one it lets through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines allowed per interval and call site.
pub const BURST: u32 = 10;
/// Length of one interval.
pub const INTERVAL: Duration = Duration::from_secs(5);

struct Window {
    start: Option<Instant>,
    used: u32,
}

/// The budget of one call site.
pub struct RateLimit {
    window: Mutex<Window>,
    suppressed: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    pub const fn new() -> Self {
        Self {
            window: Mutex::new(Window {
                start: None,
                used: 0,
            }),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines swallowed since the last one let through)` if a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= INTERVAL);
        if expired {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used >= BURST {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        w.used += 1;
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// `tracing::warn!` with a per-call-site budget ([`BURST`] lines per [`INTERVAL`]); the line that
/// follows a quiet spell carries `suppressed = N`.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    }};
}

/// [`crate::warn_limited!`] at error level (for panics caught in a request).
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            if suppressed > 0 {
                tracing::error!(suppressed, $($arg)+);
            } else {
                tracing::error!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_silence_then_report() {
        let rl = RateLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(rl.allow_at(t0), Some(0));
        }
        assert_eq!(rl.allow_at(t0), None);
        assert_eq!(rl.allow_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(rl.allow_at(t0 + INTERVAL), Some(2));
        assert_eq!(rl.allow_at(t0 + INTERVAL), Some(0));
    }

    #[test]
    fn macro_compiles_and_limits() {
        for i in 0..3 * BURST {
            warn_limited!(i, "test line");
        }
    }
}
