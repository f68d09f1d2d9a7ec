//! The daemon's status: what `uiommufd status` and the FUSE `status` file show.

use super::daemon::Daemon;
use crate::objects::Context;
use std::sync::Arc;

impl Daemon {
    /// A human- and machine-readable snapshot: contexts (owner, objects per type, whether the
    /// context's file is still open), pinned pages (in all, and charged to each owning user in
    /// user accounting mode), the daemon's mappings of clients' memory, devices. The FUSE `status`
    /// file and the control socket (`uiommufd status`) serve it, with the transport's part added
    /// by the transport (`transport::with_transport_status`).
    pub fn status_json(&self) -> String {
        // Copied out first: a context's file state has its own lock, not taken under this one.
        let registered: Vec<_> = self
            .contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        // Each live context, with whether its file is still open (a bound device or an object
        // fd keeps a context alive after its file is closed).
        let mut contexts: Vec<(Arc<Context>, Option<bool>)> = registered
            .iter()
            .filter_map(|r| Some((r.ctx.upgrade()?, r.file_open())))
            .collect();
        contexts.sort_by_key(|(c, _)| c.id);
        let objects: usize = contexts.iter().map(|(c, _)| c.num_objects()).sum();
        let detail: Vec<serde_json::Value> = contexts
            .iter()
            .map(|(c, file_open)| {
                let (pid, command) = c.opener().unzip();
                serde_json::json!({
                    "id": c.id,
                    "uid": c.owner_uid(),
                    "pid": pid,
                    "command": command,
                    "file_open": file_open,
                    "objects": c.object_counts(),
                    "ioas": ioas_status(c),
                })
            })
            .collect();
        let uids: std::collections::BTreeSet<u32> =
            contexts.iter().filter_map(|(c, _)| c.owner_uid()).collect();
        let per_user: serde_json::Map<String, serde_json::Value> = uids
            .into_iter()
            .map(|u| (u.to_string(), self.ledger().pins.charged_to_user(u).into()))
            .collect();
        serde_json::json!({
            "contexts": contexts.len(),
            "objects": objects,
            "pinned_pages": self.ledger().pins.pinned_total(),
            "memlock_pages_per_user": per_user,
            "live_mappings": crate::caller::shared::live_mappings(),
            "devices": self.devices,
            "device_detail": self.device_bindings.get().map_or_else(Vec::new, |f| {
                f().into_iter()
                    .map(|(name, b)| {
                        serde_json::json!({
                            "name": name,
                            "context": b.map(|b| b.0),
                            "device_id": b.map(|b| b.1),
                        })
                    })
                    .collect()
            }),
            "context_detail": detail,
        })
        .to_string()
            + "\n"
    }
}

/// Each IOAS of `ctx`: id, areas, bytes mapped. An IOAS busy right now (pinning a client's memory)
/// is reported as busy rather than waited for.
fn ioas_status(ctx: &Context) -> Vec<serde_json::Value> {
    ctx.objects_of_type("ioas")
        .into_iter()
        .filter_map(|(id, o)| match o {
            crate::objects::Object::Ioas(i) => Some((id, i)),
            _ => None,
        })
        .map(|(id, ioas)| match ioas.try_iopt() {
            Some(iopt) => serde_json::json!({
                "id": id,
                "areas": iopt.num_areas(),
                "bytes": iopt.areas().map(|a| a.length()).sum::<u64>(),
            }),
            None => serde_json::json!({"id": id, "busy": true}),
        })
        .collect()
}
