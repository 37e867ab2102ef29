//! `mailroom filter ...` and `mailroom quarantine ...`: train, untrain, classify, stats, expire,
//! export and import the spam filter's model; look at the quarantine. Every command works with
//! or without a running server (see `control`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use mailroom_config::Config;
use mailroom_pipeline::sources;
use mailroom_spamfilter::Label;
use mailroom_store::{Classification, FilterStats, MessageView, TrainOutcome};
use serde_json::Value;

use crate::control::{self, Request};
use crate::output::{self, progress};

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// One connection for many requests: the running server's, or a store opened here.
enum Session {
    Remote(std::os::unix::net::UnixStream),
    Local(mailroom_store::Store, Box<mailroom_pipeline::Settings>),
}

impl Session {
    /// Training does not load the starter model: a model trained by hand is the operator's own.
    fn open(config: &Config) -> anyhow::Result<Session> {
        if let Some(stream) = control::connect(config) {
            return Ok(Session::Remote(stream));
        }
        let store = control::open_store(config)?;
        Ok(Session::Local(
            store,
            Box::new(crate::serve::settings(config)?),
        ))
    }

    fn call(&mut self, request: Request) -> anyhow::Result<Value> {
        match self {
            Session::Remote(stream) => control::call_remote(stream, &request),
            Session::Local(store, settings) => {
                control::handle(store, settings, request).map_err(|e| anyhow::anyhow!(e))
            }
        }
    }
}

/// Counts of a training run.
#[derive(Debug, Default, serde::Serialize)]
struct TrainReport {
    learned: usize,
    already_learned: usize,
    relabeled: usize,
    untrained: usize,
    not_learned: usize,
    unreadable: usize,
}

fn each_message(
    paths: &[PathBuf],
    max: usize,
    report: &mut TrainReport,
    bar: &indicatif::ProgressBar,
    mut f: impl FnMut(Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for item in sources::read(paths, max) {
        bar.inc(1);
        match item {
            Ok(msg) => f(msg.raw).with_context(|| format!("training on {}", msg.origin))?,
            Err(e) => {
                bar.suspend(|| eprintln!("mailroom: skipped: {e}"));
                report.unreadable += 1;
            }
        }
    }
    Ok(())
}

/// Read a TREC-style index: `ham PATH` / `spam PATH` per line, paths relative to the index.
pub fn read_index(index: &Path) -> anyhow::Result<Vec<(Label, PathBuf)>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let base = index.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (label, path) = line.split_once(char::is_whitespace).with_context(|| {
            format!(
                "{}:{}: expected `ham PATH` or `spam PATH`",
                index.display(),
                n + 1
            )
        })?;
        let label = match label.to_ascii_lowercase().as_str() {
            "ham" => Label::Ham,
            "spam" => Label::Spam,
            other => bail!(
                "{}:{}: label must be ham or spam (got {other:?})",
                index.display(),
                n + 1
            ),
        };
        out.push((label, base.join(path.trim())));
    }
    Ok(out)
}

/// `filter train --ham PATH... --spam PATH... [--index FILE]`.
pub fn train(
    config: &Config,
    ham: &[PathBuf],
    spam: &[PathBuf],
    index: Option<&Path>,
    json_out: bool,
) -> anyhow::Result<()> {
    if ham.is_empty() && spam.is_empty() && index.is_none() {
        bail!("nothing to train on: give --ham, --spam or --index");
    }
    let max = config.smtp.max_message_size;
    let indexed = match index {
        Some(index) => read_index(index)?,
        None => Vec::new(),
    };
    let total = (sources::count(ham, max) + sources::count(spam, max) + indexed.len()) as u64;
    let bar = progress(total, "training", json_out);
    let mut session = Session::open(config)?;
    let mut report = TrainReport::default();
    let mut batch = Batch::default();
    for (label, path) in &indexed {
        bar.inc(1);
        let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if raw.len() > max {
            bar.suspend(|| eprintln!("mailroom: skipped: {} is too large", path.display()));
            report.unreadable += 1;
            continue;
        }
        batch.push(&mut session, &mut report, &raw, *label)?;
    }
    for (paths, label) in [(ham, Label::Ham), (spam, Label::Spam)] {
        for item in sources::read(paths, max) {
            bar.inc(1);
            match item {
                Ok(msg) => batch
                    .push(&mut session, &mut report, &msg.raw, label)
                    .with_context(|| format!("training on {}", msg.origin))?,
                Err(e) => {
                    bar.suspend(|| eprintln!("mailroom: skipped: {e}"));
                    report.unreadable += 1;
                }
            }
        }
    }
    batch.send(&mut session, &mut report)?;
    bar.finish_and_clear();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "learned {}, already learned {}, relabeled {}, unreadable {}",
            report.learned, report.already_learned, report.relabeled, report.unreadable
        );
    }
    Ok(())
}

/// Messages waiting to be trained together (one flush for the lot), bounded by count and bytes.
#[derive(Default)]
struct Batch {
    items: Vec<(String, Label)>,
    bytes: usize,
}

impl Batch {
    const MAX_MESSAGES: usize = 256;
    const MAX_BYTES: usize = 8 * 1024 * 1024;

    fn push(
        &mut self,
        session: &mut Session,
        report: &mut TrainReport,
        raw: &[u8],
        label: Label,
    ) -> anyhow::Result<()> {
        self.bytes += raw.len();
        self.items.push((b64(raw), label));
        if self.items.len() >= Self::MAX_MESSAGES || self.bytes >= Self::MAX_BYTES {
            self.send(session, report)?;
        }
        Ok(())
    }

    fn send(&mut self, session: &mut Session, report: &mut TrainReport) -> anyhow::Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let v = session.call(Request::FilterTrainBatch {
            items: std::mem::take(&mut self.items),
        })?;
        for o in serde_json::from_value::<Vec<TrainOutcome>>(v)? {
            match o {
                TrainOutcome::Learned => report.learned += 1,
                TrainOutcome::AlreadyLearned => report.already_learned += 1,
                TrainOutcome::Relabeled => report.relabeled += 1,
            }
        }
        Ok(())
    }
}

/// `filter untrain PATH...`.
pub fn untrain(config: &Config, paths: &[PathBuf], json_out: bool) -> anyhow::Result<()> {
    let max = config.smtp.max_message_size;
    let bar = progress(sources::count(paths, max) as u64, "untraining", json_out);
    let mut session = Session::open(config)?;
    let mut report = TrainReport::default();
    let mut results = Vec::new();
    each_message(paths, max, &mut report, &bar, |raw| {
        let v = session.call(Request::FilterUntrain { raw_b64: b64(&raw) })?;
        results.push(v["untrained"].as_bool().unwrap_or(false));
        Ok(())
    })?;
    for done in results {
        if done {
            report.untrained += 1;
        } else {
            report.not_learned += 1;
        }
    }
    bar.finish_and_clear();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "untrained {}, not learned before {}, unreadable {}",
            report.untrained, report.not_learned, report.unreadable
        );
    }
    Ok(())
}

/// `filter classify FILE`.
pub fn classify(config: &Config, file: &Path, json_out: bool) -> anyhow::Result<()> {
    let raw = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if raw.len() > config.smtp.max_message_size {
        bail!(
            "{} is larger than smtp.max_message_size ({} bytes)",
            file.display(),
            config.smtp.max_message_size
        );
    }
    let v = control::call_with(config, Request::FilterClassify { raw_b64: b64(&raw) }, true)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let c: Classification = serde_json::from_value(v)?;
    print_classification(&c);
    Ok(())
}

/// Print a verdict and its explanation for people.
pub fn print_classification(c: &Classification) {
    println!(
        "verdict: {:?} (score {:.4}, {})",
        c.verdict, c.score, c.algorithm
    );
    if !c.clues.is_empty() {
        println!("deciding tokens:");
        println!("  {:>6}  {:>6}  {:>6}  TOKEN", "P(SPAM)", "HAM", "SPAM");
        for clue in &c.clues {
            println!(
                "  {:>7.4}  {:>6}  {:>6}  {}",
                clue.probability,
                clue.ham,
                clue.spam,
                clue.token.as_deref().unwrap_or("(hashed)")
            );
        }
    }
}

/// `filter stats`.
pub fn stats(config: &Config, json_out: bool) -> anyhow::Result<()> {
    let v = control::call(config, Request::FilterStats)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s: FilterStats = serde_json::from_value(v)?;
    println!("ham messages learned:  {}", s.ham_messages);
    println!("spam messages learned: {}", s.spam_messages);
    println!("tokens:                {}", s.tokens);
    println!("learned records:       {}", s.learned_records);
    println!("bytes on disk:         {}", s.bytes_on_disk);
    Ok(())
}

/// `filter expire`.
pub fn expire(config: &Config, days: Option<u32>, max_count: u32) -> anyhow::Result<()> {
    let days = days.unwrap_or(config.filter.expire_days);
    // Not seen in the last `days` days, today counting as one: `--days 0` takes every rare
    // token, however recent (used to prune the starter model).
    let before_day = (control::today() + 1).saturating_sub(days);
    let v = control::call(
        config,
        Request::FilterExpire {
            before_day,
            max_count,
        },
    )?;
    println!(
        "removed {} token(s) seen in at most {max_count} message(s) and not for {days} day(s)",
        v["removed"]
    );
    Ok(())
}

/// `filter export FILE`.
pub fn export(config: &Config, file: &Path) -> anyhow::Result<()> {
    let v = control::call(config, Request::FilterExport)?;
    let model = base64::engine::general_purpose::STANDARD
        .decode(v["model_b64"].as_str().context("no model in the answer")?)?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, &model).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "exported {} token(s), {} bytes, to {}",
        v["tokens"],
        model.len(),
        file.display()
    );
    Ok(())
}

/// `filter import FILE`.
pub fn import(config: &Config, file: &Path) -> anyhow::Result<()> {
    let model = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let v = control::call(
        config,
        Request::FilterImport {
            model_b64: b64(&model),
        },
    )?;
    println!("imported {} token(s) from {}", v["tokens"], file.display());
    Ok(())
}

/// `quarantine list`.
pub fn quarantine_list(config: &Config, json_out: bool) -> anyhow::Result<()> {
    let v = control::call(config, Request::QuarantineList)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list: Vec<MessageView> = serde_json::from_value(v)?;
    if list.is_empty() {
        println!("the quarantine is empty");
        return Ok(());
    }
    println!(
        "{:>6}  {:>6}  {:<20}  {:<30}  SUBJECT",
        "ID", "SCORE", "RECEIVED", "FROM"
    );
    for m in list {
        println!(
            "{:>6}  {:>6}  {:<20}  {:<30}  {}",
            m.id,
            m.classification
                .as_ref()
                .map(|c| format!("{:.3}", c.score))
                .unwrap_or_else(|| "-".into()),
            output::timestamp(m.received_at),
            m.from,
            m.subject
        );
    }
    Ok(())
}

/// `quarantine show ID`.
pub fn quarantine_show(config: &Config, id: u64, json_out: bool) -> anyhow::Result<()> {
    let v = control::call(config, Request::QuarantineShow { id })?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let m: MessageView = serde_json::from_value(v)?;
    output::print_message(&m);
    Ok(())
}
