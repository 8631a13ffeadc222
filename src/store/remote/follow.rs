//! A follower: a read-only mount of a store on an object store (a clone, typically)
//! that applies what its writer publishes, without the lease (docs/DESIGN.md, "Remote
//! storage"). Each step reads `head` and applies, in order, the differential streams
//! its `follow` list names after the follower's own published state, as a mounted
//! receive does; the follower's mount is read-only in the kernel, and its store's
//! fence lets only these applies through.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::publish::{read_head, read_published, stream_seq, write_published, Published};
use crate::store::error::{Error, Result};
use crate::store::node::Time;
use crate::store::snapshot::{is_published, PUBLISHED};
use crate::store::Store;

/// How a follower stands (status).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FollowState {
    /// The published state this store shows, and the newest the bucket has.
    pub seq: u64,
    pub head_seq: u64,
    /// When the head was last read, and when a publish was last applied (unix secs).
    pub checked_unix: Option<i64>,
    pub applied_unix: Option<i64>,
    /// Publishes applied by this mount.
    pub applied: u64,
    /// Why the last step failed (None: it did not).
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct Follower {
    state: Mutex<FollowState>,
    /// One step at a time.
    stepping: Mutex<()>,
}

/// The seq of the newest published snapshot here (a follower stopped between two
/// applies has it ahead of `STORE/remote/published`).
fn local_seq(store: &Store) -> Option<u64> {
    store
        .snapshots
        .list()
        .iter()
        .filter(|n| is_published(&n.name))
        .filter_map(|n| n.name.strip_prefix(PUBLISHED)?.parse().ok())
        .max()
}

impl Follower {
    pub fn state(&self) -> FollowState {
        self.state.lock().clone()
    }

    /// Read the head and apply what was published since this store's state. Returns
    /// how many publishes were applied. A follower that fell further behind than the
    /// head's `follow` list reaches is `receive_conflict` (clone again).
    pub fn step(&self, store: &Store) -> Result<u64> {
        let _one = self.stepping.lock();
        let res = self.step_inner(store);
        let mut st = self.state.lock();
        st.checked_unix = Some(Time::now().secs);
        match &res {
            Ok(n) if *n > 0 => {
                st.applied += n;
                st.applied_unix = st.checked_unix;
                st.last_error = None;
            }
            Ok(_) => st.last_error = None,
            Err(e) => st.last_error = Some(e.to_string()),
        }
        res
    }

    fn step_inner(&self, store: &Store) -> Result<u64> {
        let blobs = store
            .remote()
            .ok_or_else(|| Error::InvalidArgument("not a store on an object store".into()))?;
        let remote = blobs.remote();
        let mine = read_published(&store.layout)?;
        let Some((head, etag)) = read_head(remote)? else {
            return Ok(0);
        };
        if head.store != store.format.store_id.to_string() {
            return Err(Error::RemoteConflict(format!(
                "{} holds store {}, this one is {}",
                remote.url(),
                head.store,
                store.format.store_id
            )));
        }
        let have = local_seq(store).unwrap_or(0);
        {
            let mut st = self.state.lock();
            st.seq = have;
            st.head_seq = head.seq;
        }
        let current = mine
            .as_ref()
            .is_some_and(|p| p.head.seq == head.seq && p.head.created_nanos == head.created_nanos);
        if current {
            return Ok(0);
        }
        if head.seq < have {
            return Err(Error::ReceiveConflict(format!(
                "{} is at publish {} and this store at {have}: clone it again",
                remote.url(),
                head.seq
            )));
        }
        let mut todo = Vec::new();
        for seq in have + 1..=head.seq {
            let key = head
                .follow
                .iter()
                .find(|k| stream_seq(k) == Some(seq))
                .ok_or_else(|| {
                    Error::ReceiveConflict(format!(
                        "this store is at publish {have}, {} at {}, and the streams between are not kept: clone it again",
                        remote.url(),
                        head.seq
                    ))
                })?;
            todo.push(key.clone());
        }
        for key in &todo {
            let data = remote.get(key)?.ok_or_else(|| {
                Error::StreamInvalid(format!(
                    "{}/{key} is named by the head but missing",
                    remote.url()
                ))
            })?;
            store.fence().applying(|| {
                let (got, mut elsewhere) = store.streams().receive_published(&data.data[..])?;
                // In the ledger as uploaded: what the applied state names (as a clone
                // does; see `fill_clone`).
                elsewhere.retain(|h| matches!(store.refs.count(h), Some(c) if c > 0));
                blobs.mark_uploaded(&elsewhere)?;
                // Only the newest published snapshot is a base for the next one.
                for n in store.snapshots.list() {
                    if is_published(&n.name) && n.name != got.name {
                        store.snapshots().remove(&n.name)?;
                    }
                }
                Ok(())
            })?;
            self.state.lock().seq += 1;
        }
        write_published(&store.layout, &Published { head, etag })?;
        blobs.flush()?;
        Ok(todo.len() as u64)
    }
}
