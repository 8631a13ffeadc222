//! Open nodes (invariant 6's "an open-but-unlinked file stays usable"): how many handles
//! hold each node, so purging never frees one under a reader, and which nodes lost
//! their last name while open with no trash link (a full disk), to be freed at their
//! last close.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

use super::node::NodeId;

#[derive(Default)]
pub struct Pins {
    /// Nodes with open handles (any mode), and how many.
    counts: Mutex<HashMap<NodeId, u32>>,
    /// Nodes that lost their last name while open, with no trash link: freed at their
    /// last close.
    unlinked_open: Mutex<HashSet<NodeId>>,
}

impl Pins {
    /// A handle opened `id`.
    pub fn pin(&self, id: NodeId) {
        *self.counts.lock().entry(id).or_insert(0) += 1;
    }

    /// A handle of `id` closed; true if it was the last.
    pub(crate) fn unpin(&self, id: NodeId) -> bool {
        let mut p = self.counts.lock();
        match p.get_mut(&id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                p.remove(&id);
                true
            }
            None => false,
        }
    }

    pub fn pinned(&self, id: NodeId) -> bool {
        self.counts.lock().contains_key(&id)
    }

    /// `id` lost its last name with no trash link: free it at its last close.
    pub(crate) fn mark_unlinked(&self, id: NodeId) {
        self.unlinked_open.lock().insert(id);
    }

    pub(crate) fn is_unlinked(&self, id: NodeId) -> bool {
        self.unlinked_open.lock().contains(&id)
    }

    /// Take the mark of `id`: true for the one caller that is to free it.
    pub(crate) fn take_unlinked(&self, id: NodeId) -> bool {
        self.unlinked_open.lock().remove(&id)
    }

    /// Take the nodes that lost their last name while open and have been closed since
    /// without being freed (a paused writer or a follower changes nothing at a close).
    pub(crate) fn take_closed_unlinked(&self) -> Vec<NodeId> {
        let counts = self.counts.lock();
        let mut u = self.unlinked_open.lock();
        let closed: Vec<NodeId> = u
            .iter()
            .filter(|id| !counts.contains_key(id))
            .copied()
            .collect();
        for id in &closed {
            u.remove(id);
        }
        closed
    }
}
