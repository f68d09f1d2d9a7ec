//! Things the daemon holds for users (bound processes, threads waiting for a page), counted per
//! user and in all under caps: a user at its cap is refused without taking anyone else's room.

use std::sync::Mutex;

/// Counts per uid and in all.
#[derive(Debug)]
pub struct UserCounts(Mutex<(usize, Vec<(u32, usize)>)>);

impl UserCounts {
    pub const fn new() -> Self {
        Self(Mutex::new((0, Vec::new())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Vec<(u32, usize)>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more for `uid`, unless it holds `per_user` already or all hold `total`: None.
    /// The slot gives it back when dropped.
    pub fn take(&'static self, uid: u32, per_user: usize, total: usize) -> Option<UserSlot> {
        let mut c = self.lock();
        let (all, users) = &mut *c;
        let held = users.iter().find(|(u, _)| *u == uid).map_or(0, |(_, n)| *n);
        if held >= per_user || *all >= total {
            return None;
        }
        match users.iter_mut().find(|(u, _)| *u == uid) {
            Some((_, n)) => *n += 1,
            None => users.push((uid, 1)),
        }
        *all += 1;
        Some(UserSlot { counts: self, uid })
    }

    /// What `uid` holds now.
    pub fn of_user(&self, uid: u32) -> usize {
        let c = self.lock();
        c.1.iter().find(|(u, _)| *u == uid).map_or(0, |(_, n)| *n)
    }
}

/// One thing counted for a user (released on drop).
#[derive(Debug)]
pub struct UserSlot {
    counts: &'static UserCounts,
    uid: u32,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        let (all, users) = &mut *c;
        *all = all.saturating_sub(1);
        if let Some(i) = users.iter().position(|(u, _)| *u == self.uid) {
            users[i].1 = users[i].1.saturating_sub(1);
            if users[i].1 == 0 {
                users.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_and_in_all_and_release_on_drop() {
        static COUNTS: UserCounts = UserCounts::new();
        let a: Vec<UserSlot> = (0..2).filter_map(|_| COUNTS.take(1, 2, 3)).collect();
        assert_eq!((a.len(), COUNTS.of_user(1)), (2, 2));
        assert!(COUNTS.take(1, 2, 3).is_none(), "user 1 at its cap");
        let b = COUNTS.take(2, 2, 3).expect("user 2 has room");
        assert!(COUNTS.take(3, 2, 3).is_none(), "all at the total");
        assert_eq!(COUNTS.of_user(3), 0);
        drop(a);
        assert_eq!(COUNTS.of_user(1), 0);
        assert!(COUNTS.take(1, 2, 3).is_some());
        drop(b);
        assert_eq!(COUNTS.of_user(2), 0);
    }
}
