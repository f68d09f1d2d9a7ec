//! One daemon's books: what its contexts have pinned and charged, and what they hold against the
//! per-user caps. A daemon makes one [`Ledger`] and hands it to every context it creates (and
//! they to their pages), so nothing here is process-wide: two daemons in one process (tests) keep
//! separate books, as two hosts would.

use super::accounting::PinBook;
use super::limits::UserQuotas;
use super::pages::LivePages;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Ledger {
    /// Pages pinned, charged per user or per process against RLIMIT_MEMLOCK.
    pub pins: PinBook,
    /// Objects, file mappings and allowed ranges held per user ([`super::limits`]).
    pub quotas: UserQuotas,
    /// Every live [`super::Pages`] (pins by physical address for the selftest).
    pub live: LivePages,
}

impl Ledger {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}
