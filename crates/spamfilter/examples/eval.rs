//! Runs TREC's immediate-feedback protocol over a TREC-style index (`ham PATH` / `spam PATH`,
//! paths relative to the index) and prints, for each classifier variant, 1-ROCA % over the
//! whole run and from message 1,001 on, FPR and FNR at the cutoffs, and messages/s for
//! classify (tokenize with texts + classify with explanation) and train (tokenize + train).
//!
//! ```text
//! cargo run -p mailroom-spamfilter --release --example eval -- INDEX [--fast] [--set KEY=VALUE]...
//! ```
//! `--fast` scores all variants from one read (no per-variant timing). Keys: ham_cutoff,
//! spam_cutoff, fisher.s, fisher.x, fisher.min_dev, fisher.max_tokens, nb.alpha,
//! nb.logit_scale, lr.rate, fusion.fisher_weight, fusion.logistic_weight, fusion.fisher_clamp,
//! tok.max_tokens, tok.osb_window, tok.max_word_len, tok.max_header_words.

use std::path::Path;
use std::time::{Duration, Instant};

use mailroom_spamfilter::{
    one_minus_roca_percent, rates, Algorithm, Classifier, ClassifierConfig, Judged, Label,
    MemoryStore, Tokenizer, TokenizerConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let index = args
        .next()
        .ok_or("usage: eval INDEX [--fast] [--set KEY=VALUE]...")?;
    let mut cfg = ClassifierConfig::default();
    let mut tcfg = TokenizerConfig::default();
    let mut fast = false;
    let mut show_fp = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--fast" => fast = true,
            "--show-fp" => show_fp = true,
            "--set" => {
                let kv = args.next().ok_or("--set needs KEY=VALUE")?;
                let (k, v) = kv.split_once('=').ok_or("--set needs KEY=VALUE")?;
                let f: f64 = v.parse()?;
                match k {
                    "ham_cutoff" => cfg.ham_cutoff = f,
                    "spam_cutoff" => cfg.spam_cutoff = f,
                    "fisher.s" => cfg.fisher.s = f,
                    "fisher.x" => cfg.fisher.x = f,
                    "fisher.min_dev" => cfg.fisher.min_dev = f,
                    "fisher.max_tokens" => cfg.fisher.max_tokens = f as usize,
                    "nb.alpha" => cfg.naive_bayes.alpha = f,
                    "nb.logit_scale" => cfg.naive_bayes.logit_scale = f,
                    "lr.rate" => cfg.logistic.rate = f,
                    "fusion.fisher_weight" => cfg.fusion.fisher_weight = f,
                    "fusion.logistic_weight" => cfg.fusion.logistic_weight = f,
                    "fusion.fisher_clamp" => cfg.fusion.fisher_clamp = f,
                    "warmup" => cfg.warmup_messages = f as u64,
                    "tok.max_tokens" => tcfg.max_tokens = f as usize,
                    "tok.osb_window" => tcfg.osb_window = f as usize,
                    "tok.max_word_len" => tcfg.max_word_len = f as usize,
                    "tok.max_header_words" => tcfg.max_header_words = f as usize,
                    _ => return Err(format!("unknown key {k}").into()),
                }
            }
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let classifier = Classifier::new(cfg)?;
    let tokenizer = Tokenizer::new(tcfg);

    let base = Path::new(&index).parent().unwrap_or(Path::new("."));
    let mut msgs: Vec<(Label, Vec<u8>)> = Vec::new();
    let mut paths: Vec<String> = Vec::new();
    for line in std::fs::read_to_string(&index)?.lines() {
        let Some((l, p)) = line.trim().split_once(' ') else {
            continue;
        };
        let label = match l.to_ascii_lowercase().as_str() {
            "ham" => Label::Ham,
            "spam" => Label::Spam,
            _ => continue,
        };
        msgs.push((label, std::fs::read(base.join(p.trim()))?));
        paths.push(p.trim().to_owned());
    }
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    eprintln!("{} messages, {:.1} MB", msgs.len(), bytes as f64 / 1e6);

    let mut store = MemoryStore::new();
    let mut judged: Vec<Vec<Judged>> = (0..4).map(|_| Vec::with_capacity(msgs.len())).collect();
    let mut t_tok_text = Duration::ZERO;
    let mut t_classify = [Duration::ZERO; 4];
    let mut t_train = Duration::ZERO;
    let mut emitted = 0usize;
    let mut distinct = 0usize;
    for (label, raw) in &msgs {
        if fast {
            let t = Instant::now();
            let f = tokenizer.tokenize(raw);
            let s = classifier.score_all(&store, &f)?;
            t_tok_text += t.elapsed();
            for (i, a) in Algorithm::ALL.iter().enumerate() {
                let (score, key) = s.get(*a);
                judged[i].push(Judged {
                    label: *label,
                    score,
                    key,
                });
            }
            let t = Instant::now();
            classifier.train(&mut store, &f, *label, 0)?;
            t_train += t.elapsed();
            emitted += f.emitted();
            distinct += f.len();
            continue;
        }
        let t = Instant::now();
        let ft = tokenizer.tokenize_with_text(raw);
        t_tok_text += t.elapsed();
        for (i, a) in Algorithm::ALL.iter().enumerate() {
            let t = Instant::now();
            let v = classifier.classify_with(&store, &ft, *a)?;
            t_classify[i] += t.elapsed();
            judged[i].push(Judged {
                label: *label,
                score: v.score,
                key: v.logit,
            });
        }
        let t = Instant::now();
        let f = tokenizer.tokenize(raw);
        classifier.train(&mut store, &f, *label, 0)?;
        t_train += t.elapsed();
        emitted += f.emitted();
        distinct += f.len();
    }
    let n = msgs.len() as f64;
    let c = classifier.config();
    println!(
        "{}: {} msgs, {:.0} tokens/msg emitted, {:.0} distinct, store {} tokens; cutoffs ham<{} spam>={}",
        index,
        msgs.len(),
        emitted as f64 / n,
        distinct as f64 / n,
        store.len(),
        c.ham_cutoff,
        c.spam_cutoff
    );
    println!(
        "{:<12} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>10}",
        "variant",
        "1-ROCA%",
        ">1000",
        "FPR%",
        "FNR%",
        "FP",
        "unsure",
        "clf/s",
        "train/s",
        "cut@0.1%"
    );
    for (i, a) in Algorithm::ALL.iter().enumerate() {
        let j = &judged[i];
        let whole = one_minus_roca_percent(j).unwrap_or(f64::NAN);
        let after = one_minus_roca_percent(j.get(1000..).unwrap_or(&[])).unwrap_or(f64::NAN);
        let r = rates(j, c.ham_cutoff, c.spam_cutoff);
        // Lowest spam cutoff keeping FPR <= 0.1 %.
        let mut hs: Vec<f64> = j
            .iter()
            .filter(|x| x.label == Label::Ham)
            .map(|x| x.score)
            .collect();
        hs.sort_by(|a, b| b.total_cmp(a));
        let allowed = (hs.len() as f64 * 0.001).floor() as usize;
        let cut = hs.get(allowed).copied().unwrap_or(0.0);
        let clf = if fast {
            n / t_tok_text.as_secs_f64()
        } else {
            n / (t_tok_text + t_classify[i]).as_secs_f64()
        };
        println!(
            "{:<12} {:>8.4} {:>8.4} {:>7.3} {:>7.2} {:>6} {:>6} {:>9.0} {:>9.0} {:>10.6}",
            a.name(),
            whole,
            after,
            r.fpr_percent,
            r.fnr_percent,
            r.false_positives,
            r.ham_unsure + r.spam_unsure,
            clf,
            n / t_train.as_secs_f64(),
            cut
        );
    }
    if show_fp {
        let c = classifier.config();
        let i = Algorithm::ALL
            .iter()
            .position(|a| *a == c.algorithm)
            .unwrap_or(0);
        for (k, j) in judged[i].iter().enumerate() {
            let wrong = match j.label {
                Label::Ham => j.score >= c.spam_cutoff,
                Label::Spam => j.score < c.ham_cutoff,
            };
            if wrong {
                println!(
                    "{} #{k} {} score {:.6} logit {:.2}",
                    j.label, paths[k], j.score, j.key
                );
            }
        }
    }
    Ok(())
}
