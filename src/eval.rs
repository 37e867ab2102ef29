//! `mailroom filter eval`: measure the spam filter on labelled mail, the way the design says
//! accuracy is measured (TREC's immediate-feedback online protocol).
//!
//! Messages come from `--ham PATH... --spam PATH...` (files, directories, maildirs, mboxes, as
//! for `mailroom ingest`), shuffled with a seeded PRNG (SplitMix64 + Fisher-Yates: the same
//! order on every machine and every build), or from a TREC index (`--trec-index FILE`: one
//! `ham PATH` or `spam PATH` line per message, paths relative to the index), evaluated in exactly
//! the index's order. A FRESH in-memory model ([`MemoryStore`]) is used: each message is
//! classified (score recorded), then trained on its true label. Nothing touches the store of a
//! running server.
//!
//! Reported: 1-ROCA % over the whole run and after message 1,000, FPR (ham at or above the spam
//! cutoff) and FNR (spam below it: called ham or unsure) at the cutoffs, ham/unsure/spam counts
//! per true class, classify and train speed timed separately. Classify = tokenize (with token
//! texts) + classify with explanation, as the pipeline does; train = the store update with the
//! same features.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use mailroom_config::FilterAlgorithm;
use mailroom_pipeline::sources;
use mailroom_spamfilter::{
    one_minus_roca_percent, rates, roc_points, Algorithm, Classifier, ClassifierConfig, Judged,
    Label, MemoryStore, Tokenizer,
};
use serde::Serialize;

/// Evaluate the spam filter on labelled mail (TREC immediate feedback, fresh in-memory model).
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Ham (wanted mail): message files, directories, maildirs or mboxes.
    #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with = "trec_index",
          required_unless_present_any = ["spam", "trec_index"])]
    pub ham: Vec<PathBuf>,
    /// Spam: message files, directories, maildirs or mboxes.
    #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with = "trec_index",
          required_unless_present_any = ["ham", "trec_index"])]
    pub spam: Vec<PathBuf>,
    /// Seed of the shuffle of --ham/--spam messages (SplitMix64 + Fisher-Yates; the same order
    /// on every machine).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        conflicts_with = "trec_index"
    )]
    pub seed: u64,
    /// TREC index (`full/index` format): `ham PATH` / `spam PATH` lines, paths relative to the
    /// index file; messages are evaluated in exactly this order.
    #[arg(long, value_name = "FILE")]
    pub trec_index: Option<PathBuf>,
    /// Combiner [default: the filter's default, or [filter] algorithm in --config].
    #[arg(long, value_enum)]
    pub algorithm: Option<AlgorithmArg>,
    /// Scores below this are ham [default: the filter's, or [filter] ham_cutoff in --config].
    #[arg(long, value_name = "SCORE")]
    pub ham_cutoff: Option<f64>,
    /// Scores at or above this are spam [default: the filter's, or [filter] spam_cutoff in
    /// --config].
    #[arg(long, value_name = "SCORE")]
    pub spam_cutoff: Option<f64>,
    /// Configuration file: its [filter] algorithm, ham_cutoff, spam_cutoff and explain_tokens
    /// (and smtp.max_message_size for --ham/--spam) are used; command-line options win. The
    /// model in the configured store is never touched.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Evaluate only the first N messages (of the index, or of the shuffled order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Write the ROC curve (log-log FPR vs FNR) to FILE: SVG, or PNG if FILE ends in .png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of the report (no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// `--algorithm` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgorithmArg {
    /// Fisher and logistic regression fused (the filter's default).
    Fusion,
    /// Robinson/Fisher chi-square (bogofilter style).
    Fisher,
    /// Multinomial naive Bayes.
    #[value(alias = "naive_bayes")]
    NaiveBayes,
    /// Online logistic regression.
    Logistic,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Algorithm {
        match a {
            AlgorithmArg::Fusion => Algorithm::Fusion,
            AlgorithmArg::Fisher => Algorithm::Fisher,
            AlgorithmArg::NaiveBayes => Algorithm::NaiveBayes,
            AlgorithmArg::Logistic => Algorithm::Logistic,
        }
    }
}

/// The JSON report (`--json`); the text report shows the same figures.
#[derive(Debug, Serialize)]
struct Report {
    source: String,
    seed: Option<u64>,
    algorithm: &'static str,
    ham_cutoff: f64,
    spam_cutoff: f64,
    messages: usize,
    ham: usize,
    spam: usize,
    /// Messages that could not be read (--ham/--spam only; a bad index is an error).
    skipped: usize,
    one_minus_roca_percent: Option<f64>,
    one_minus_roca_after_1000_percent: Option<f64>,
    /// Ham at or above the spam cutoff / ham.
    fpr: f64,
    fpr_percent: f64,
    /// Spam below the spam cutoff (called ham or unsure) / spam.
    fnr: f64,
    fnr_percent: f64,
    false_positives: usize,
    false_negatives: usize,
    /// Verdicts per true class.
    true_ham: Verdicts,
    true_spam: Verdicts,
    classify_per_sec: f64,
    train_per_sec: f64,
    classify_seconds: f64,
    train_seconds: f64,
    read_seconds: f64,
    total_seconds: f64,
    plot: Option<String>,
}

#[derive(Debug, Serialize)]
struct Verdicts {
    ham: usize,
    unsure: usize,
    spam: usize,
}

/// Runs `mailroom filter eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let show_progress = !args.json && std::io::stdout().is_terminal();

    let mut cfg = ClassifierConfig::default();
    let mut max_size = mailroom_config::Config::default().smtp.max_message_size;
    if let Some(path) = &args.config {
        let config = mailroom_config::Config::load(path)?;
        apply_config(&mut cfg, &config);
        max_size = config.smtp.max_message_size;
    }
    if let Some(a) = args.algorithm {
        cfg.algorithm = a.into();
    }
    if let Some(v) = args.ham_cutoff {
        cfg.ham_cutoff = v;
    }
    if let Some(v) = args.spam_cutoff {
        cfg.spam_cutoff = v;
    }
    let classifier = Classifier::new(cfg).context("filter settings")?;
    let cfg = *classifier.config();
    let tokenizer = Tokenizer::default();

    // Read every message first, so that reading is not timed as classify or train.
    let (source, seed, messages, skipped) = match &args.trec_index {
        Some(index) => {
            let text = std::fs::read_to_string(index)
                .with_context(|| format!("reading {}", index.display()))?;
            let base = index.parent().unwrap_or(Path::new("."));
            let mut entries =
                parse_index(&text, base).with_context(|| format!("{}", index.display()))?;
            if let Some(n) = args.limit {
                entries.truncate(n);
            }
            let bar = progress(show_progress, entries.len() as u64, "reading");
            let mut messages = Vec::with_capacity(entries.len());
            for e in entries {
                let raw = std::fs::read(&e.path).with_context(|| {
                    format!("{} line {}: {}", index.display(), e.line, e.path.display())
                })?;
                messages.push((e.label, raw));
                bar.inc(1);
            }
            bar.finish_and_clear();
            (format!("trec-index {}", index.display()), None, messages, 0)
        }
        None => {
            let max = max_size;
            let total = (sources::count(&args.ham, max) + sources::count(&args.spam, max)) as u64;
            let bar = progress(show_progress, total, "reading");
            let mut messages = Vec::new();
            let mut skipped = 0usize;
            for (label, paths) in [(Label::Ham, &args.ham), (Label::Spam, &args.spam)] {
                for item in sources::read(paths, max) {
                    bar.inc(1);
                    match item {
                        Ok(m) => messages.push((label, m.raw)),
                        Err(e) => {
                            bar.suspend(|| eprintln!("mailroom: skipped: {e}"));
                            skipped += 1;
                        }
                    }
                }
            }
            bar.finish_and_clear();
            shuffle(&mut messages, args.seed);
            if let Some(n) = args.limit {
                messages.truncate(n);
            }
            ("paths".to_owned(), Some(args.seed), messages, skipped)
        }
    };
    if messages.is_empty() {
        bail!("no messages to evaluate");
    }
    let read_time = start.elapsed();

    // Immediate feedback on a fresh in-memory model.
    let mut store = MemoryStore::new();
    let mut judged = Vec::with_capacity(messages.len());
    let (mut t_classify, mut t_train) = (Duration::ZERO, Duration::ZERO);
    let bar = progress(show_progress, messages.len() as u64, "evaluating");
    for (label, raw) in &messages {
        let t = Instant::now();
        let features = tokenizer.tokenize_with_text(raw);
        let verdict = classifier.classify_with(&store, &features, cfg.algorithm)?;
        t_classify += t.elapsed();
        judged.push(Judged {
            label: *label,
            score: verdict.score,
            key: verdict.logit,
        });
        let t = Instant::now();
        classifier.train(&mut store, &features, *label, 0)?;
        t_train += t.elapsed();
        bar.inc(1);
    }
    bar.finish_and_clear();

    let r = rates(&judged, cfg.ham_cutoff, cfg.spam_cutoff);
    let n = judged.len();
    let false_negatives = r.spam_as_ham + r.spam_unsure;
    let report = Report {
        source,
        seed,
        algorithm: algorithm_name(cfg.algorithm),
        ham_cutoff: cfg.ham_cutoff,
        spam_cutoff: cfg.spam_cutoff,
        messages: n,
        ham: r.ham,
        spam: r.spam,
        skipped,
        one_minus_roca_percent: one_minus_roca_percent(&judged),
        one_minus_roca_after_1000_percent: judged.get(1000..).and_then(one_minus_roca_percent),
        fpr: r.false_positives as f64 / r.ham.max(1) as f64,
        fpr_percent: r.fpr_percent,
        fnr: false_negatives as f64 / r.spam.max(1) as f64,
        fnr_percent: r.fnr_percent,
        false_positives: r.false_positives,
        false_negatives,
        true_ham: Verdicts {
            ham: r.ham - r.ham_unsure - r.false_positives,
            unsure: r.ham_unsure,
            spam: r.false_positives,
        },
        true_spam: Verdicts {
            ham: r.spam_as_ham,
            unsure: r.spam_unsure,
            spam: r.spam - false_negatives,
        },
        classify_per_sec: per_sec(n, t_classify),
        train_per_sec: per_sec(n, t_train),
        classify_seconds: t_classify.as_secs_f64(),
        train_seconds: t_train.as_secs_f64(),
        read_seconds: read_time.as_secs_f64(),
        total_seconds: 0.0,
        plot: args.plot.as_ref().map(|p| p.display().to_string()),
    };
    if let Some(path) = &args.plot {
        let title = format!(
            "ROC, {} on {} messages: 1-ROCA {}",
            report.algorithm,
            n,
            pct(report.one_minus_roca_percent)
        );
        plot_roc(path, &judged, &title, &report)
            .with_context(|| format!("writing the plot {}", path.display()))?;
    }
    let report = Report {
        total_seconds: start.elapsed().as_secs_f64(),
        ..report
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn per_sec(n: usize, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64().max(1e-9)
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{v:.4} %"),
        None => "n/a (needs ham and spam)".to_owned(),
    }
}

fn print_report(r: &Report) {
    println!(
        "{} messages ({} ham, {} spam) from {}{}{}",
        r.messages,
        r.ham,
        r.spam,
        r.source,
        r.seed
            .map(|s| format!(", shuffled with seed {s}"))
            .unwrap_or_default(),
        if r.skipped > 0 {
            format!(", {} unreadable skipped", r.skipped)
        } else {
            String::new()
        }
    );
    println!(
        "algorithm {}, cutoffs: ham < {}, spam >= {}; fresh in-memory model, immediate feedback",
        r.algorithm, r.ham_cutoff, r.spam_cutoff
    );
    println!(
        "1-ROCA, whole run:           {}",
        pct(r.one_minus_roca_percent)
    );
    println!(
        "1-ROCA, after message 1,000: {}",
        if r.messages <= 1000 {
            "n/a (1,000 messages or fewer)".to_owned()
        } else {
            pct(r.one_minus_roca_after_1000_percent)
        }
    );
    println!(
        "FPR (ham called spam):       {:.6} = {:.3} % ({} of {} ham)",
        r.fpr, r.fpr_percent, r.false_positives, r.ham
    );
    println!(
        "FNR (spam not called spam):  {:.6} = {:.3} % ({} of {} spam)",
        r.fnr, r.fnr_percent, r.false_negatives, r.spam
    );
    println!(
        "{:>16} {:>10} {:>10} {:>10}",
        "called:", "ham", "unsure", "spam"
    );
    for (name, v) in [("true ham", &r.true_ham), ("true spam", &r.true_spam)] {
        println!("{name:>16} {:>10} {:>10} {:>10}", v.ham, v.unsure, v.spam);
    }
    println!(
        "classify: {:.0} msgs/s ({:.2} s, tokenize + classify); train: {:.0} msgs/s ({:.2} s)",
        r.classify_per_sec, r.classify_seconds, r.train_per_sec, r.train_seconds
    );
    println!(
        "total: {:.2} s (reading {:.2} s)",
        r.total_seconds, r.read_seconds
    );
    if let Some(p) = &r.plot {
        println!("ROC plot: {p}");
    }
}

fn progress(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// The `[filter]` section of a config file (loaded and checked like the server does): its
/// combiner, cutoffs and explanation size replace the filter's defaults.
fn apply_config(cfg: &mut ClassifierConfig, config: &mailroom_config::Config) {
    let f = &config.filter;
    cfg.algorithm = match f.algorithm {
        FilterAlgorithm::Fusion => Algorithm::Fusion,
        FilterAlgorithm::Fisher => Algorithm::Fisher,
        FilterAlgorithm::NaiveBayes => Algorithm::NaiveBayes,
        FilterAlgorithm::Logistic => Algorithm::Logistic,
    };
    cfg.ham_cutoff = f.ham_cutoff;
    cfg.spam_cutoff = f.spam_cutoff;
    cfg.explain_tokens = f.explain_tokens;
}

/// The algorithm's name as the command line and the config file spell it.
fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Fusion => "fusion",
        Algorithm::Fisher => "fisher",
        Algorithm::NaiveBayes => "naive-bayes",
        Algorithm::Logistic => "logistic",
    }
}

/// One message of a TREC index.
#[derive(Debug, Clone, PartialEq)]
struct IndexEntry {
    label: Label,
    /// Joined to the index's directory.
    path: PathBuf,
    /// 1-based line number, for messages.
    line: usize,
}

/// Parses a TREC index (`ham PATH` / `spam PATH`, label case-insensitive, paths relative to
/// `base`). Blank lines are skipped; anything else that is not such a line is an error naming
/// its line number.
fn parse_index(text: &str, base: &Path) -> anyhow::Result<Vec<IndexEntry>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (label, path) = match line.split_once(char::is_whitespace) {
            Some((l, p)) => (l, p.trim()),
            None => (line, ""),
        };
        let label = match label.to_ascii_lowercase().as_str() {
            "ham" => Label::Ham,
            "spam" => Label::Spam,
            _ => bail!("line {n}: expected `ham PATH` or `spam PATH`, got {line:?}"),
        };
        if path.is_empty() {
            bail!("line {n}: no path after {label:?}");
        }
        out.push(IndexEntry {
            label,
            path: base.join(path),
            line: n,
        });
    }
    if out.is_empty() {
        bail!("no `ham PATH` or `spam PATH` line");
    }
    Ok(out)
}

/// SplitMix64 (Steele, Lea, Flood 2014; the constants of Vigna's reference code): a tiny PRNG
/// whose output depends on nothing but the seed, so the shuffle is the same on every machine
/// and with every dependency version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `0..n` (multiply-shift; bias below 2^-40 for our sizes).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Fisher-Yates shuffle driven by [`SplitMix64`] seeded with `seed`.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// Writes the ROC curve: FPR (ham misclassified) against FNR (spam missed), both in percent on
/// log scales (the lower left is better), with the operating point at the cutoffs. SVG from
/// plotters (its text is plain SVG `<text>`, no font library needed); for `.png`, that SVG is
/// rasterized with resvg using the system's font files if there are any.
fn plot_roc(path: &Path, judged: &[Judged], title: &str, r: &Report) -> anyhow::Result<()> {
    let svg = roc_svg(judged, title, r)?;
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if png {
        svg_to_png(&svg, path)
    } else {
        std::fs::write(path, svg)?;
        Ok(())
    }
}

fn roc_svg(judged: &[Judged], title: &str, r: &Report) -> anyhow::Result<String> {
    use plotters::prelude::*;

    // Percent; zero rates are drawn on the floor of the axes.
    const FLOOR: f64 = 0.01;
    let points: Vec<(f64, f64)> = roc_points(judged)
        .iter()
        .map(|p| {
            (
                (p.fpr * 100.0).max(FLOOR),
                ((1.0 - p.tpr) * 100.0).max(FLOOR),
            )
        })
        .collect();
    let at_cutoff = (r.fpr_percent.max(FLOOR), r.fnr_percent.max(FLOOR));
    let label = |v: &f64| {
        if *v >= 1.0 {
            format!("{v:.0}")
        } else {
            let s = format!("{v:.4}");
            s.trim_end_matches('0').to_owned()
        }
    };
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing the plot: {e}");

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d((FLOOR..100.0).log_scale(), (FLOOR..100.0).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("ham called spam (FPR), %, log scale (0 is drawn on the axis)")
            .y_desc("spam not called spam (FNR), %, log scale")
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{} (immediate feedback)", r.algorithm))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(std::iter::once(Circle::new(at_cutoff, 6, RED.filled())))
            .map_err(|e| err(&e))?
            .label(format!(
                "at spam cutoff {}: FPR {:.3} %, FNR {:.2} %",
                r.spam_cutoff, r.fpr_percent, r.fnr_percent
            ))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

fn svg_to_png(svg: &str, path: &Path) -> anyhow::Result<()> {
    use resvg::{tiny_skia, usvg};

    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    if db.is_empty() {
        eprintln!("mailroom: no font files found: the PNG has no text (an .svg plot has)");
    }
    let preferred = [
        "DejaVu Sans",
        "Liberation Sans",
        "Noto Sans",
        "Arial",
        "Lato",
    ];
    if let Some(family) = preferred.iter().find(|f| {
        db.faces()
            .any(|face| face.families.iter().any(|(n, _)| n == *f))
    }) {
        db.set_sans_serif_family(*family);
    }
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| anyhow!("rendering the SVG: {e}"))?;
    let scale = 2.0;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .ok_or_else(|| anyhow!("bad size"))?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow!("cannot allocate {}x{} pixels", size.width(), size.height()))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.save_png(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_parses_in_order_relative_to_its_directory() {
        let text = "spam spam/a\nham ham/b c\n\n  HAM   ham/d  \n";
        let v = parse_index(text, Path::new("/corpus")).expect("valid index");
        let got: Vec<_> = v
            .iter()
            .map(|e| (e.label, e.path.clone(), e.line))
            .collect();
        assert_eq!(
            got,
            vec![
                (Label::Spam, PathBuf::from("/corpus/spam/a"), 1),
                (Label::Ham, PathBuf::from("/corpus/ham/b c"), 2),
                (Label::Ham, PathBuf::from("/corpus/ham/d"), 4),
            ]
        );
    }

    #[test]
    fn index_errors_name_the_line() {
        let e = parse_index("ham a\nspam b\nmaybe c\n", Path::new(".")).expect_err("bad label");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse_index("ham a\n\nspam\n", Path::new(".")).expect_err("no path");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse_index("\n \n", Path::new(".")).expect_err("empty");
        assert!(e.to_string().contains("no `ham PATH`"), "{e}");
    }

    #[test]
    fn shuffle_is_deterministic_and_a_permutation() {
        let mut a: Vec<u32> = (0..10).collect();
        shuffle(&mut a, 1);
        // Golden: SplitMix64(1) + Fisher-Yates from the top; must never change, or published
        // figures for --seed N stop being reproducible.
        // (Checked against an independent Python implementation.)
        assert_eq!(a, vec![9, 0, 1, 4, 8, 2, 3, 7, 6, 5]);
        let mut b: Vec<u32> = (0..10).collect();
        shuffle(&mut b, 1);
        assert_eq!(a, b);
        let mut c: Vec<u32> = (0..10).collect();
        shuffle(&mut c, 2);
        assert_ne!(a, c);
        c.sort_unstable();
        assert_eq!(c, (0..10).collect::<Vec<_>>());
        // SplitMix64's published first output for seed 0.
        assert_eq!(SplitMix64(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn algorithm_names_map() {
        assert_eq!(
            Algorithm::from(AlgorithmArg::NaiveBayes).name(),
            "naive_bayes"
        );
        assert_eq!(Algorithm::from(AlgorithmArg::Fusion), Algorithm::default());
    }
}
