//! decofs: a FUSE filesystem on a decomposed store.
//!
//! The layers, top down (a module imports only from layers below it):
//! - the `decofs` binary (`src/cli/`): commands, text and `--json` output.
//! - [`daemon`]: mounting, the background start, signals, unmounting; starts the
//!   control server.
//! - [`control`]: the typed control protocol, its server and client, and the answers
//!   (on the store or the index) given by either.
//! - [`fuse`]: the fuser adapter; replies only.
//! - [`index`]: the sled index beside the store, following its events (find, du,
//!   changes).
//! - [`store`]: the truth on disk (nodes, entries, blobs, sessions); enforces the
//!   invariants of docs/DESIGN.md.
//! - [`host`], [`jsonpath`], [`panics`], [`blocking`]: small helpers with no dependencies
//!   in the crate.

pub mod blocking;
pub mod control;
pub mod daemon;
pub mod fuse;
pub mod host;
pub mod index;
pub mod jsonpath;
pub mod panics;
pub mod store;
