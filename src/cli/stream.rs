//! `decofs send` and `decofs receive`: a snapshot as a stream, whole or as the
//! difference from an earlier one, and a store that makes it exist.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use decofs::control::{self, protocol};
use decofs::jsonpath::WirePath;
use decofs::store::{OpenOptions, Store};

use super::output::{self, invalid, outln, Context, Outcome};

/// `decofs send STORE NAME [--from BASE] [-o FILE]`.
pub fn send(
    store: PathBuf,
    name: String,
    from: Option<String>,
    out: Option<PathBuf>,
    json: bool,
) -> Outcome {
    let what = format!("cannot send snapshot {name}");
    let (store_path, _) = control::resolve(&store).or_fail(&what)?;
    if out.is_none() && std::io::stdout().is_terminal() {
        return Err(invalid(
            &what,
            "the stream is binary and stdout is a terminal".into(),
            "write it to a file with -o FILE, or pipe it: decofs send STORE NAME | decofs receive OTHER",
        ));
    }
    // A read-only open reads snapshots beside a running mount.
    let s = Store::open(
        &store_path,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .or_fail(&what)?;
    let streams = s.streams();
    let sent = match &out {
        Some(p) => {
            let f = std::fs::File::create(p)
                .map_err(|e| decofs::store::Error::io(format!("create {}", p.display()), e))
                .or_fail(&what)?;
            let mut w = std::io::BufWriter::new(f);
            let sent = streams
                .send(&name, from.as_deref(), &mut w)
                .or_fail(&what)?;
            let f = w
                .into_inner()
                .map_err(|e| decofs::store::Error::io("write the stream", e.into_error()))
                .or_fail(&what)?;
            f.sync_all()
                .map_err(|e| decofs::store::Error::io("sync the stream", e))
                .or_fail(&what)?;
            sent
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let sent = streams
                .send(&name, from.as_deref(), &mut w)
                .or_fail(&what)?;
            w.flush()
                .map_err(|e| decofs::store::Error::io("write the stream", e))
                .or_fail(&what)?;
            sent
        }
    };
    let summary = json!({
        "snapshot": name, "from": from, "bytes": sent.bytes, "records": sent.records,
        "entries": sent.entries, "blobs": sent.blobs, "blob_bytes": sent.blob_bytes,
        "drops": sent.drops,
    });
    let line =
        if json {
            output::json_line(&summary)
        } else {
            format!(
            "sent {name}{}: {} bytes ({} records, {} entries, {} blobs of {} bytes, {} removals)",
            from.as_ref().map(|f| format!(" from {f}")).unwrap_or_default(),
            sent.bytes,
            sent.records,
            sent.entries,
            sent.blobs,
            sent.blob_bytes,
            sent.drops
        )
        };
    // The stream may be on stdout: the summary goes to stderr then.
    if out.is_some() {
        outln!("{line}");
    } else {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `decofs receive STORE|MOUNT [-i FILE]`: on a mount the daemon applies it (standard
/// input is spooled to a file in the store's staging first).
pub fn receive(store: PathBuf, input: Option<PathBuf>, json: bool) -> Outcome {
    let what = format!("cannot receive into {}", store.display());
    let (store_path, _, _) = control::locate(&store).or_fail(&what)?;
    let spool = match &input {
        Some(_) => None,
        None => {
            let p = decofs::store::layout::Layout::new(&store_path)
                .sessions()
                .join(format!("receive.{}.in.tmp", std::process::id()));
            let copied = std::fs::File::create(&p).and_then(|mut f| {
                std::io::copy(&mut std::io::stdin().lock(), &mut f)?;
                f.sync_all()
            });
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&p);
                return Err(decofs::store::Error::io(
                    "read the stream from standard input",
                    e,
                ))
                .or_fail(&what);
            }
            Some(p)
        }
    };
    let path = input.clone().or_else(|| spool.clone()).unwrap();
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let got = control::run(
        &store_path,
        protocol::Receive {
            input: WirePath::new(path),
        },
        true,
    );
    if let Some(p) = &spool {
        let _ = std::fs::remove_file(p);
    }
    let got = got.or_fail(&what)?;
    if json {
        output::json(&got);
    } else {
        outln!(
            "received {}{}: {} records, {} entries, {} blobs, {} removals",
            got.snapshot,
            got.base
                .as_ref()
                .map(|b| format!(" on {b}"))
                .unwrap_or_default(),
            got.records,
            got.entries,
            got.blobs,
            got.drops
        );
    }
    Ok(ExitCode::SUCCESS)
}
