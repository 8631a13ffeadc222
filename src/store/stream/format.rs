//! The send stream, format 1: a magic and version, then frames. Each frame is a kind
//! byte, a little-endian u32 length, the payload, and a CRC32 of the three; the last
//! frame (`End`) carries the number of frames before it and the BLAKE3 of every byte
//! before it, so a truncated, damaged or reordered stream is refused whole.
//!
//! Frames: `Header` first (postcard), then `Blob` (hash, bytes), `Record` (node id,
//! record body without generations), `Entry` (postcard: directory, name, node or
//! none), `Drop` (node id), and `End`.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::store::error::{Error, Result};
use crate::store::node::{Hash, NodeId};

pub const MAGIC: &[u8; 14] = b"DECOFS-STREAM\0";
pub const VERSION: u16 = 1;
/// The largest frame a reader accepts (a blob of the largest chunk size, 64 MiB, plus
/// its hash).
const FRAME_MAX: u32 = (64 << 20) + 64;

const K_HEADER: u8 = 1;
const K_BLOB: u8 = 2;
const K_RECORD: u8 = 3;
const K_ENTRY: u8 = 4;
const K_DROP: u8 = 5;
const K_END: u8 = 0x7f;

/// What a stream holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The sending store's id.
    pub source: String,
    /// The snapshot the stream makes exist.
    pub name: String,
    pub created_nanos: i128,
    /// For a differential stream: the snapshot it applies on, and its creation time
    /// (a receiver's snapshot of that name must be the same one).
    pub base: Option<(String, i128)>,
    /// The sender's root node: the receiver's root stands for it.
    pub root: NodeId,
    pub chunk_size: u32,
}

#[derive(Serialize, Deserialize)]
struct EntryFrame {
    dir: NodeId,
    name: Vec<u8>,
    node: Option<NodeId>,
}

#[derive(Serialize, Deserialize)]
struct EndFrame {
    frames: u64,
    digest: [u8; 32],
}

/// One frame, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Header(Header),
    Blob(Hash, Vec<u8>),
    Record(NodeId, Vec<u8>),
    Entry(NodeId, Vec<u8>, Option<NodeId>),
    Drop(NodeId),
}

fn bad(detail: impl Into<String>) -> Error {
    Error::StreamInvalid(detail.into())
}

/// Writes a stream: frames in order, then `finish` writes `End`.
pub struct Writer<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    frames: u64,
    pub bytes: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> Result<Writer<W>> {
        let mut hasher = blake3::Hasher::new();
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&VERSION.to_le_bytes());
        out.write_all(&start)
            .map_err(|e| Error::io("write the stream", e))?;
        hasher.update(&start);
        let mut w = Writer {
            out,
            hasher,
            frames: 0,
            bytes: start.len() as u64,
        };
        w.frame(
            K_HEADER,
            &postcard::to_allocvec(header).expect("headers serialize"),
        )?;
        Ok(w)
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..5].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(payload);
        let crc = crc.finalize().to_le_bytes();
        for part in [&head[..], payload, &crc[..]] {
            self.out
                .write_all(part)
                .map_err(|e| Error::io("write the stream", e))?;
            self.hasher.update(part);
            self.bytes += part.len() as u64;
        }
        self.frames += 1;
        Ok(())
    }

    pub fn blob(&mut self, hash: &Hash, data: &[u8]) -> Result<()> {
        let mut p = Vec::with_capacity(32 + data.len());
        p.extend_from_slice(hash);
        p.extend_from_slice(data);
        self.frame(K_BLOB, &p)
    }

    pub fn record(&mut self, id: NodeId, body: &[u8]) -> Result<()> {
        let mut p = Vec::with_capacity(16 + body.len());
        p.extend_from_slice(id.0.as_bytes());
        p.extend_from_slice(body);
        self.frame(K_RECORD, &p)
    }

    pub fn entry(&mut self, dir: NodeId, name: &[u8], node: Option<NodeId>) -> Result<()> {
        let e = EntryFrame {
            dir,
            name: name.to_vec(),
            node,
        };
        self.frame(
            K_ENTRY,
            &postcard::to_allocvec(&e).expect("entries serialize"),
        )
    }

    pub fn drop_node(&mut self, id: NodeId) -> Result<()> {
        self.frame(K_DROP, id.0.as_bytes())
    }

    /// Write `End`; returns the writer and the stream's size in bytes.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let end = EndFrame {
            frames: self.frames,
            digest: *self.hasher.finalize().as_bytes(),
        };
        self.frame(K_END, &postcard::to_allocvec(&end).expect("ends serialize"))?;
        self.out
            .flush()
            .map_err(|e| Error::io("write the stream", e))?;
        Ok((self.out, self.bytes))
    }
}

fn node(b: &[u8]) -> Result<NodeId> {
    let a: [u8; 16] = b
        .try_into()
        .map_err(|_| bad("a node id of the wrong length"))?;
    Ok(NodeId(uuid::Uuid::from_bytes(a)))
}

/// Reads a stream frame by frame, checking each frame's CRC, and at `End` the frame
/// count and the digest of everything before it.
pub struct Reader<R: Read> {
    input: R,
    hasher: blake3::Hasher,
    frames: u64,
    ended: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Reader<R>> {
        let mut start = [0u8; 16];
        input
            .read_exact(&mut start)
            .map_err(|_| bad("too short to be a decofs stream"))?;
        if &start[..14] != MAGIC {
            return Err(bad("not a decofs stream (bad magic)"));
        }
        let v = u16::from_le_bytes([start[14], start[15]]);
        if v != VERSION {
            return Err(bad(format!(
                "stream format {v}; this decofs reads format {VERSION}"
            )));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&start);
        Ok(Reader {
            input,
            hasher,
            frames: 0,
            ended: false,
        })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("the stream is truncated")
            } else {
                Error::io("read the stream", e)
            }
        })
    }

    /// The next frame, or None after a valid `End`.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.ended {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        self.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > FRAME_MAX {
            return Err(bad(format!("a frame of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload)?;
        let mut crc = [0u8; 4];
        self.read_exact(&mut crc)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&payload);
        if h.finalize().to_le_bytes() != crc {
            return Err(bad(format!("frame {} fails its checksum", self.frames)));
        }
        if head[0] == K_END {
            let end: EndFrame =
                postcard::from_bytes(&payload).map_err(|_| bad("an undecodable end"))?;
            if end.frames != self.frames || end.digest != *self.hasher.finalize().as_bytes() {
                return Err(bad("frames are missing, repeated or out of order"));
            }
            // Nothing may follow the end.
            let mut more = [0u8; 1];
            match self.input.read(&mut more) {
                Ok(0) => {}
                Ok(_) => return Err(bad("bytes after the end of the stream")),
                Err(e) => return Err(Error::io("read the stream", e)),
            }
            self.ended = true;
            return Ok(None);
        }
        for part in [&head[..], &payload[..], &crc[..]] {
            self.hasher.update(part);
        }
        let first = self.frames == 0;
        self.frames += 1;
        let f = match head[0] {
            K_HEADER if first => Frame::Header(
                postcard::from_bytes(&payload).map_err(|_| bad("an undecodable header"))?,
            ),
            _ if first => return Err(bad("the stream does not start with its header")),
            K_BLOB if payload.len() >= 32 => {
                let mut h = [0u8; 32];
                h.copy_from_slice(&payload[..32]);
                Frame::Blob(h, payload[32..].to_vec())
            }
            K_RECORD if payload.len() > 16 => {
                Frame::Record(node(&payload[..16])?, payload[16..].to_vec())
            }
            K_ENTRY => {
                let e: EntryFrame =
                    postcard::from_bytes(&payload).map_err(|_| bad("an undecodable entry"))?;
                Frame::Entry(e.dir, e.name, e.node)
            }
            K_DROP => Frame::Drop(node(&payload)?),
            k => return Err(bad(format!("an unknown or malformed frame (kind {k})"))),
        };
        Ok(Some(f))
    }
}
