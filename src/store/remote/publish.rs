//! Publishing a store's state to its object store, and cloning a store from what was
//! published (docs/DESIGN.md, "Remote storage"). A published state is a snapshot
//! (`.pub-<seq>`) shipped as a chain of send streams without blob bytes (the first
//! whole, then differential), named by the `head` object, which every publish replaces
//! by compare-and-swap on its ETag. Storage before metadata: every blob a stream names
//! is confirmed in the bucket before the stream is, and the stream before the head.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::lease::Lease;
use super::{Binding, Put, Remote, STORE_KEY};
use crate::store::error::{Error, IoContext, Result};
use crate::store::layout::Layout;
use crate::store::node::{NodeId, Time};
use crate::store::snapshot::{is_published, PUBLISHED};
use crate::store::{OpenOptions, Store};

/// The object naming the published state.
pub const HEAD_KEY: &str = "head";

/// What `head` holds (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub format: u32,
    pub store: String,
    /// The epoch of the writer that published it (0: published without a lease).
    pub epoch: u64,
    pub seq: u64,
    /// The snapshot this state is, and its creation time.
    pub snapshot: String,
    pub created_nanos: i128,
    /// The streams that make it, oldest first: a whole one, then differential ones.
    pub chain: Vec<String>,
    pub root: String,
    pub chunk_size: u32,
    pub published_unix: i64,
    /// Bytes of the chain's whole stream, and of the differential ones after it.
    #[serde(default)]
    pub whole_bytes: u64,
    #[serde(default)]
    pub diff_bytes: u64,
    /// The differential streams of the last publishes, one per seq up to this one
    /// (at most `FOLLOW_MAX`), kept across whole streams: a follower at one of those
    /// seqs applies the rest.
    #[serde(default)]
    pub follow: Vec<String>,
}

/// This store's last publish, as it knows it: the head it wrote and that head's ETag
/// (`STORE/remote/published`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Published {
    pub(super) head: Head,
    pub(super) etag: String,
}

/// What a publish did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishReport {
    /// False: nothing changed since the last publish, nothing was written.
    pub published: bool,
    pub seq: u64,
    pub snapshot: String,
    pub stream_bytes: u64,
    pub records: u64,
    pub entries: u64,
    pub drops: u64,
    /// Blobs the stream names that were checked in the bucket, and of those the ones
    /// uploaded by this publish (not yet by the background uploader).
    pub blobs_named: u64,
    pub blobs_uploaded_now: u64,
}

/// What a clone did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CloneReport {
    pub store_id: String,
    pub seq: u64,
    pub snapshot: String,
    pub streams: u64,
    pub stream_bytes: u64,
    pub records: u64,
}

/// A chain this long, or whose differential streams add up to more than its whole
/// one, is not extended: the next publish is a whole stream, so a clone replays a
/// bounded number of streams and bytes, and a big store is not sent whole often.
const CHAIN_MAX: usize = 1024;

/// How many publishes a follower may be behind and still catch up.
const FOLLOW_MAX: usize = 64;

/// The seq of stream `streams/<seq>-<uuid>`.
pub(super) fn stream_seq(key: &str) -> Option<u64> {
    key.strip_prefix("streams/")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Put a new stream create-only under a fresh name.
fn put_stream(remote: &Remote, seq: u64, data: Vec<u8>) -> Result<String> {
    let key = format!("streams/{seq:010}-{}", uuid::Uuid::new_v4());
    if remote.put_create(&key, data)? == Put::Exists {
        return Err(Error::Remote {
            op: format!("publish {}/{key}", remote.url()),
            detail: "a new stream's name was taken".into(),
        });
    }
    Ok(key)
}

/// One publish at a time per process (the maintenance thread and a `decofs publish`),
/// and no publish while gc of the object store runs (`remote::gc`).
pub(crate) static PUBLISHING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn published_path(layout: &Layout) -> std::path::PathBuf {
    layout.root.join("remote").join("published")
}

pub(super) fn read_published(layout: &Layout) -> Result<Option<Published>> {
    let p = published_path(layout);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::CorruptRecord {
                node: p.display().to_string(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

pub(super) fn write_published(layout: &Layout, p: &Published) -> Result<()> {
    super::write_json_file(layout, &published_path(layout), p)
}

/// The head this store last published or cloned, as it wrote it down (None: none yet).
pub fn published_head(layout: &Layout) -> Result<Option<Head>> {
    Ok(read_published(layout)?.map(|p| p.head))
}

/// The snapshot of the state this store last published or cloned (None: none yet).
pub fn last_published(layout: &Layout) -> Result<Option<(u64, String)>> {
    Ok(read_published(layout)?.map(|p| (p.head.seq, p.head.snapshot)))
}

/// What is published of a store, and what is not yet (status).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishState {
    /// The state this store last published or cloned, and when it was published.
    pub seq: u64,
    pub published_unix: i64,
    /// Nodes and directory entries changed since (each counted once).
    pub unpublished_nodes: u64,
    pub unpublished_entries: u64,
}

/// The store's last publish and its changes since (None: nothing published yet).
pub fn publish_state(store: &Store) -> Result<Option<PublishState>> {
    let Some(p) = read_published(&store.layout)? else {
        return Ok(None);
    };
    let (nodes, entries) = store.snapshots.copies(&p.head.snapshot).unwrap_or((0, 0));
    Ok(Some(PublishState {
        seq: p.head.seq,
        published_unix: p.head.published_unix,
        unpublished_nodes: nodes as u64,
        unpublished_entries: entries as u64,
    }))
}

/// Read the bucket's head: the state and its ETag, or None before the first publish.
pub fn read_head(remote: &Remote) -> Result<Option<(Head, String)>> {
    let Some(got) = remote.get(HEAD_KEY)? else {
        return Ok(None);
    };
    let head: Head = serde_json::from_slice(&got.data).map_err(|e| Error::CorruptRecord {
        node: format!("{}/{HEAD_KEY}", remote.url()),
        detail: e.to_string(),
    })?;
    Ok(Some((head, got.etag.unwrap_or_default())))
}

/// Take the object store's lease for a writer's open, and move the published head to
/// its epoch, so that a writer that held it before can publish nothing more. The head
/// must be the state this store last published or cloned: one published elsewhere
/// since is `remote_fenced` (clone again to write).
pub(crate) fn take_lease(
    store: &Store,
    ttl: Option<std::time::Duration>,
) -> Result<Option<std::sync::Arc<Lease>>> {
    let Some(blobs) = store.remote() else {
        return Ok(None);
    };
    let remote = blobs.remote().clone();
    let head = read_head(&remote)?;
    let lease = Lease::acquire(
        remote.clone(),
        store.fence.clone(),
        ttl.unwrap_or(super::lease::DEFAULT_TTL),
        &store.layout.root.display().to_string(),
        head.as_ref().map_or(0, |(h, _)| h.epoch),
    )?;
    if let Some((head, etag)) = head {
        let mine = read_published(&store.layout)?;
        let same = mine
            .as_ref()
            .is_some_and(|p| p.head.seq == head.seq && p.head.created_nanos == head.created_nanos);
        // This store's own publish whose head went out before a crash kept it from
        // writing it down: its snapshot is here.
        // (Its first publish too: then nothing was written down before it.)
        let own_last = mine.as_ref().map_or(0, |p| p.head.seq) + 1 == head.seq
            && store
                .snapshots
                .get(&head.snapshot)
                .is_ok_and(|i| i.created.unix_nanos() == head.created_nanos);
        if !same && !own_last {
            // Dropped, the lease is given back: this open took it for nothing.
            return Err(Error::RemoteFenced(format!(
                "{} holds publish {} and this store's last is {}: clone it again (decofs clone) to write",
                remote.url(),
                head.seq,
                mine.map_or(0, |p| p.head.seq)
            )));
        }
        let mut moved = head.clone();
        moved.epoch = lease.epoch();
        let body = serde_json::to_vec(&moved).expect("a head serializes");
        let Some(etag) = remote.put_if_match(HEAD_KEY, body, &etag)? else {
            return Err(Error::RemoteFenced(format!(
                "{}/{HEAD_KEY} changed while this writer took the lease",
                remote.url()
            )));
        };
        write_published(&store.layout, &Published { head: moved, etag })?;
    }
    Ok(Some(lease))
}

/// A publish whose head went out without this store writing it down (a crash, a lost
/// answer) left its snapshot: if the bucket's head is that publish, adopt it.
fn adopt_own_head(
    store: &Store,
    remote: &Remote,
    prev: Option<Published>,
) -> Result<Option<Published>> {
    let next = format!("{PUBLISHED}{}", prev.as_ref().map_or(0, |p| p.head.seq) + 1);
    let Ok(info) = store.snapshots.get(&next) else {
        return Ok(prev);
    };
    match read_head(remote)? {
        Some((h, etag)) if h.snapshot == next && h.created_nanos == info.created.unix_nanos() => {
            log::info!("publish {}: its head went out; adopted", h.seq);
            let p = Published { head: h, etag };
            write_published(&store.layout, &p)?;
            Ok(Some(p))
        }
        _ => Ok(prev),
    }
}

/// Publish the store's state now, unless nothing changed since the last publish.
pub fn publish(store: &Store) -> Result<PublishReport> {
    let blobs = store.remote().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is not bound to an object store (decofs remote add)",
            store.layout.root.display()
        ))
    })?;
    store.writable()?;
    let lease = store.lease().filter(|l| l.held()).ok_or_else(|| {
        Error::RemoteFenced(format!(
            "this process does not hold the lease of {}",
            blobs.remote().url()
        ))
    })?;
    let _one = PUBLISHING.lock();
    let layout = &store.layout;
    let remote = blobs.remote();
    let prev = adopt_own_head(store, remote, read_published(layout)?)?;
    let prev_seq = prev.as_ref().map_or(0, |p| p.head.seq);
    // Only the last published state is a base: a publish cut short left a newer
    // snapshot that never was the head, a crash after a head went out an older one.
    let base_name = prev.as_ref().map(|p| p.head.snapshot.as_str());
    for n in store.snapshots.list() {
        if is_published(&n.name) && Some(n.name.as_str()) != base_name {
            store.snapshots().remove(&n.name)?;
        }
    }
    if let Some(p) = &prev {
        if !store.snapshots.has_copies(&p.head.snapshot)? {
            return Ok(PublishReport {
                published: false,
                seq: p.head.seq,
                snapshot: p.head.snapshot.clone(),
                ..Default::default()
            });
        }
    }
    let seq = prev_seq + 1;
    let name = format!("{PUBLISHED}{seq}");
    let info = store.snapshots().create(Some(&name))?;
    let spool = layout
        .sessions()
        .join(format!("publish.{}.tmp", std::process::id()));
    let mut head_attempted = false;
    let res = (|| {
        let f = fs::File::create(&spool).ctx(|| format!("create {}", spool.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let extend = prev
            .as_ref()
            .filter(|p| p.head.chain.len() < CHAIN_MAX && p.head.diff_bytes <= p.head.whole_bytes);
        let base = extend.map(|p| p.head.snapshot.as_str());
        let (sent, named) = store.streams().send_published(&name, base, &mut w)?;
        w.flush().ctx(|| format!("write {}", spool.display()))?;
        drop(w);
        // Storage before metadata: the blobs, then the stream, then the head.
        let uploaded_now = blobs.ensure_uploaded(&named)?;
        let data = fs::read(&spool).ctx(|| format!("read {}", spool.display()))?;
        let key = put_stream(remote, seq, data)?;
        // Followers apply differential streams: a whole one gets one beside it (its
        // blobs are the whole one's, confirmed above).
        let diff = match (extend, &prev) {
            (Some(_), _) => Some(key.clone()),
            (None, Some(p)) => {
                let mut d = Vec::new();
                store
                    .streams()
                    .send_published(&name, Some(&p.head.snapshot), &mut d)?;
                Some(put_stream(remote, seq, d)?)
            }
            (None, None) => None,
        };
        let mut follow = prev
            .as_ref()
            .map(|p| p.head.follow.clone())
            .filter(|f| f.last().and_then(|k| stream_seq(k)) == Some(prev_seq))
            .unwrap_or_default();
        follow.extend(diff);
        let over = follow.len().saturating_sub(FOLLOW_MAX);
        follow.drain(..over);
        let mut chain = extend.map(|p| p.head.chain.clone()).unwrap_or_default();
        chain.push(key);
        let head = Head {
            format: 1,
            store: store.format.store_id.to_string(),
            epoch: lease.epoch(),
            seq,
            snapshot: name.clone(),
            created_nanos: info.created.unix_nanos(),
            chain,
            root: store.format.root.to_string(),
            chunk_size: store.format.chunk_size,
            published_unix: Time::now().secs,
            whole_bytes: extend.map_or(sent.bytes, |p| p.head.whole_bytes),
            diff_bytes: extend.map_or(0, |p| p.head.diff_bytes + sent.bytes),
            follow,
        };
        let body = serde_json::to_vec(&head).expect("a head serializes");
        head_attempted = true;
        let written = match &prev {
            Some(p) => remote.put_if_match(HEAD_KEY, body, &p.etag),
            None => remote.put_create_etag(HEAD_KEY, body),
        };
        let etag = match written {
            Ok(Some(etag)) => etag,
            // Refused, or no answer: a retry of a write that went through is refused
            // too. The head says whether it is this publish.
            Ok(None) | Err(_) => match read_head(remote)? {
                Some((h, etag)) if h == head => etag,
                _ => {
                    return Err(match written {
                        Err(e) => e,
                        Ok(_) => Error::RemoteFenced(format!(
                            "{}/{HEAD_KEY} was replaced by another writer since this store's publish {prev_seq}",
                            remote.url()
                        )),
                    })
                }
            },
        };
        write_published(layout, &Published { head, etag })?;
        Ok(PublishReport {
            published: true,
            seq,
            snapshot: name.clone(),
            stream_bytes: sent.bytes,
            records: sent.records,
            entries: sent.entries,
            drops: sent.drops,
            blobs_named: named.len() as u64,
            blobs_uploaded_now: uploaded_now,
        })
    })();
    let _ = fs::remove_file(&spool);
    match &res {
        Ok(_) => {
            // The state before is no base any more.
            if let Some(p) = &prev {
                if let Err(e) = store.snapshots().remove(&p.head.snapshot) {
                    log::warn!("publish {seq}: the previous published snapshot stays: {e}");
                }
            }
        }
        Err(e) => {
            // Once the head may name it, the snapshot stays: the next publish or open
            // finds out whether the head is this one (`adopt_own_head`).
            if !head_attempted || matches!(e, Error::RemoteFenced(_)) {
                let _ = store.snapshots().remove(&name);
            }
            blobs.note_error(e);
            if matches!(e, Error::RemoteFenced(_)) {
                // Another writer holds the published state: this one's changes from
                // now on could never be published.
                if let Some(l) = store.lease() {
                    l.lose(&e.to_string());
                }
                store.fence().lose();
            }
        }
    }
    res
}

/// A writer's clean close: publish what changed since the last publish, then give the
/// lease back, so that another host can take over at once and sees everything. A
/// publish that fails is logged; the changes stay local (`decofs unpublished`).
pub fn close(store: &Store) {
    let Some(lease) = store.lease().filter(|l| l.held()) else {
        return;
    };
    match publish(store) {
        Ok(r) if r.published => log::info!("published {} at close", r.seq),
        Ok(_) => {}
        Err(e) => log::warn!("publish at close: {e}; the changes since stay local"),
    }
    lease.release();
}

/// Make a new store at `path` from the state published at `binding`'s prefix: the
/// same store id and root, the head's chain of streams received in order (blobs are
/// fetched when read), bound to the same prefix, its next publish continuing the chain.
pub fn clone_store(binding: &Binding, path: &Path) -> Result<CloneReport> {
    let remote = Remote::connect(binding)?;
    let marker = remote
        .get(STORE_KEY)?
        .ok_or_else(|| Error::InvalidArgument(format!("{} holds no decofs store", binding.url)))?;
    let marker = String::from_utf8_lossy(&marker.data).into_owned();
    let field = |k: &str| {
        marker
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let (Some(store_id), Some(chunk_size)) = (field("store "), field("chunk_size ")) else {
        return Err(Error::CorruptRecord {
            node: format!("{}/{STORE_KEY}", binding.url),
            detail: "not a decofs store marker".into(),
        });
    };
    let (head, etag) = read_head(&remote)?.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "nothing was published to {} yet (decofs publish on the writer)",
            binding.url
        ))
    })?;
    let bad = |what: &str| Error::CorruptRecord {
        node: format!("{}/{HEAD_KEY}", binding.url),
        detail: what.to_string(),
    };
    let store_uuid = uuid::Uuid::parse_str(&store_id).map_err(|_| bad("store id"))?;
    let root = uuid::Uuid::parse_str(&head.root)
        .map(NodeId)
        .map_err(|_| bad("root"))?;
    if head.store != store_id {
        return Err(bad("the head names another store"));
    }
    let chunk_size: u32 = chunk_size.parse().map_err(|_| bad("chunk size"))?;
    Store::init_as(path, chunk_size, store_uuid, root)?;
    // A clone cut short is removed whole: it was made here, new.
    let res = fill_clone(&remote, binding, path, store_id, head, etag);
    if res.is_err() {
        let _ = fs::remove_dir_all(path);
    }
    res
}

/// Receive the head's chain into the new store at `path`.
fn fill_clone(
    remote: &Remote,
    binding: &Binding,
    path: &Path,
    store_id: String,
    head: Head,
    etag: String,
) -> Result<CloneReport> {
    binding.write(&Layout::new(path))?;
    let store = Store::open(
        path,
        OpenOptions {
            cache_bytes: 16 << 20,
            no_lease: true,
            ..Default::default()
        },
    )?;
    let blobs = store.remote().expect("bound just now").clone();
    let mut rep = CloneReport {
        store_id,
        seq: head.seq,
        snapshot: head.snapshot.clone(),
        ..Default::default()
    };
    let mut named_elsewhere = Vec::new();
    for key in &head.chain {
        let data = remote.get(key)?.ok_or_else(|| {
            Error::StreamInvalid(format!(
                "{}/{key} is named by the head but missing",
                binding.url
            ))
        })?;
        rep.stream_bytes += data.data.len() as u64;
        let (got, elsewhere) = store.streams().receive_published(&data.data[..])?;
        named_elsewhere.extend(elsewhere);
        rep.streams += 1;
        rep.records += got.records;
    }
    // Only the newest published snapshot is a base for the next publish.
    for n in store.snapshots.list() {
        if is_published(&n.name) && n.name != head.snapshot {
            store.snapshots().remove(&n.name)?;
        }
    }
    // A record of an older state may name a manifest gc has deleted from the bucket
    // since: counting it gave the counts up. The cloned state's own are all there.
    if !store.refs.counting() && store.refs.is_open() {
        store.refs.recount(&store.sweeper())?;
    }
    // In the ledger as uploaded: the blobs the cloned state names. One only an older
    // state of the chain named may be gone from the bucket (gc of the object store
    // deletes what the writer's state no longer names); marked, a later write of the
    // same bytes here would skip its upload.
    named_elsewhere.sort_unstable();
    named_elsewhere.dedup();
    // Counts given up all the same: none is marked; a publish asks the bucket instead.
    named_elsewhere.retain(|h| matches!(store.refs.count(h), Some(c) if c > 0));
    blobs.mark_uploaded(&named_elsewhere)?;
    write_published(&store.layout, &Published { head, etag })?;
    blobs.flush()?;
    log::info!(
        "cloned {} at publish {} ({} streams, {} records)",
        binding.url,
        rep.seq,
        rep.streams,
        rep.records
    );
    Ok(rep)
}
