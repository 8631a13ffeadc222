//! Change events: what the store tells whoever follows it (the index, invariant 8).
//!
//! Every mutating store operation emits one [`Event`] after it succeeded, naming the
//! nodes whose records it changed and the directory entries it bound or removed. An
//! event says *where* to look, not *what* is there now: a follower re-reads the named
//! records and entries when it applies the event, so events applied late, or in an
//! order different from the disk's, still converge on the tree. The store knows nothing
//! of the follower beyond the [`EventSink`] trait; emitting must never block.

use std::ffi::OsString;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

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

/// Tells the kernel to drop what it cached that a change outside its requests made stale.
pub type InvalidateFn = Box<dyn Fn(Stale) + Send + Sync>;

/// What the kernel may hold that a change made outside its requests made stale.
#[derive(Clone, Copy, Debug)]
pub enum Stale<'a> {
    /// A node's content (and attributes).
    Content(NodeId),
    /// A node's attributes only.
    Attrs(NodeId),
    /// What the kernel knows about a name in a directory (a cached "no such name").
    Entry(NodeId, &'a std::ffi::OsStr),
}

/// Who follows the store: the index, through change events, and the kernel, told what
/// a change made outside its requests (a restore) made stale.
#[derive(Default)]
pub struct Followers {
    invalidate: Mutex<Option<InvalidateFn>>,
    sink: RwLock<Option<Arc<dyn EventSink>>>,
}

impl Followers {
    /// Send change events to `sink` from now on (None: stop).
    pub fn set_sink(&self, sink: Option<Arc<dyn EventSink>>) {
        *self.sink.write() = sink;
    }

    /// Register the callback that tells the kernel a node's content changed.
    pub fn set_invalidate(&self, f: InvalidateFn) {
        *self.invalidate.lock() = Some(f);
    }

    /// Tell the followers about a change that has happened.
    pub(crate) fn emit(&self, ev: Event) {
        if ev.op == Op::Restore {
            // A restore (asked through the control socket, never by the kernel) binds a
            // name and changes the node's and its parent's attributes behind the kernel's
            // back: drop what the kernel cached of them. Invalidating the entry also drops
            // the parent's cached listing (`fuse_reverse_inval_entry` marks it changed).
            if let Some(f) = self.invalidate.lock().as_ref() {
                for id in &ev.nodes {
                    f(Stale::Content(*id));
                }
                for (parent, name) in &ev.entries {
                    f(Stale::Entry(*parent, name));
                }
            }
        }
        if let Some(s) = self.sink.read().as_ref() {
            s.emit(ev);
        }
    }

    /// The kernel's cached content and attributes of `id` are stale.
    pub(crate) fn invalidated(&self, id: NodeId) {
        if let Some(f) = self.invalidate.lock().as_ref() {
            f(Stale::Content(id));
        }
    }

    /// The kernel's cached attributes of `id` are stale (changed by the store itself).
    pub(crate) fn attrs_invalidated(&self, id: NodeId) {
        if let Some(f) = self.invalidate.lock().as_ref() {
            f(Stale::Attrs(id));
        }
    }
}
