//! Two daemons in one process keep separate books: pins, per-user totals, status and object fds
//! of one are nothing to the other (nothing of a daemon's state is process-wide).

use super::handles::{bind, file_id, req};
use super::*;
use crate::dispatch::private_abi::UIOMMUFD_HANDLE_FAULT_QUEUE;
use crate::iopt::limits::Resource;

/// Pages [`Bench::map`] maps in the test below.
const MAPPED_PAGES: u64 = 4;

/// Objects user `uid` holds in the books of `b`'s daemon.
fn objects_held(b: &Bench, uid: u32) -> u64 {
    b.daemon.ledger().quotas.user_total(uid, Resource::Objects)
}

fn status(b: &Bench) -> serde_json::Value {
    serde_json::from_str(&b.daemon.status_json()).unwrap()
}

#[test]
fn two_daemons_do_not_see_each_others_charges_or_handles() {
    let (one, _one_file) = Bench::opened(daemon_extensions());
    let (two, _two_file) = Bench::opened(daemon_extensions());
    // Daemon one pins pages (its IOAS has a domain) and holds objects and an object fd.
    let ioas = one.ioas();
    one.mock(ioas, 0);
    one.map(ioas, 0, MAPPED_PAGES * 4096);
    let handle = bind(
        &one,
        file_id(1),
        &req(UIOMMUFD_HANDLE_FAULT_QUEUE, 0, 0),
        one.ctx.id,
    )
    .unwrap();
    let queue = one.at::<crate::dispatch::private_abi::uiommufd_handle_bind>(ARG);
    let uid = one
        .ctx
        .owner_uid()
        .expect("the first ioctl names the owner");

    // Daemon one sees all of it, in its books and in its status.
    assert_eq!(one.daemon.ledger().pins.pinned_total(), MAPPED_PAGES);
    assert_eq!(status(&one)["pinned_pages"], MAPPED_PAGES);
    let held_by_one = objects_held(&one, uid);
    assert!(held_by_one >= 3, "IOAS, mock device and HWPT, fault queue");
    assert!(one
        .daemon
        .handles()
        .release_may_free(one.ctx.id, queue.out_object_id));

    // Daemon two sees none of it.
    assert_eq!(status(&two)["pinned_pages"], 0, "{}", status(&two));
    assert_eq!(two.daemon.ledger().pins.pinned_total(), 0);
    assert_eq!(two.daemon.ledger().pins.charged_to_user(uid), 0);
    assert_eq!(two.daemon.ledger().pins.charged_to_processes(), 0);
    assert_eq!(objects_held(&two, uid), 0);
    assert!(two.daemon.ledger().live.pins_by_paddr().is_empty());
    assert!(!two
        .daemon
        .handles()
        .release_may_free(one.ctx.id, queue.out_object_id));
    // Its own work is charged to itself alone.
    let its_ioas = two.ioas();
    assert_eq!(objects_held(&two, uid), 1);
    assert_eq!(objects_held(&one, uid), held_by_one);
    two.ctx.destroy(its_ioas).unwrap();

    // Daemon one's books go back to zero as its objects go; daemon two's stay untouched.
    handle.release(file_id(1));
    one.ctx.destroy_all();
    assert_eq!(one.daemon.ledger().pins.pinned_total(), 0);
    assert_eq!(objects_held(&one, uid), 0);
    assert_eq!(objects_held(&two, uid), 0);
}
