//! Change events: what the store tells whoever follows it (the index, invariant 8).
//!
//! Every mutating store operation emits one [`Event`] after it succeeded, naming the
//! nodes whose records it changed and the directory entries it bound or removed. An
//! event says *where* to look, not *what* is there now: a follower re-reads the named
//! records and entries when it applies the event, so events applied late, or in an
//! order different from the disk's, still converge on the tree. The store knows nothing
//! of the follower beyond the [`EventSink`] trait; emitting must never block.

use std::ffi::OsString;

use serde::{Deserialize, Serialize};

use super::node::{NodeId, Time};

/// What kind of operation changed the store (kept in the change log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Create,
    Link,
    Unlink,
    Rmdir,
    Rename,
    Exchange,
    Attr,
    Xattr,
    Write,
    Restore,
    Revert,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Link => "link",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Exchange => "exchange",
            Op::Attr => "attr",
            Op::Xattr => "xattr",
            Op::Write => "write",
            Op::Restore => "restore",
            Op::Revert => "revert",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub op: Op,
    /// Nodes whose records changed (the first is the node the operation is about).
    pub nodes: Vec<NodeId>,
    /// Entries (parent, name) bound, removed or re-pointed, in operation order.
    pub entries: Vec<(NodeId, OsString)>,
    pub at: Time,
}

impl Event {
    pub fn new(op: Op, nodes: &[NodeId]) -> Event {
        Event {
            op,
            nodes: nodes.to_vec(),
            entries: Vec::new(),
            at: Time::now(),
        }
    }

    pub fn entry(mut self, parent: NodeId, name: &std::ffi::OsStr) -> Event {
        self.entries.push((parent, name.to_os_string()));
        self
    }
}

/// Where events go. `emit` is called on filesystem threads and must not block.
pub trait EventSink: Send + Sync {
    fn emit(&self, ev: Event);
}
