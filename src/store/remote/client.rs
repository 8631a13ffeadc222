//! A blocking facade over `object_store`'s S3 client, on a private runtime: the few
//! calls decofs needs (create-only put, put if the ETag matches, get, head, list,
//! delete), each bounded in time, with `object_store`'s errors turned into ours.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};

use super::{Binding, RemoteUrl};
use crate::store::error::{Error, Result};

/// What a create-only put found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    /// The object was there already (nothing was written).
    Exists,
}

/// An object as read, with its ETag (what a later conditional put must match).
pub struct Got {
    pub data: Vec<u8>,
    pub etag: Option<String>,
}

/// An object's size and ETag, without its bytes.
pub struct Meta {
    pub size: u64,
    pub etag: Option<String>,
}

/// How many create-only puts of one object the conditional-write check races.
const PROBE_WRITERS: usize = 8;

/// One bucket and prefix, reached through S3.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    url: RemoteUrl,
    endpoint: String,
}

/// Bounds of one request: a connect, the whole request, and its retries. Tests that
/// blackhole the object store shorten them with `DECOFS_REMOTE_TIMEOUT_MS`.
fn timeouts() -> (Duration, Duration) {
    let ms = std::env::var("DECOFS_REMOTE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30_000);
    let request = Duration::from_millis(ms.max(100));
    let connect = request.min(Duration::from_secs(5));
    (connect, request)
}

/// The first line of an error, bounded: it goes into one-line messages and status.
fn short(e: &object_store::Error) -> String {
    let s = e.to_string();
    let line = s.lines().next().unwrap_or("").trim();
    let mut out: String = line.chars().take(300).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

impl Remote {
    /// A client for the binding's bucket. Fields the binding leaves out come from the
    /// standard `AWS_*` environment variables; nothing is contacted yet.
    pub fn connect(b: &Binding) -> Result<Remote> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&b.url.bucket);
        if let Some(e) = &b.endpoint {
            builder = builder.with_endpoint(e);
        }
        if let Some(r) = &b.region {
            builder = builder.with_region(r);
        }
        let allow_http = b.allow_http.unwrap_or_else(|| {
            std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        });
        let (connect, request) = timeouts();
        let options = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(connect)
            .with_timeout(request);
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: request,
            ..Default::default()
        };
        let endpoint = b
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok())
            .unwrap_or_else(|| "AWS S3".into());
        let store = builder
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| {
                Error::InvalidArgument(format!("object store {}: {}", b.url, short(&e)))
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("decofs-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the object store client", e))?;
        Ok(Remote {
            rt,
            store: Arc::new(store),
            url: b.url.clone(),
            endpoint,
        })
    }

    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// Where requests go (for messages and status).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.url.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{}", self.url.prefix, rel))
        }
    }

    fn fail(&self, op: &str, rel: &str, e: &object_store::Error) -> Error {
        Error::Remote {
            op: format!("{op} {}/{rel}", self.url),
            detail: short(e),
        }
    }

    /// Write `rel` unless it exists (`If-None-Match: *`).
    pub fn put_create(&self, rel: &str, data: Vec<u8>) -> Result<Put> {
        self.put_create_etag(rel, data).map(|etag| match etag {
            Some(_) => Put::Created,
            None => Put::Exists,
        })
    }

    fn created(&self, rel: &str, r: object_store::Result<object_store::PutResult>) -> Result<Put> {
        match r {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Put::Exists),
            Err(e @ object_store::Error::NotImplemented { .. })
            | Err(e @ object_store::Error::NotSupported { .. }) => {
                Err(Error::RemoteUnsafe(short(&e)))
            }
            Err(e) => Err(self.fail("write", rel, &e)),
        }
    }

    /// Write `rel` unless it exists; `Ok(Some(etag))` when written (the ETag a later
    /// `put_if_match` must name), `Ok(None)` when it was there.
    pub fn put_create_etag(&self, rel: &str, data: Vec<u8>) -> Result<Option<String>> {
        let r = self.rt.block_on(self.store.put_opts(
            &self.path(rel),
            PutPayload::from(data),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        ));
        match r {
            Ok(p) => Ok(Some(p.e_tag.unwrap_or_default())),
            other => self.created(rel, other).map(|_| None),
        }
    }

    /// Create-only puts of many objects at once (uploads), in the order given.
    pub fn put_create_many(&self, items: Vec<(String, Vec<u8>)>) -> Vec<Result<Put>> {
        let futs = items.into_iter().map(|(rel, data)| {
            let path = self.path(&rel);
            let store = self.store.clone();
            async move {
                let r = store
                    .put_opts(
                        &path,
                        PutPayload::from(data),
                        PutOptions {
                            mode: PutMode::Create,
                            ..Default::default()
                        },
                    )
                    .await;
                (rel, r)
            }
        });
        let done = self.rt.block_on(futures::future::join_all(futs));
        done.into_iter()
            .map(|(rel, r)| self.created(&rel, r))
            .collect()
    }

    /// Replace `rel` only if its ETag is still `etag` (`If-Match`). `Ok(None)`: it
    /// changed (or is gone) meanwhile; `Ok(Some(new_etag))`: written.
    pub fn put_if_match(&self, rel: &str, data: Vec<u8>, etag: &str) -> Result<Option<String>> {
        let r = self.rt.block_on(self.store.put_opts(
            &self.path(rel),
            PutPayload::from(data),
            PutOptions {
                mode: PutMode::Update(UpdateVersion {
                    e_tag: Some(etag.to_string()),
                    version: None,
                }),
                ..Default::default()
            },
        ));
        match r {
            Ok(p) => Ok(Some(p.e_tag.unwrap_or_default())),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e @ object_store::Error::NotImplemented { .. })
            | Err(e @ object_store::Error::NotSupported { .. }) => {
                Err(Error::RemoteUnsafe(short(&e)))
            }
            Err(e) => Err(self.fail("write", rel, &e)),
        }
    }

    /// Read `rel`; `Ok(None)` if there is no such object.
    pub fn get(&self, rel: &str) -> Result<Option<Got>> {
        let path = self.path(rel);
        let r = self.rt.block_on(async {
            let g = self.store.get(&path).await?;
            let etag = g.meta.e_tag.clone();
            let bytes = g.bytes().await?;
            Ok::<_, object_store::Error>((bytes, etag))
        });
        match r {
            Ok((bytes, etag)) => Ok(Some(Got {
                data: bytes.to_vec(),
                etag,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("read", rel, &e)),
        }
    }

    /// Size and ETag of `rel`; `Ok(None)` if there is no such object.
    pub fn head(&self, rel: &str) -> Result<Option<Meta>> {
        match self.rt.block_on(self.store.head(&self.path(rel))) {
            Ok(m) => Ok(Some(Meta {
                size: m.size,
                etag: m.e_tag,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("look up", rel, &e)),
        }
    }

    /// Delete `rel` (no error if it is gone).
    pub fn delete(&self, rel: &str) -> Result<()> {
        match self.rt.block_on(self.store.delete(&self.path(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("delete", rel, &e)),
        }
    }

    /// Every object under `rel_prefix`: its key relative to the store's prefix, its
    /// size and when it was last written (unix milliseconds, the object store's clock).
    /// Stops at the first error (a listing that skipped a part would make objects look
    /// unused): the caller must not act on what it was shown before the error.
    pub fn list(&self, rel_prefix: &str, visit: &mut dyn FnMut(&str, u64, i64)) -> Result<()> {
        let base = self.path(rel_prefix);
        let strip = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        self.rt.block_on(async {
            let mut s = self.store.list(Some(&base));
            while let Some(item) = s.next().await {
                let m = item.map_err(|e| self.fail("list", rel_prefix, &e))?;
                let key = m.location.as_ref();
                visit(
                    key.strip_prefix(strip.as_str()).unwrap_or(key),
                    m.size,
                    m.last_modified.timestamp_millis(),
                );
            }
            Ok(())
        })
    }

    /// Refuse an object store that accepts conditional writes and ignores them: eight
    /// concurrent create-only puts of one new object must leave exactly one
    /// succeeding, and a put with a wrong `If-Match` must be refused. Such a store
    /// would let two writers publish.
    pub fn check_conditional_writes(&self) -> Result<()> {
        let rel = format!("probe/{}", uuid::Uuid::new_v4());
        let items = (0..PROBE_WRITERS)
            .map(|i| (rel.clone(), format!("probe {i}").into_bytes()))
            .collect();
        let results = self.put_create_many(items);
        let mut created = 0;
        for r in results {
            if r? == Put::Created {
                created += 1;
            }
        }
        let stale = if created >= 1 {
            self.put_if_match(&rel, b"stale".to_vec(), "\"decofs-not-the-etag\"")
        } else {
            Ok(None)
        };
        let cleanup = self.delete(&rel);
        if created != 1 {
            return Err(Error::RemoteUnsafe(format!(
                "{created} of {PROBE_WRITERS} concurrent create-only writes of one object succeeded at {}",
                self.endpoint
            )));
        }
        if stale?.is_some() {
            return Err(Error::RemoteUnsafe(format!(
                "a write whose If-Match named a wrong ETag succeeded at {}",
                self.endpoint
            )));
        }
        cleanup
    }
}
