//! "This thread is about to block": said by the store before a disk read or a sync, so
//! the FUSE request loop lets another thread read the next request meanwhile (the reader
//! token of `vendor/fuser/src/gate.rs`; docs/DESIGN.md, "Request threads"). Free on a
//! thread that is not serving a request.

/// The calling thread is about to wait for the disk, the network or the kernel.
#[inline]
pub fn soon() {
    fuser::yield_reader();
}
