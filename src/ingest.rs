//! `mailroom ingest PATH...`: messages from files through the same spool and pipeline as SMTP.

use std::path::PathBuf;

use anyhow::{bail, Context};

use base64::Engine;
use mailroom_config::Config;
use mailroom_pipeline::sources;

use crate::control::{self, Request};

/// Read every message under `paths`; hand them to the running server, or spool and process them
/// here when none runs.
pub fn ingest(config: &Config, paths: &[PathBuf]) -> anyhow::Result<()> {
    let max = config.smtp.max_message_size;
    let total = sources::count(paths, max) as u64;
    let mut unreadable = 0usize;
    let mut spooled = 0usize;
    let bar = crate::output::progress(total, "spooling", false);

    if let Some(mut stream) = control::connect(config) {
        for item in sources::read(paths, max) {
            bar.inc(1);
            let msg = match item {
                Ok(m) => m,
                Err(e) => {
                    bar.suspend(|| eprintln!("mailroom: skipped: {e}"));
                    unreadable += 1;
                    continue;
                }
            };
            let origin = msg.origin.clone();
            control::call_remote(
                &mut stream,
                &Request::Ingest {
                    origin: msg.origin,
                    raw_b64: base64::engine::general_purpose::STANDARD.encode(&msg.raw),
                },
            )
            .with_context(|| format!("handing {origin} to the running server"))?;
            spooled += 1;
        }
        bar.finish_and_clear();
        println!("spooled {spooled} message(s); the running server is processing them");
    } else {
        let store = control::open_store(config)?;
        for item in sources::read(paths, max) {
            bar.inc(1);
            match item {
                Ok(msg) => {
                    store.spool_append_blocking(control::file_envelope(&msg.origin), msg.raw)?;
                    spooled += 1;
                }
                Err(e) => {
                    bar.suspend(|| eprintln!("mailroom: skipped: {e}"));
                    unreadable += 1;
                }
            }
        }
        bar.finish_and_clear();
        let pending = store.spool_len() as u64;
        let bar = crate::output::progress(pending, "processing", false);
        let settings = crate::serve::settings(config)?;
        crate::serve::load_starter_model(config, &store)?;
        let report = mailroom_pipeline::drain(&store, &settings, |_| bar.inc(1))?;
        bar.finish_and_clear();
        store.flush()?;
        println!("spooled {spooled} message(s); {report}");
    }
    if unreadable > 0 {
        bail!("{unreadable} input(s) could not be read (see above)");
    }
    Ok(())
}
