//! decofs: a FUSE filesystem on a decomposed store.
//!
//! - [`store`]: the truth on disk (nodes, entries, blobs, sessions); enforces the
//!   invariants of docs/DESIGN.md.
//! - [`fuse`]: the fuser adapter; replies only.
//! - [`index`]: the sled index that follows the store's events (find, du, changes).
//! - [`mount`]: mounting, daemonizing, signals, unmounting.

pub mod control;
pub mod fuse;
pub mod index;
pub mod mount;
pub mod store;
