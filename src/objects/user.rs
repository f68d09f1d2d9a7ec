//! A user of an object: while one is held, IOMMU_DESTROY of the object answers EBUSY.
//!
//! Whatever depends on an object (a child object, an attached device, an object fd) holds an
//! [`ObjectUser`] of it, taken with [`Context::take_user`]. It gives itself back when dropped, so
//! an error path that drops it cannot leak the count; a holder that goes at a set time (an
//! object's destroy) gives it back then with [`ObjectUser::release`].

use super::{Context, Table};
use nix::errno::Errno;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};

/// One user of object `id` of a context; see the module documentation.
pub struct ObjectUser {
    /// The context's table; gone with the context, when nothing is left to give back.
    table: Weak<Mutex<Table>>,
    id: u32,
    held: AtomicBool,
}

impl std::fmt::Debug for ObjectUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectUser")
            .field("id", &self.id)
            .field("held", &self.held.load(Ordering::Relaxed))
            .finish()
    }
}

impl ObjectUser {
    /// The user an entry was inserted with (its count already includes it).
    pub(super) fn taken(table: &std::sync::Arc<Mutex<Table>>, id: u32) -> Self {
        ObjectUser {
            table: std::sync::Arc::downgrade(table),
            id,
            held: AtomicBool::new(true),
        }
    }

    /// The object this is a user of.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Gives the user back now; later calls (and the drop) do nothing. Must not be called with
    /// the context's table locked.
    pub fn release(&self) {
        if !self.held.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(table) = self.table.upgrade() else {
            return;
        };
        let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = table.entries.get_mut(&self.id) {
            // The table itself stays a user.
            e.users = e.users.saturating_sub(1).max(1);
        }
    }
}

impl Drop for ObjectUser {
    fn drop(&mut self) {
        self.release();
    }
}

impl Context {
    /// A new user of object `id` (ENOENT when there is none): it cannot be destroyed until the
    /// user is given back.
    pub fn take_user(&self, id: u32) -> Result<ObjectUser, Errno> {
        let mut table = self.table.lock().unwrap();
        let e = table
            .entries
            .get_mut(&id)
            .filter(|e| e.object.is_some())
            .ok_or(Errno::ENOENT)?;
        e.users += 1;
        Ok(ObjectUser::taken(&self.table, id))
    }
}
