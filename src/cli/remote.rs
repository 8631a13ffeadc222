//! `decofs remote`, and `init --remote`: binding a store to an object store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use decofs::control::{self, protocol};
use decofs::store::remote::{self, Binding, RemoteUrl};

use super::output::{self, outln, Context, Outcome};

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Bind a store that is not mounted to an object store (s3://BUCKET/PREFIX): its
    /// blobs are uploaded in the background from then on, and the local copies become
    /// a bounded cache (-o cache_size). The object store must enforce conditional
    /// writes (checked: remote_unsafe otherwise); the prefix must be empty or this
    /// store's (remote_conflict otherwise). Credentials come from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY of whoever mounts the store; they are never written down.
    Add {
        store: PathBuf,
        url: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum UnpublishedCmd {
    /// Copy what changed on a mount since its store's last publish into DIR, for a
    /// person to reconcile (a writer another host took over keeps these changes
    /// locally): created and modified files, symlinks and directories at their paths,
    /// and DIR/.decofs-unpublished listing every change (deletions and renames too).
    Export { mount: PathBuf, dir: PathBuf },
}

pub fn unpublished(cmd: UnpublishedCmd, json: bool) -> Outcome {
    let UnpublishedCmd::Export { mount, dir } = cmd;
    let what = format!(
        "cannot export the unpublished changes of {}",
        mount.display()
    );
    let (store, mnt, _) = control::locate(&mount).or_fail(&what)?;
    let Some(mnt) = mnt else {
        return Err(output::invalid(
            &what,
            "the store is not mounted".into(),
            &format!(
                "mount it (read-only, not following, is enough: decofs mount {} MNT -o ro,follow_interval=0) and export from the mount",
                store.display()
            ),
        ));
    };
    let layout = decofs::store::layout::Layout::new(&store);
    let (seq, snap) = remote::publish::last_published(&layout)
        .or_fail(&what)?
        .ok_or_else(|| {
            output::invalid(
                &what,
                "nothing was published from this store".into(),
                "every file is unpublished: copy the mount itself",
            )
        })?;
    let v = control::run(
        &store,
        protocol::SnapshotDiff {
            old: snap,
            new: None,
        },
        false,
    )
    .or_fail(&what)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| decofs::store::Error::io(format!("create {}", dir.display()), e))
        .or_fail(&what)?;
    let mut listing = String::new();
    let mut copied = 0u64;
    for c in &v.changes {
        let rel = c.path.0.strip_prefix("/").unwrap_or(&c.path.0);
        listing += &match &c.from {
            Some(f) => format!("{} {} <- {}\n", c.change, rel.display(), f.0.display()),
            None => format!("{} {}\n", c.change, rel.display()),
        };
        if c.change == "deleted" {
            continue;
        }
        copy_into(&mnt.join(rel), &dir.join(rel))
            .map_err(|e| decofs::store::Error::io(format!("copy {}", rel.display()), e))
            .or_fail(&what)?;
        copied += 1;
    }
    std::fs::write(dir.join(".decofs-unpublished"), &listing)
        .map_err(|e| decofs::store::Error::io("write the listing", e))
        .or_fail(&what)?;
    if json {
        output::json(&json!({"since_publish": seq, "changes": v.changes.len(), "copied": copied}));
    } else {
        outln!(
            "{} change(s) since publish {seq}; {copied} path(s) copied into {} (listed in .decofs-unpublished)",
            v.changes.len(),
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Copy one changed path: a file's bytes and mode, a symlink, a directory (made, not
/// walked: its changed children are changes of their own).
fn copy_into(from: &Path, to: &Path) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(from)?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if md.file_type().is_symlink() {
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if md.is_dir() {
        std::fs::create_dir_all(to)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// How to reach the object store; what is left out comes from the AWS_* variables.
#[derive(Args, Clone, Debug, Default)]
pub struct Conn {
    /// The S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The region (default: AWS_REGION).
    #[arg(long)]
    pub region: Option<String>,
    /// Allow a plain-http endpoint (default: AWS_ALLOW_HTTP=true).
    #[arg(long)]
    pub allow_http: bool,
}

impl Conn {
    pub fn binding(&self, url: &str) -> decofs::store::Result<Binding> {
        Ok(Binding {
            url: RemoteUrl::parse(url)?,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http.then_some(true),
        })
    }
}

pub fn run(cmd: RemoteCmd, json: bool) -> Outcome {
    match cmd {
        RemoteCmd::Add { store, url, conn } => add(&store, &url, &conn, json, true),
    }
}

/// `decofs publish`: the store's state to its object store now (through the daemon
/// when mounted).
pub fn publish(target: &Path, json: bool) -> Outcome {
    let what = format!("cannot publish {}", target.display());
    let (store, _, _) = control::locate(target).or_fail(&what)?;
    let r = control::run(&store, protocol::Publish {}, true).or_fail(&what)?;
    if json {
        output::json(&r);
    } else if r.published {
        outln!(
            "published {} ({} bytes of metadata: {} records, {} entries, {} removals; {} blobs named, {} uploaded now)",
            r.seq,
            r.stream_bytes,
            r.records,
            r.entries,
            r.drops,
            r.blobs_named,
            r.blobs_uploaded_now
        );
    } else {
        outln!("nothing changed since publish {}", r.seq);
    }
    Ok(ExitCode::SUCCESS)
}

/// `decofs clone URL STORE`: a new store from the published state.
pub fn clone(url: &str, store: &Path, conn: &Conn, json: bool) -> Outcome {
    let what = format!("cannot clone {url} into {}", store.display());
    let binding = conn.binding(url).or_fail(&what)?;
    let r = remote::publish::clone_store(&binding, store).or_fail(&what)?;
    if json {
        output::json(&r);
    } else {
        outln!(
            "cloned store {} at publish {} into {} ({} stream(s), {} bytes, {} records); blobs are fetched when read",
            r.store_id,
            r.seq,
            store.display(),
            r.streams,
            r.stream_bytes,
            r.records
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Before `init --remote` makes a store: is the URL good and the object store safe?
pub fn check(store: &Path, url: &str, conn: &Conn) -> Outcome {
    let what = format!(
        "cannot create a store at {} bound to {url}",
        store.display()
    );
    let binding = conn.binding(url).or_fail(&what)?;
    remote::Remote::connect(&binding)
        .and_then(|r| r.check_conditional_writes())
        .or_fail(&what)?;
    Ok(ExitCode::SUCCESS)
}

/// Bind `store` and say what was queued.
pub fn add(store: &Path, url: &str, conn: &Conn, json: bool, say: bool) -> Outcome {
    let what = format!("cannot bind {} to {url}", store.display());
    let binding = conn.binding(url).or_fail(&what)?;
    let queued = remote::bind(store, &binding).or_fail(&what)?;
    if say && json {
        output::json(
            &json!({"store": store, "remote": binding.url.to_string(), "queued_blobs": queued}),
        );
    } else if say {
        outln!(
            "bound {} to {} ({queued} blob(s) queued for upload; a mount uploads them)",
            store.display(),
            binding.url
        );
    }
    Ok(ExitCode::SUCCESS)
}
