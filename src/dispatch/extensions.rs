//! The handlers the daemon plugs into the table's extension slots (devices, HWPTs, selftest).

use super::table::Extensions;

/// Extensions of `uiommufd serve`.
pub fn daemon_extensions() -> Extensions {
    Extensions::default()
}
