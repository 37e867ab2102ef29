#!/usr/bin/env python3
"""Run spam-filter peers on one TREC-style index under TREC's immediate-feedback protocol.

For each message of the index, in order: classify it (a numeric spam score), then train the
peer on its true label. Each peer starts from an empty model in its own temporary directory.
Then: 1-ROCA % (whole run, and messages 1,001 onward), FPR and FNR at the peer's own default
cutoff, classify and train throughput timed separately; one markdown table.

Driven by run.sh (which installs the Debian packages); can be run on its own too.
`--self-test` checks the 1-ROCA function on hand-made examples and exits.
"""

import argparse
import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INDEX = "/work/shared/corpus/spamassassin/index"
ALL_PEERS = ["bogofilter", "spamassassin", "rspamd", "crm114", "mailroom"]
EXTRA_PEERS = ["rspamd-stock"]
CALL_TIMEOUT = 120  # seconds, for any single classify or train call


# --------------------------------------------------------------------------------------------
# Metrics


def one_minus_roca_percent(scores, is_spam):
    """Area above the ROC curve, in percent (TREC's 1-ROCA %); lower is better.

    Equals 100 * P(score of a random ham >= score of a random spam), a tie counting half, as in
    TREC's evaluation tools (Mann-Whitney U with average ranks). None if a class is empty.
    """
    pairs = sorted(zip(scores, is_spam), key=lambda p: p[0])
    n = len(pairs)
    n_spam = sum(1 for _, s in pairs if s)
    n_ham = n - n_spam
    if n_spam == 0 or n_ham == 0:
        return None
    spam_rank_sum = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2.0 + 1.0  # 1-based ranks; ties share their average rank
        spam_rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    auc = (spam_rank_sum - n_spam * (n_spam + 1) / 2.0) / (n_spam * n_ham)
    return 100.0 * (1.0 - auc)


def _brute_force_1_roca(scores, is_spam):
    spam = [s for s, y in zip(scores, is_spam) if y]
    ham = [s for s, y in zip(scores, is_spam) if not y]
    bad = sum(1.0 if h > s else 0.5 if h == s else 0.0 for s in spam for h in ham)
    return 100.0 * bad / (len(spam) * len(ham))


def self_test():
    ok = True

    def check(name, got, want):
        nonlocal ok
        good = (got is None and want is None) or (
            got is not None and want is not None and abs(got - want) < 1e-9)
        print(f"{'ok  ' if good else 'FAIL'} {name}: got {got}, want {want}")
        ok = ok and good

    # Hand example: spam 0.9, 0.6, 0.5; ham 0.5, 0.2, 0.7.
    # Pairs (spam, ham) ranked wrong: (0.6, 0.7), (0.5, 0.7) = 2, tie (0.5, 0.5) = 0.5 -> 2.5 / 9.
    check("hand example", one_minus_roca_percent(
        [0.9, 0.5, 0.6, 0.2, 0.5, 0.7], [True, False, True, False, True, False]), 250.0 / 9.0)
    check("perfect", one_minus_roca_percent([0.1, 0.2, 0.8, 0.9], [False, False, True, True]), 0.0)
    check("all wrong", one_minus_roca_percent([0.9, 0.8, 0.2], [False, False, True]), 100.0)
    check("all tied", one_minus_roca_percent([0.5] * 4, [True, False, True, False]), 50.0)
    check("one class", one_minus_roca_percent([0.1, 0.2], [True, True]), None)
    rng = random.Random(7)
    for trial in range(20):
        n = rng.randint(2, 60)
        scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.4 for _ in range(n)]
        if all(labels) or not any(labels):
            labels[0] = not labels[0]
        check(f"random {trial} vs brute force", one_minus_roca_percent(scores, labels),
              _brute_force_1_roca(scores, labels))
    print("self-test:", "1 passed, 0 failed" if ok else "0 passed, 1 failed")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------
# Helpers


def deb_version(pkg):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_pid(pid):
    """Tell run.sh's trap which servers we started, so it can stop them if we die."""
    path = os.environ.get("MR_PEERS_PIDFILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{pid}\n")


def stop_process(proc, group=False, grace=10):
    if proc is None or proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout=grace)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


class Unavailable(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Peers. classify() returns (score or None for "no answer", spam verdict at the default cutoff);
# train() returns True if the peer says it learned the message.


class Peer:
    name = "?"
    packages = []
    neutral = 0.5  # score recorded when the peer gives no answer
    cutoff = ""
    settings = ""

    def __init__(self, workdir, args):
        self.dir = os.path.join(workdir, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.args = args
        self.notes = []

    def version(self):
        return " ".join(f"{p} {deb_version(p) or '?'}" for p in self.packages[:1])

    def start(self):
        pass

    def stop(self):
        pass


class Bogofilter(Peer):
    name = "bogofilter"
    packages = ["bogofilter"]
    cutoff = "spam if spamicity >= 0.99 (ham < 0.45, unsure between: counted not spam)"
    settings = "stock /etc/bogofilter.cf (robx 0.52, robs 0.0178, min_dev 0.375), Berkeley DB wordlist"

    def start(self):
        if not shutil.which("bogofilter"):
            raise Unavailable("bogofilter not installed")

    def classify(self, path, data):
        # -TT: score only, 16 significant digits; exit 0 spam, 1 ham, 2 unsure, 3 error.
        # An empty model gives exit 3 and no output: no answer.
        r = subprocess.run(["bogofilter", "-d", self.dir, "-TT"], input=data,
                           capture_output=True, timeout=CALL_TIMEOUT)
        out = r.stdout.decode(errors="replace").strip()
        if r.returncode == 3 or not out:
            return None, False
        return float(out.split()[-1]), r.returncode == 0

    def train(self, path, data, is_spam):
        r = subprocess.run(["bogofilter", "-d", self.dir, "-s" if is_spam else "-n"], input=data,
                           capture_output=True, timeout=CALL_TIMEOUT)
        return r.returncode == 0


class SpamAssassin(Peer):
    name = "spamassassin"
    packages = ["spamassassin"]
    cutoff = ("spam if Bayes p > 0.5 (Bayes alone never reaches required_score 5.0: "
              "BAYES_99 + BAYES_999 = 3.7)")

    def __init__(self, workdir, args):
        super().__init__(workdir, args)
        m = args.min_learns
        self.settings = (f"Mail::SpamAssassin API in one Perl process; only the Bayes rule; "
                         f"local_tests_only, use_bayes 1, bayes_auto_learn 0, "
                         f"bayes_min_ham_num/spam_num {m}{' (default)' if m == 200 else ' (lowered)'}, "
                         f"DB_File store tied per call, bayes_auto_expire default (on)")
        if m != 200:
            self.notes.append(f"bayes_min_ham_num/spam_num {m} (lowered from 200)")
        self.proc = None

    def version(self):
        return f"spamassassin {deb_version('spamassassin') or '?'}"

    def start(self):
        if subprocess.run(["perl", "-MMail::SpamAssassin", "-e", "1"],
                          capture_output=True).returncode != 0:
            raise Unavailable("Mail::SpamAssassin (Debian package spamassassin) not installed")
        self.err = open(os.path.join(self.dir, "stderr.log"), "wb")
        m = str(self.args.min_learns)
        self.proc = subprocess.Popen(
            ["perl", os.path.join(HERE, "sa_bayes.pl"), self.dir, m, m],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        register_pid(self.proc.pid)

    def _cmd(self, line):
        timer = threading.Timer(CALL_TIMEOUT, self.proc.kill)
        timer.start()
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().decode().strip()
        finally:
            timer.cancel()
        if not answer:
            raise RuntimeError(f"SpamAssassin helper died (see {self.err.name})")
        return answer

    def classify(self, path, data):
        answer = self._cmd(f"C {path}")
        if answer == "S NA":
            return None, False
        p = float(answer.split()[1])
        return p, p > 0.5

    def train(self, path, data, is_spam):
        return self._cmd(f"L {'spam' if is_spam else 'ham'} {path}") == "L 1"

    def counts(self):
        return self._cmd("N")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.notes.append("Bayes DB holds nspam/nham = " +
                                  "/".join(self.counts().split()[1:]))
                self.proc.stdin.write(b"Q\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                pass
        stop_process(self.proc)


RSPAMD_DISABLED_MODULES = [
    # network lookups (DNS lists, hashes, sender auth, URL checks)
    "rbl", "surbl", "fuzzy_check", "spf", "dkim", "dmarc", "arc", "dkim_signing", "hfilter",
    "asn", "emails", "phishing", "url_redirector", "mx_check", "dcc", "external_services",
    "antivirus", "multimap", "whitelist", "rspamd_update", "bimi", "p0f", "aws_s3",
    # Redis-backed or learning modules other than the Bayes classifier
    "neural", "replies", "reputation", "greylist", "ratelimit", "history_redis",
    "clickhouse", "elastic", "metadata_exporter",
]

RSPAMD_LUA = """
-- Expose rspamd's own Bayes probability with full precision (the BAYES_SPAM/BAYES_HAM
-- options only carry two decimals of |p - 0.5|).
rspamd_config:register_symbol({
  name = 'MR_BAYES_PROB',
  type = 'postfilter',
  priority = 10,
  score = 0.0,
  callback = function(task)
    local p = task:get_mempool():get_variable('bayes_prob', 'double')
    if p then task:insert_result('MR_BAYES_PROB', 1.0, string.format('%.17g', p)) end
  end
})
"""


class Rspamd(Peer):
    name = "rspamd"
    packages = ["rspamd", "redis-server"]
    bulk = True
    cutoff = ("spam if BAYES_SPAM fires (Bayes p > 0.5); Bayes alone (max 5.1) never reaches "
              "the add_header action at 6")

    def __init__(self, workdir, args):
        super().__init__(workdir, args)
        policy = ("every learn sent with `Learn-Type: bulk` (train everything)" if self.bulk else
                  "stock learn policy (learns refused when already right at >= 95 %)")
        m = args.min_learns
        self.settings = ("stock /etc/rspamd rules with network and Redis-backed modules disabled, "
                         f"Bayes on a private redis-server (unix socket), min_learns {m}"
                         f"{' (default)' if m == 200 else ' (lowered)'}, min_tokens 11, "
                         "autolearn off; " + policy)
        if m != 200:
            self.notes.append(f"min_learns {m} (lowered from 200)")
        self.redis = self.rspamd = None
        self.refused = {}

    def version(self):
        return (f"rspamd {deb_version('rspamd') or '?'} (redis "
                f"{(deb_version('redis-server') or '?').split(':')[-1]})")

    def _wait(self, what, ok, deadline_s=120):
        end = time.time() + deadline_s
        while time.time() < end:
            if self.rspamd is not None and self.rspamd.poll() is not None:
                raise Unavailable(f"rspamd exited early (see {self.dir}/log/rspamd.log)")
            try:
                if ok():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise Unavailable(f"{what} did not come up in {deadline_s} s")

    def _http(self, port, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def start(self):
        for b in ("rspamd", "redis-server"):
            if not shutil.which(b):
                raise Unavailable(f"{b} not installed")
        d = self.dir
        for sub in ("local/local.d", "db", "run", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        # Short path for the unix socket (limit ~107 bytes).
        self.sock = os.path.join(d, "redis.sock")
        self.redis = subprocess.Popen(
            ["redis-server", "--port", "0", "--bind", "127.0.0.1", "--unixsocket", self.sock,
             "--unixsocketperm", "700", "--dir", os.path.join(d, "db"), "--save", "",
             "--appendonly", "no", "--daemonize", "no",
             "--logfile", os.path.join(d, "log", "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        register_pid(self.redis.pid)

        def redis_up():
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(self.sock)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        self._wait("redis-server", redis_up, 30)

        self.port_normal, self.port_ctl = free_port(), free_port()
        while self.port_ctl == self.port_normal:
            self.port_ctl = free_port()
        with open(os.path.join(d, "rspamd.conf"), "w") as f:
            f.write(f"""# private rspamd config for benches/peers (stock rules from $CONFDIR)
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "warning";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{self.port_normal}";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
worker "controller" {{
    bind_socket = "127.0.0.1:{self.port_ctl}";
    .include "$CONFDIR/worker-controller.inc"
    count = 1;
    secure_ip = "127.0.0.1";
}}
""")
        ld = os.path.join(d, "local", "local.d")
        with open(os.path.join(ld, "options.inc"), "w") as f:
            # No network here: make DNS fail fast instead of waiting for timeouts.
            f.write('dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }\n')
        with open(os.path.join(ld, "classifier-bayes.conf"), "w") as f:
            f.write(f'servers = "{self.sock}";\nautolearn = false;\n'
                    f'min_learns = {self.args.min_learns};\n')
        for m in RSPAMD_DISABLED_MODULES:
            with open(os.path.join(ld, f"{m}.conf"), "w") as f:
                f.write("enabled = false;\n")
        with open(os.path.join(d, "local", "rspamd.local.lua"), "w") as f:
            f.write(RSPAMD_LUA)
        self.rspamd = subprocess.Popen(
            ["rspamd", "-f", "-i", "-u", "root", "-g", "root",
             "-c", os.path.join(d, "rspamd.conf"),
             f"--var=LOCAL_CONFDIR={d}/local", f"--var=DBDIR={d}/db",
             f"--var=RUNDIR={d}/run", f"--var=LOGDIR={d}/log"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log", "stderr.log"), "wb"),
            start_new_session=True)
        register_pid(self.rspamd.pid)
        self._wait("rspamd normal worker",
                   lambda: self._http(self.port_normal, "GET", "/ping")[0] == 200)
        self._wait("rspamd controller",
                   lambda: self._http(self.port_ctl, "GET", "/ping")[0] == 200)

    def classify(self, path, data):
        status, body = self._http(self.port_normal, "POST", "/checkv2", data)
        if status != 200:
            raise RuntimeError(f"rspamd /checkv2 answered {status}: {body[:200]!r}")
        symbols = json.loads(body).get("symbols", {})
        prob = symbols.get("MR_BAYES_PROB", {}).get("options")
        if not prob:
            return None, False
        return float(prob[0]), "BAYES_SPAM" in symbols

    def train(self, path, data, is_spam):
        headers = {"Learn-Type": "bulk"} if self.bulk else {}
        status, body = self._http(self.port_ctl, "POST",
                                  "/learnspam" if is_spam else "/learnham", data, headers)
        if status == 200:
            return True
        if status == 204:  # not learned: mostly lua_bayes_learn.can_learn (already in class >= 95 %)
            key = "HTTP 204 (not learned)"
            self.refused[key] = self.refused.get(key, 0) + 1
            return False
        try:
            err = json.loads(body).get("error", "")
        except ValueError:
            err = body[:80].decode(errors="replace")
        key = re.sub(r"[0-9.]+%?", "N", re.sub(r"<[^>]*>", "<id>", err))[:70]
        self.refused[key] = self.refused.get(key, 0) + 1
        return False

    def stop(self):
        for err, n in sorted(self.refused.items(), key=lambda kv: -kv[1]):
            self.notes.append(f"{n} learns refused: {err}")
        stop_process(self.rspamd, group=True)
        stop_process(self.redis)


class RspamdStock(Rspamd):
    name = "rspamd-stock"
    bulk = False


CRM_CLASSES = ("nonspam.css", "spam.css")  # mailreaver's file names, good class first


class Crm114(Peer):
    name = "crm114"
    packages = ["crm114"]
    neutral = 0.0  # score is the spam class's pR (log10 odds); 0 = undecided
    cutoff = ("mailreaver's: spam if pR(spam) >= 5 (i.e. nonspam pR <= spam_threshold -5.0), "
              "ham if <= -5, unsure between (counted not spam)")
    settings = ("`crm -e` one-liners with mailreaver.crm's classifier settings "
                "(`<osb unique microgroom>`, tokens /[[:graph:]]+/, first 16,000 bytes = "
                "decision_length); every message trained (TEFT), no thick-threshold, no "
                "mailreaver preprocessing (base64 decoding, cache)")
    DECISION_LENGTH = 16000

    def version(self):
        return f"crm114 {deb_version('crm114') or '?'}"

    def start(self):
        if not shutil.which("crm"):
            raise Unavailable("crm (Debian package crm114) not installed")
        self.classify_prog = (
            # classify "fails" (skips the rest of its block) when the first class loses, so
            # it sits in a block of its own and the statistics are printed either way.
            "-{ isolate (:s:); { classify <osb unique microgroom> ( " + " | ".join(CRM_CLASSES) +
            " ) (:s:) /[[:graph:]]+/ } ; output /:*:s:/ }")

    def classify(self, path, data):
        if not all(os.path.exists(os.path.join(self.dir, c)) for c in CRM_CLASSES):
            return None, False  # a class has no file yet: crm114 cannot classify
        r = subprocess.run(["crm", self.classify_prog], input=data[:self.DECISION_LENGTH],
                           capture_output=True, cwd=self.dir, timeout=CALL_TIMEOUT)
        m = re.search(rb"Best match to file #(\d+) \((\S+)\) prob: \S+\s+pR: (\S+)", r.stdout)
        if not m:
            return None, False
        pr = float(m.group(3))
        spam_pr = pr if m.group(2).decode() == CRM_CLASSES[1] else -pr
        return spam_pr, spam_pr >= 5.0

    def train(self, path, data, is_spam):
        prog = ("-{ learn <osb unique microgroom> (" + CRM_CLASSES[1 if is_spam else 0] +
                ") /[[:graph:]]+/ }")
        r = subprocess.run(["crm", prog], input=data[:self.DECISION_LENGTH],
                           capture_output=True, cwd=self.dir, timeout=CALL_TIMEOUT)
        return r.returncode == 0


PEER_CLASSES = {c.name: c for c in (Bogofilter, SpamAssassin, Rspamd, RspamdStock, Crm114)}


# --------------------------------------------------------------------------------------------
# Running


def read_index(path, limit):
    base = os.path.dirname(os.path.abspath(path))
    msgs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split(None, 1)
            if not parts:
                continue
            if len(parts) != 2 or parts[0].lower() not in ("ham", "spam"):
                sys.exit(f"{path}:{n}: expected 'ham PATH' or 'spam PATH'")
            rel = parts[1].strip()
            msgs.append((parts[0].lower() == "spam", rel, os.path.join(base, rel)))
            if limit and len(msgs) >= limit:
                break
    return msgs


def limited_index(msgs, workdir, index):
    """An index with just these messages, resolving to the same files (for mailroom)."""
    d = os.path.join(workdir, "index")
    os.makedirs(d, exist_ok=True)
    base = os.path.dirname(os.path.abspath(index))
    for top in sorted({rel.split("/", 1)[0] for _, rel, _ in msgs if not rel.startswith("/")}):
        link = os.path.join(d, top)
        if not os.path.lexists(link):
            os.symlink(os.path.join(base, top), link)
    out = os.path.join(d, "index")
    with open(out, "w") as f:
        for spam, rel, _ in msgs:
            f.write(f"{'spam' if spam else 'ham'} {rel}\n")
    return out


def summarize(scores, labels, verdicts):
    n = len(scores)
    ham = [v for v, y in zip(verdicts, labels) if not y]
    spam = [v for v, y in zip(verdicts, labels) if y]
    return {
        "messages": n,
        "one_minus_roca_percent": one_minus_roca_percent(scores, labels),
        "one_minus_roca_after_1000_percent":
            one_minus_roca_percent(scores[1000:], labels[1000:]) if n > 1000 else None,
        "fpr_percent": 100.0 * sum(ham) / len(ham) if ham else None,
        "fnr_percent": 100.0 * (len(spam) - sum(spam)) / len(spam) if spam else None,
    }


def run_peer(cls, msgs, workdir, args):
    peer = cls(workdir, args)
    res = {"peer": peer.name, "version": peer.version(), "cutoff": peer.cutoff,
           "settings": peer.settings, "available": True}
    scores, labels, verdicts = [], [], []
    t_classify = t_train = 0.0
    no_answer = first_answer = learned = 0
    stopped = None
    started = time.time()
    try:
        peer.start()
        for i, (is_spam, _rel, path) in enumerate(msgs):
            with open(path, "rb") as f:
                data = f.read()
            t0 = time.perf_counter()
            score, verdict = peer.classify(path, data)
            t1 = time.perf_counter()
            ok = peer.train(path, data, is_spam)
            t2 = time.perf_counter()
            t_classify += t1 - t0
            t_train += t2 - t1
            if score is None:
                no_answer += 1
                score = peer.neutral
            elif not first_answer:
                first_answer = i + 1
            learned += bool(ok)
            scores.append(score)
            labels.append(is_spam)
            verdicts.append(bool(verdict))
            if (i + 1) % 500 == 0:
                print(f"  {peer.name}: {i + 1}/{len(msgs)} messages, "
                      f"{time.time() - started:.0f} s", file=sys.stderr, flush=True)
            if time.time() - started > args.peer_timeout:
                stopped = f"stopped by the time budget ({args.peer_timeout} s) after {i + 1} messages"
                break
    except Unavailable as e:
        res.update(available=False, reason=str(e))
        return res
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
        stopped = f"stopped by an error after {len(scores)} messages: {e}"
    finally:
        peer.stop()
    n = len(scores)
    res.update(summarize(scores, labels, verdicts))
    res.update({
        "classify_seconds": round(t_classify, 3), "train_seconds": round(t_train, 3),
        "classify_per_sec": n / t_classify if t_classify else None,
        "train_per_sec": n / t_train if t_train else None,
        "no_answer": no_answer, "first_answer_at": first_answer or None, "learned": learned,
        "notes": ([stopped] if stopped else []) + peer.notes,
    })
    if no_answer:
        res["notes"].insert(0, f"no answer on {no_answer} msgs (scored neutral"
                               f"{', first answer at msg ' + str(first_answer) if first_answer else ''})")
    if learned != n:
        res["notes"].append(f"learned {learned} of {n}")
    return res


def run_mailroom(msgs, index_for_mailroom, workdir, args):
    binary = os.environ.get("MAILROOM_BIN", "target/release/mailroom")
    res = {"peer": "mailroom", "available": False, "version": "",
           "cutoff": "its configured spam_cutoff", "settings": f"`{binary} filter eval --trec-index FILE --json`"}
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        res["reason"] = f"binary {binary} not found (set MAILROOM_BIN)"
        return res
    d = os.path.join(workdir, "mailroom")
    os.makedirs(d, exist_ok=True)
    binary = os.path.abspath(binary)
    try:
        v = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, cwd=d)
        res["version"] = v.stdout.strip()
        h = subprocess.run([binary, "filter", "eval", "--help"], capture_output=True, text=True,
                           timeout=30, cwd=d)
        if h.returncode != 0 or "--trec-index" not in h.stdout:
            res["reason"] = "no `filter eval --trec-index` subcommand in this binary"
            return res
        started = time.time()
        r = subprocess.run([binary, "filter", "eval", "--trec-index", index_for_mailroom, "--json"],
                           capture_output=True, text=True, timeout=args.peer_timeout, cwd=d,
                           env=dict(os.environ, HOME=d))
        wall = time.time() - started
    except subprocess.TimeoutExpired:
        res["reason"] = f"`filter eval` exceeded the time budget ({args.peer_timeout} s)"
        return res
    except OSError as e:
        res["reason"] = str(e)
        return res
    out = r.stdout
    try:
        j = json.loads(out[out.index("{"):out.rindex("}") + 1])
    except ValueError:
        res["reason"] = (f"`filter eval` exit {r.returncode}, no JSON: "
                         f"{(r.stderr or out).strip()[-200:]}")
        return res

    def pct(key):
        # `fpr`/`fnr` are rates (fractions) unless the key says percent.
        if j.get(key + "_percent") is not None:
            return float(j[key + "_percent"])
        return 100.0 * float(j[key]) if j.get(key) is not None else None

    res.update({
        "available": True, "messages": j.get("messages"),
        "one_minus_roca_percent": j.get("one_minus_roca_percent"),
        "one_minus_roca_after_1000_percent": j.get("one_minus_roca_after_1000_percent"),
        "fpr_percent": pct("fpr"), "fnr_percent": pct("fnr"),
        "classify_per_sec": j.get("classify_per_sec"), "train_per_sec": j.get("train_per_sec"),
        "wall_seconds": round(wall, 1), "raw": j, "notes": [],
    })
    for k in ("algorithm", "spam_cutoff", "ham_cutoff"):
        if k in j:
            res["notes"].append(f"{k} {j[k]}")
    if j.get("messages") not in (None, len(msgs)):
        res["notes"].append(f"mailroom read {j.get('messages')} messages, index has {len(msgs)}")
    return res


# --------------------------------------------------------------------------------------------
# Output


def fmt(x, digits=3):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def rate(x):
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def table(results):
    lines = ["| peer | version | msgs | 1-ROCA % | 1-ROCA % (msgs 1,001+) | FPR % | FNR % | "
             "classify msg/s | train msg/s | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if not r.get("available"):
            lines.append(f"| {r['peer']} | {r.get('version') or ''} | not available | | | | | | | "
                         f"{r.get('reason', '')} |")
            continue
        notes = "; ".join(r.get("notes") or [])
        lines.append(
            f"| {r['peer']} | {r['version']} | {fmt(r.get('messages'))} | "
            f"{fmt(r.get('one_minus_roca_percent'))} | "
            f"{fmt(r.get('one_minus_roca_after_1000_percent'))} | "
            f"{fmt(r.get('fpr_percent'), 2)} | {fmt(r.get('fnr_percent'), 2)} | "
            f"{rate(r.get('classify_per_sec'))} | {rate(r.get('train_per_sec'))} | {notes} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=DEFAULT_INDEX, help="TREC-style index (ham|spam PATH)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N messages")
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help=f"comma list from {', '.join(ALL_PEERS + EXTRA_PEERS)}")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json", help="write machine-readable results here")
    ap.add_argument("--peer-timeout", type=int, default=3600,
                    help="time budget per peer in seconds (default 3600)")
    ap.add_argument("--min-learns", type=int, default=200,
                    help="ham and spam learned before SpamAssassin's and rspamd's Bayes answer "
                         "(bayes_min_ham_num/spam_num, min_learns; default 200, theirs)")
    ap.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    ap.add_argument("--self-test", action="store_true", help="check the 1-ROCA function, exit")
    args = ap.parse_args()
    if args.self_test:
        return self_test()

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in ALL_PEERS + EXTRA_PEERS]
    if unknown:
        ap.error(f"unknown peer(s): {', '.join(unknown)}")
    msgs = read_index(args.index, args.limit)
    if not msgs:
        sys.exit(f"{args.index}: no messages")
    n_spam = sum(1 for m in msgs if m[0])

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    register_pid(os.getpid())
    workdir = tempfile.mkdtemp(prefix="mr-peers-")
    results = []
    try:
        for name in peers:
            print(f"{name}: running on {len(msgs)} messages", file=sys.stderr, flush=True)
            if name == "mailroom":
                idx = args.index if not args.limit else limited_index(msgs, workdir, args.index)
                results.append(run_mailroom(msgs, idx, workdir, args))
            else:
                results.append(run_peer(PEER_CLASSES[name], msgs, workdir, args))
            if not args.keep_temp:
                shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    finally:
        if not args.keep_temp:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    head = (f"Index `{args.index}`{f' (first {args.limit})' if args.limit else ''}: "
            f"{len(msgs)} messages ({len(msgs) - n_spam} ham, {n_spam} spam); "
            f"immediate-feedback online, each peer from an empty model; "
            f"{now}, {os.cpu_count()} cores, {mem_gib:.0f} GiB.")
    cut = ["", "Default cutoffs (for FPR/FNR; 'unsure' counts as not spam):"]
    for r in results:
        cut.append(f"- {r['peer']}: {r.get('cutoff', '')}")
    text = head + "\n\n" + table(results) + "\n" + "\n".join(cut) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"index": args.index, "limit": args.limit or None, "messages": len(msgs),
                       "ham": len(msgs) - n_spam, "spam": n_spam, "date": now,
                       "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
                       "peers": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
