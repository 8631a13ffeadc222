//! Send and receive: a snapshot as a stream (`format`), whole or as the difference
//! from an earlier snapshot, and a receiving store that makes the same snapshot exist.
//!
//! A receive reads the whole stream into `sessions/receive.<pid>.tmp` while checking
//! it (frames, digest, blob hashes, the base, every blob a record names), then renames
//! it to `snapshots/.receive` (the intent) and applies it with every operation shut
//! out; a receive a crash interrupted is applied again at the next read-write open
//! (each step is idempotent), so it happens whole or not at all. docs/DESIGN.md, "Send
//! and receive".

pub mod format;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use format::{Frame, Header, Reader, Writer};

use super::blobs::BlobStore;
use super::chunk_lists::ChunkLists;
use super::error::{Error, IoContext, Result};
use super::event::{Event, Followers, Op};
use super::layout::{sync_dir, Layout};
use super::lock::Fence;
use super::names::Names;
use super::node::{decode_body, encode_body, Hash, Kind, NodeId, NodeRecord, Time};
use super::pins::Pins;
use super::records::Records;
use super::snapshot::{changed_keys, Lens, Snapshots};

/// What a send wrote.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    pub bytes: u64,
    pub records: u64,
    pub entries: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub drops: u64,
}

/// What a receive applied.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub name: String,
    pub base: Option<String>,
    pub records: u64,
    pub entries: u64,
    pub blobs: u64,
    pub drops: u64,
}

/// What a restore did.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// The snapshot of the state before, taken first (restore it to undo).
    pub before: String,
    pub records: u64,
    pub entries: u64,
    pub drops: u64,
}

/// Send and receive over a store.
#[derive(Clone)]
pub struct Streams<'a> {
    pub(super) layout: &'a Layout,
    pub(super) snaps: &'a Snapshots,
    pub(super) records: &'a Records,
    pub(super) names: Names<'a>,
    pub(super) blobs: &'a dyn BlobStore,
    pub(super) chunk_lists: &'a ChunkLists,
    pub(super) revisions: &'a crate::store::revisions::Revisions,
    pub(super) fence: &'a Fence,
    /// A mounted store: the kernel and the index are told what an apply changed, an
    /// open file it removes stays until its last close, and no file may be open for
    /// writing (its later commits would undo part of the apply).
    pub(super) followers: &'a Followers,
    pub(super) pins: &'a Pins,
    pub(super) writing: usize,
    pub(super) store_id: String,
    pub(super) root: NodeId,
    pub(super) chunk_size: u32,
}

/// Is the node live as `names` see it (named somewhere, not in the trash)?
fn live(names: &Names<'_>, id: NodeId) -> bool {
    names
        .record(id)
        .is_ok_and(|r| r.nlink > 0 && r.trash.is_none())
}

/// The nodes to remove, given those `from` named and `to` does not: with what `from`
/// had under them that `to` does not name either, deepest first (a directory after
/// what was in it).
fn removal_order(mut drops: Vec<NodeId>, from: &Names<'_>, to: &Names<'_>) -> Vec<NodeId> {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    while let Some(id) = drops.pop() {
        if !seen.insert(id) {
            continue;
        }
        order.push(id);
        if from.record(id).is_ok_and(|r| r.kind == Kind::Dir) {
            for (_, c) in from.readdir(id).unwrap_or_default() {
                if !live(to, c) {
                    drops.push(c);
                }
            }
        }
    }
    order.reverse();
    order
}

/// The blobs a record's content names: its manifest and its chunks.
fn content_blobs(chunk_lists: &ChunkLists, rec: &NodeRecord) -> Result<Vec<Hash>> {
    let mut out = Vec::new();
    if let super::node::Content::Manifest(h) = &rec.content {
        out.push(*h);
    }
    out.extend(chunk_lists.get(&rec.content)?.iter().map(|c| c.hash));
    Ok(out)
}

/// The sending side: records, entries and blobs written once each.
struct Emit<'s, 'a, W: Write> {
    st: &'s Streams<'a>,
    w: Writer<W>,
    sent: Sent,
    blobs_sent: HashSet<Hash>,
    records_sent: HashSet<NodeId>,
    entries_sent: HashSet<(NodeId, Vec<u8>)>,
    /// Write blob frames; without them (a stream published to an object store, whose
    /// blobs are there already) the blobs that would have been sent go to `named`.
    with_blobs: bool,
    named: Vec<Hash>,
}

impl<W: Write> Emit<'_, '_, W> {
    /// Send `id`'s record as `at` sees it, after the blobs it names that `base` (the
    /// same node in the base snapshot) does not.
    fn record(&mut self, at: &Names<'_>, id: NodeId, base: Option<&NodeRecord>) -> Result<()> {
        if !self.records_sent.insert(id) {
            return Ok(());
        }
        let mut rec = at.record(id)?;
        let had: HashSet<Hash> = match base {
            Some(b) => content_blobs(self.st.chunk_lists, b)?.into_iter().collect(),
            None => HashSet::new(),
        };
        for h in content_blobs(self.st.chunk_lists, &rec)? {
            if had.contains(&h) || !self.blobs_sent.insert(h) {
                continue;
            }
            if !self.with_blobs {
                self.named.push(h);
                continue;
            }
            let data = self.st.blobs.get(&h)?;
            self.w.blob(&h, &data)?;
            self.sent.blobs += 1;
            self.sent.blob_bytes += data.len() as u64;
        }
        rec.gen = 0;
        rec.born = 0;
        self.w.record(id, &encode_body(&rec))?;
        self.sent.records += 1;
        Ok(())
    }

    fn entry(&mut self, dir: NodeId, name: &[u8], node: Option<NodeId>) -> Result<()> {
        if self.entries_sent.insert((dir, name.to_vec())) {
            self.w.entry(dir, name, node)?;
            self.sent.entries += 1;
        }
        Ok(())
    }

    /// Send `id` and, for a directory, everything under it, as `at` sees them.
    fn tree(&mut self, at: &Names<'_>, id: NodeId) -> Result<()> {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if self.records_sent.contains(&id) {
                continue;
            }
            self.record(at, id, None)?;
            if at.record(id)?.kind == Kind::Dir {
                for (n, c) in at.readdir(id)? {
                    self.entry(id, n.as_bytes(), Some(c))?;
                    stack.push(c);
                }
            }
        }
        Ok(())
    }
}

impl Streams<'_> {
    /// Write snapshot `name` as a stream: whole, or with `base` only what differs from
    /// snapshot `base`.
    pub fn send(&self, name: &str, base: Option<&str>, out: impl Write) -> Result<Sent> {
        self.send_with(name, base, out, true).map(|(sent, _)| sent)
    }

    /// A stream without blob frames, for an object store that holds the blobs: also
    /// returns the blobs a full stream would have carried (the publisher makes sure
    /// each is in the bucket before the stream is published).
    pub fn send_published(
        &self,
        name: &str,
        base: Option<&str>,
        out: impl Write,
    ) -> Result<(Sent, Vec<Hash>)> {
        self.send_with(name, base, out, false)
    }

    fn send_with(
        &self,
        name: &str,
        base: Option<&str>,
        out: impl Write,
        with_blobs: bool,
    ) -> Result<(Sent, Vec<Hash>)> {
        let info = self.snaps.get(name)?;
        let lens_n = self.snaps.lens(name)?;
        let n = self.names.at(&lens_n);
        let base_info = base.map(|b| self.snaps.get(b)).transpose()?;
        if let Some(b) = &base_info {
            if b.gen >= info.gen {
                return Err(Error::InvalidArgument(format!(
                    "--from {}: it must be older than {name}",
                    b.name
                )));
            }
        }
        let header = Header {
            source: info.source.clone().unwrap_or_else(|| self.store_id.clone()),
            name: name.to_string(),
            created_nanos: info.created.unix_nanos(),
            base: base_info
                .as_ref()
                .map(|b| (b.name.clone(), b.created.unix_nanos())),
            root: self.root,
            chunk_size: self.chunk_size,
        };
        let mut e = Emit {
            st: self,
            w: Writer::new(out, &header)?,
            sent: Sent::default(),
            blobs_sent: HashSet::new(),
            records_sent: HashSet::new(),
            entries_sent: HashSet::new(),
            with_blobs,
            named: Vec::new(),
        };
        match &base_info {
            None => e.tree(&n, self.root)?,
            Some(b) => {
                let lens_b: Lens = self.snaps.lens(&b.name)?;
                let old = self.names.at(&lens_b);
                // What may differ: the copies made from the base up to `name`.
                let a_areas = self.snaps.areas_from(b.gen);
                let n_areas = self.snaps.areas_from(info.gen);
                let areas: Vec<&PathBuf> =
                    a_areas.iter().filter(|p| !n_areas.contains(p)).collect();
                let (recs, entries) = changed_keys(&areas);
                for id in recs {
                    if live(&n, id) {
                        let before = old.record(id).ok().filter(|_| live(&old, id));
                        e.record(&n, id, before.as_ref())?;
                    }
                }
                let mut drops = Vec::new();
                for (dir, name) in &entries {
                    let now = live(&n, *dir).then(|| n.lookup(*dir, name).ok()).flatten();
                    if live(&n, *dir) {
                        e.entry(*dir, name.as_bytes(), now)?;
                        if let Some(c) = now {
                            if !live(&old, c) {
                                e.tree(&n, c)?;
                            }
                        }
                    }
                    // What the base named here and nothing names any more goes, with
                    // what was under it.
                    if live(&old, *dir) {
                        if let Ok(was) = old.lookup(*dir, name) {
                            if !live(&n, was) {
                                drops.push(was);
                            }
                        }
                    }
                }
                for id in removal_order(drops, &old, &n) {
                    e.w.drop_node(id)?;
                    e.sent.drops += 1;
                }
            }
        }
        let (mut sent, named) = (e.sent, e.named);
        let (_, bytes) = e.w.finish()?;
        sent.bytes = bytes;
        Ok((sent, named))
    }

    /// Make the live tree equal to snapshot `name` (an unmounted store). The state
    /// before is kept as a new snapshot `before-restore-<UTC time>`; then what differs
    /// is written as a stream and applied as a received one is: whole or not at all.
    pub fn restore(&self, name: &str) -> Result<Restored> {
        self.fence.check()?;
        self.no_writers()?;
        let info = self.snaps.get(name)?;
        let base = format!(
            "before-restore-{}",
            super::snapshot_ops::generated_name(Time::now())
        );
        let mut before = base.clone();
        for i in 1.. {
            if self.snaps.get(&before).is_err() {
                break;
            }
            before = format!("{base}.{i}");
        }
        self.snaps.create(&before)?;
        let lens = self.snaps.lens(name)?;
        let then = self.names.at(&lens);
        let now = self.names;
        let spool = self
            .layout
            .sessions()
            .join(format!("receive.{}.tmp", std::process::id()));
        let header = Header {
            source: self.store_id.clone(),
            name: name.to_string(),
            created_nanos: info.created.unix_nanos(),
            base: None,
            root: self.root,
            chunk_size: self.chunk_size,
        };
        let mut done = Restored {
            before,
            ..Default::default()
        };
        let res = (|| {
            let f = fs::File::create(&spool).ctx(|| format!("create {}", spool.display()))?;
            let mut w = Writer::new(std::io::BufWriter::new(f), &header)?;
            let areas = self.snaps.areas_from(info.gen);
            let area_refs: Vec<&PathBuf> = areas.iter().collect();
            let (recs, entries) = changed_keys(&area_refs);
            // Every record the snapshot holds and something changed since (blobs are
            // all here: the snapshot's copies name them).
            for id in recs {
                if live(&then, id) {
                    let mut rec = then.record(id)?;
                    rec.gen = 0;
                    rec.born = 0;
                    w.record(id, &encode_body(&rec))?;
                    done.records += 1;
                }
            }
            let mut drops = Vec::new();
            for (dir, n) in &entries {
                if live(&then, *dir) {
                    w.entry(*dir, n.as_bytes(), then.lookup(*dir, n).ok())?;
                    done.entries += 1;
                }
                if live(&now, *dir) {
                    if let Ok(is) = now.lookup(*dir, n) {
                        if !live(&then, is) {
                            drops.push(is);
                        }
                    }
                }
            }
            // What exists now and not then goes (kept by the snapshot `before`).
            for id in removal_order(drops, &now, &then) {
                w.drop_node(id)?;
                done.drops += 1;
            }
            let (out, _) = w.finish()?;
            let f = out
                .into_inner()
                .map_err(|e| Error::io("write the restore", e.into_error()))?;
            f.sync_all().ctx(|| format!("sync {}", spool.display()))?;
            fs::rename(&spool, self.intent()).ctx(|| "install the restore".into())?;
            sync_dir(&self.layout.snapshots())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&spool);
        }
        res?;
        self.resume()?;
        Ok(done)
    }

    /// Refused while files are open for writing (a mounted store).
    fn no_writers(&self) -> Result<()> {
        match self.writing {
            0 => Ok(()),
            n => Err(Error::FilesOpenForWriting(n)),
        }
    }

    fn intent(&self) -> PathBuf {
        self.layout.snapshots().join(".receive")
    }

    /// Receive a stream: check all of it, then make its snapshot exist here (and the
    /// live tree equal to it). Refused with nothing changed: a damaged stream
    /// (`stream_invalid`), a missing or different base (`snapshot_base_missing`), a
    /// store that is not the base's state (`receive_conflict`).
    pub fn receive(&self, input: impl Read) -> Result<Received> {
        self.receive_with(input, false).map(|(got, _)| got)
    }

    /// Receive a stream published to this store's object store: a blob it names that
    /// is neither in it nor here is in the bucket (publishing put it there before the
    /// stream). Returns those blobs.
    pub fn receive_published(&self, input: impl Read) -> Result<(Received, Vec<Hash>)> {
        self.receive_with(input, true)
    }

    fn receive_with(&self, input: impl Read, remote: bool) -> Result<(Received, Vec<Hash>)> {
        self.fence.check()?;
        self.no_writers()?;
        let dir = self.layout.snapshots();
        let spool = self
            .layout
            .sessions()
            .join(format!("receive.{}.tmp", std::process::id()));
        let res = (|| {
            let f = fs::File::create(&spool).ctx(|| format!("create {}", spool.display()))?;
            let checked = self.check(Tee { input, copy: f }, remote)?;
            let f = fs::File::open(&spool).ctx(|| format!("open {}", spool.display()))?;
            f.sync_all().ctx(|| format!("sync {}", spool.display()))?;
            fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
            fs::rename(&spool, self.intent()).ctx(|| "install the receive".into())?;
            sync_dir(&dir)?;
            Ok(checked)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&spool);
        }
        let (_, elsewhere) = res?;
        let got = self
            .resume()?
            .ok_or_else(|| Error::StreamInvalid("the receive vanished".into()))?;
        Ok((got, elsewhere))
    }

    /// Apply a receive a crash interrupted (`snapshots/.receive`), if any.
    pub(crate) fn resume(&self) -> Result<Option<Received>> {
        let p = self.intent();
        let f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("open {}", p.display()), e)),
        };
        let mut events = Vec::new();
        let got = self
            .snaps
            .exclusive(|| self.apply(std::io::BufReader::new(f), &mut events))?;
        fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
        sync_dir(&self.layout.snapshots())?;
        // After the gate: telling the kernel takes its locks, which a request waiting
        // at the gate may hold.
        for ev in events {
            self.followers.emit(ev);
        }
        Ok(Some(got))
    }

    /// Read the whole stream, checking it and whether it applies here.
    fn check(&self, input: impl Read, remote: bool) -> Result<(Header, Vec<Hash>)> {
        let mut r = Reader::new(std::io::BufReader::new(input))?;
        let Some(Frame::Header(h)) = r.next_frame()? else {
            return Err(Error::StreamInvalid("no header".into()));
        };
        if h.chunk_size != self.chunk_size {
            return Err(Error::ReceiveConflict(format!(
                "the stream's chunk size is {}, this store's {}",
                h.chunk_size, self.chunk_size
            )));
        }
        if self.snaps.get(&h.name).is_ok() {
            return Err(Error::SnapshotExists(h.name.clone()));
        }
        match &h.base {
            None => {
                if !self.snaps.list().is_empty() || !self.names.readdir(self.root)?.is_empty() {
                    return Err(Error::ReceiveConflict(
                        "a whole stream goes into a new, empty store".into(),
                    ));
                }
            }
            Some((b, created)) => {
                let same = self
                    .snaps
                    .get(b)
                    .ok()
                    .filter(|i| i.created.unix_nanos() == *created);
                if same.is_none() {
                    return Err(Error::SnapshotBaseMissing(b.clone()));
                }
                if self.snaps.newest() != same.map(|i| i.gen) || self.snaps.has_copies(b)? {
                    return Err(Error::ReceiveConflict(format!(
                        "this store changed after snapshot {b}, or has newer snapshots"
                    )));
                }
            }
        }
        let mut have: HashSet<Hash> = HashSet::new();
        let mut needed: BTreeMap<Hash, NodeId> = BTreeMap::new();
        while let Some(f) = r.next_frame()? {
            match f {
                Frame::Header(_) => return Err(Error::StreamInvalid("a second header".into())),
                Frame::Blob(hash, data) => {
                    if super::blobs::hash_of(&data) != hash {
                        return Err(Error::StreamInvalid(format!(
                            "blob {} does not match its hash",
                            super::node::hash_hex(&hash)
                        )));
                    }
                    have.insert(hash);
                }
                Frame::Record(id, body) => {
                    let rec = decode_body(id, &body)
                        .map_err(|e| Error::StreamInvalid(format!("record of {id}: {e}")))?;
                    // A manifest's chunks are the sender's to have sent (it did, for
                    // all the base's record of the node does not name): the manifest
                    // itself must be here.
                    match &rec.content {
                        super::node::Content::Manifest(m) => {
                            needed.insert(*m, id);
                        }
                        super::node::Content::Chunks(v) => {
                            needed.extend(v.iter().map(|c| (c.hash, id)));
                        }
                        _ => {}
                    }
                }
                Frame::Entry(..) | Frame::Drop(_) => {}
            }
        }
        let mut elsewhere = Vec::new();
        for (hash, id) in needed {
            if have.contains(&hash) {
                continue;
            }
            if remote {
                elsewhere.push(hash);
            } else if !self.blobs.exists(&hash) {
                return Err(Error::SnapshotBaseMissing(format!(
                    "blob {} of node {id} is neither in the stream nor in this store",
                    super::node::hash_hex(&hash)
                )));
            }
        }
        Ok((h, elsewhere))
    }

    /// The receiver's id for a sender's node (the roots stand for each other).
    fn here(&self, h: &Header, id: NodeId) -> NodeId {
        if id == h.root {
            self.root
        } else {
            id
        }
    }

    /// Apply a checked stream (inside `Snapshots::exclusive`); idempotent. `events`
    /// gets what changed, for the followers.
    fn apply(&self, input: impl Read, events: &mut Vec<Event>) -> Result<Received> {
        let mut r = Reader::new(input)?;
        let Some(Frame::Header(h)) = r.next_frame()? else {
            return Err(Error::StreamInvalid("no header".into()));
        };
        let mut got = Received {
            name: h.name.clone(),
            base: h.base.as_ref().map(|b| b.0.clone()),
            ..Default::default()
        };
        // Trash links by node: a node made live again, or removed, leaves the trash.
        let mut trash: std::collections::HashMap<NodeId, Vec<PathBuf>> = Default::default();
        for e in fs::read_dir(self.layout.trash())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(l) = Layout::parse_trash_link(&n) {
                trash.entry(l.id).or_default().push(e.path());
            }
        }
        let untrash = |id: NodeId| {
            for l in trash.get(&id).into_iter().flatten() {
                let _ = fs::remove_file(l);
            }
        };
        while let Some(f) = r.next_frame()? {
            match f {
                Frame::Header(_) => {}
                Frame::Blob(_, data) => {
                    self.blobs.restore(&data)?;
                    got.blobs += 1;
                }
                Frame::Record(id, body) => {
                    let mut rec = decode_body(id, &body)?;
                    let id = self.here(&h, id);
                    rec.parent = rec.parent.map(|p| self.here(&h, p));
                    if id == self.root {
                        rec.ino = 1;
                    }
                    let named = rec.trash.is_none();
                    self.install(id, rec)?;
                    if named {
                        untrash(id);
                        // Named again: not freed at its last close.
                        self.pins.take_unlinked(id);
                    }
                    events.push(Event::new(Op::Restore, &[id]));
                    got.records += 1;
                }
                Frame::Entry(dir, name, node) => {
                    let dir = self.here(&h, dir);
                    let name = OsStr::from_bytes(&name);
                    self.set_entry(dir, name, node.map(|n| self.here(&h, n)))?;
                    events.push(Event::new(Op::Restore, &[dir]).entry(dir, name));
                    got.entries += 1;
                }
                Frame::Drop(id) => {
                    let id = self.here(&h, id);
                    self.drop_node(id, events)?;
                    untrash(id);
                    events.push(Event::new(Op::Restore, &[id]));
                    got.drops += 1;
                }
            }
        }
        // Nodes an earlier apply removed while they were open, closed since: freed
        // before the snapshot, which never names them.
        for id in self.pins.take_closed_unlinked() {
            if let Ok(rec) = self.records.read(id) {
                self.records.remove_node(id, rec.kind == Kind::Dir)?;
                self.revisions.remove_all(id)?;
            }
        }
        if self.snaps.get(&h.name).is_err() {
            self.snaps.create_exclusive(
                &h.name,
                Time::from_unix_nanos(h.created_nanos),
                Some(h.source.clone()),
            )?;
        }
        Ok(got)
    }

    /// Make `id`'s record `rec` (its node file made if it has none).
    fn install(&self, id: NodeId, rec: NodeRecord) -> Result<()> {
        let p = self.layout.node_path(id);
        if p.symlink_metadata().is_ok() && self.records.read(id).is_ok() {
            self.records.update(id, |r| {
                let (v, born) = (r.version, r.born);
                *r = rec;
                r.version = v;
                r.born = born;
                Ok(())
            })?;
            return Ok(());
        }
        let shard = p.parent().unwrap();
        fs::create_dir_all(shard).ctx(|| format!("create {}", shard.display()))?;
        let made = if rec.kind == Kind::Dir {
            fs::create_dir(&p)
        } else {
            fs::File::create(&p).map(|_| ())
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("create node {id}"), e)),
        }
        let mut rec = rec;
        rec.born = self.snaps.current();
        self.records
            .write(id, &rec, false, crate::store::records::Old::OnDisk)
    }

    /// Make entry `name` of `dir` name `node` (or nothing).
    fn set_entry(&self, dir: NodeId, name: &OsStr, node: Option<NodeId>) -> Result<()> {
        self.names.preserve_entry(dir, name)?;
        let p = self.layout.node_path(dir).join(name);
        match node {
            Some(n) => {
                let tmp = self.layout.node_path(dir).join(".decofs-receive.tmp");
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(Layout::entry_target(n), &tmp)
                    .ctx(|| format!("bind {:?}", name))?;
                fs::rename(&tmp, &p).ctx(|| format!("bind {:?}", name))
            }
            None => match fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(format!("remove {:?}", name), e)),
            },
        }
    }

    /// Remove node `id`, which nothing names any more (a snapshot keeps its record).
    /// One open on the mount stays until its last close frees it.
    fn drop_node(&self, id: NodeId, events: &mut Vec<Event>) -> Result<()> {
        let Ok(rec) = self.records.read(id) else {
            return Ok(()); // gone already
        };
        self.records.preserve_for_snapshots(id, &rec)?;
        if rec.kind == Kind::Dir {
            // What it still names is removed with it or named elsewhere by now (an
            // entry of the stream bound it there).
            for (n, _) in self.names.readdir(id).unwrap_or_default() {
                self.set_entry(id, &n, None)?;
                events.push(Event::new(Op::Restore, &[id]).entry(id, &n));
            }
        }
        if self.pins.pinned(id) {
            self.pins.mark_unlinked(id);
            return Ok(());
        }
        self.records.remove_node(id, rec.kind == Kind::Dir)?;
        self.revisions.remove_all(id)
    }
}

/// Copies what is read into a file (the spool a receive applies from).
struct Tee<R: Read> {
    input: R,
    copy: fs::File,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
