//! The control channel between the CLI and a running mount, and the same answers when
//! no daemon runs (the CLI then opens the store itself), so commands work either way.
//!
//! - [`protocol`]: the typed requests and replies, and [`Report`], the one error shape.
//! - [`server`]: the daemon's socket (one thread per connection, panics answered).
//! - [`client`]: ask the daemon, or answer locally.
//! - [`answer`]: the answers themselves, on a store or on its index.
//! - [`registry`]: which daemons serve a store (pid files, sockets).
//! - [`locate`]: which store a path on the command line lives in.
//! - [`stats`]: a daemon's cumulative counters (`decofs stats`).
//!
//! Layering: the daemon (`crate::daemon`) starts the server; this module uses the
//! store, the index and `crate::host`, and nothing above it.

pub mod answer;
pub mod client;
pub mod locate;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod stats;

pub use crate::jsonpath::{json_to_path, path_to_json, show_path};
pub use answer::DaemonInfo;
pub use client::{call, run, run_index, status};
pub use locate::{locate, resolve};
pub use protocol::{Report, Request};
pub use registry::{clean_stale, daemons, socket_path, Daemon};
pub use server::serve;
