//! A `no_std` consumer of quorate-core. It only has to link; see Cargo.toml for why.

#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;

use quorate_core::raft::{Config, Membership, Raft, Recovered};
use quorate_core::{Instant, NodeId};

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {}
}

/// An allocator that never allocates: this crate is only linked, never run.
struct NoAlloc;

// SAFETY: returning null is the documented way for an allocator to report failure.
unsafe impl GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _: Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static ALLOCATOR: NoAlloc = NoAlloc;

/// Builds a one-node Raft group and lets its election timer fire; returns its term.
#[no_mangle]
pub extern "C" fn quorate_nostd_probe() -> u64 {
    let id = NodeId(1);
    let Ok(mut raft) = Raft::new(Config::new(id), Membership::with_voters([id]), Recovered::default(), 1, Instant::ZERO)
    else {
        return 0;
    };
    if let Some(t) = raft.poll_timeout() {
        raft.handle_timeout(t);
    }
    while raft.poll_action().is_some() {}
    let _ = bytes::Bytes::new();
    raft.term().0
}
