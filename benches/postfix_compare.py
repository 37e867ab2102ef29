#!/usr/bin/env python3
"""Helper of benches/postfix-compare (see that script): drives Postfix's smtp-source at a fresh
mailroom (and, with --fdatasync-shim, at one whose sync_file_range calls an LD_PRELOAD shim turns
into fdatasync) and at a fresh private Postfix instance, level by level, and writes the table.

For each level (concurrent sessions) and each server, on a fresh, empty instance:

1. warm-up: smtp-source sends max(200, 40 x sessions) messages; its rate sizes the measured
   run so that it lasts about --seconds;
2. measured run: smtp-source sends M messages of --size bytes over N persistent sessions
   (`-d`); accepted msg/s = M / wall time of smtp-source (it exits once the last message got its
   reply, and exits non-zero on any reply other than the expected one). Alongside it, a probe
   (this file, `probe`, a separate process) runs one more session and sends a 10 KB message every
   --probe-interval seconds (or at once when the previous one took longer), timing each from the
   write of its content and final "<CRLF>.<CRLF>" (after the 354) to the 250 reply: the accept
   latency percentiles come from those samples. Meanwhile the RSS and PSS of the server
   (mailroom: the one process; Postfix: summed over the master and all its children) are sampled
   every 0.1 s; for mailroom its VmHWM is read at the end;
3. durability: the server is stopped (mailroom with SIGKILL, so nothing gets a graceful flush;
   Postfix with `postfix stop`) and the messages in its files are counted (mailroom: `mailroom
   stats` opening the store itself, messages + spool + failed; Postfix: queue files in incoming,
   active, deferred, hold and maildrop). They must equal warm-up + measured + probe messages
   that got 250.
   This shows that nothing acknowledged was only in the server's memory; a kill does not show
   what a power loss would keep (that depends on the syncs: both servers fdatasync/fsync).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

DOMAIN = "support.example.com"
RCPT = "help@" + DOMAIN
SENDER = "load@example.org"


# ---------------------------------------------------------------------------------------------
# /proc


def proc_children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces and parentheses.
        rest = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def descendants(root):
    kids = proc_children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """Samples the RSS (and PSS) summed over a process tree every `interval` s in a thread of
    the orchestrating process (the probe is a separate process, so this never delays it)."""

    def __init__(self, root, tree, interval=0.1):
        self.root, self.tree, self.interval = root, tree, interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def sample(self):
        pids = descendants(self.root) if self.tree else [self.root]
        rss = sum(status_kb(p, "VmRSS") for p in pids)
        pss = sum(pss_kb(p) for p in pids)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))

    def loop(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join()
        self.sample()


# ---------------------------------------------------------------------------------------------
# the latency probe (a separate process)


def body_10k(size):
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return body[: body.rfind("\r\n") + 2] if "\r\n" in body else body + "\r\n"


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        while True:
            line = self.line()
            if line[3:4] != b"-":
                return int(line[:3]), line.decode("latin-1")

    def cmd(self, text, want):
        self.sock.sendall(text.encode() + b"\r\n")
        code, line = self.reply()
        if code != want:
            raise RuntimeError(f"{text!r}: {line}")


def probe(args):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c = Conn(args.host, args.port)
    code, line = c.reply()
    if code != 220:
        raise SystemExit(f"probe: greeting {line}")
    c.cmd("EHLO probe.test", 250)
    body = body_10k(args.size)
    samples, errors = [], []
    print("ready", flush=True)
    nxt = time.monotonic()
    i = 0
    while not stop.is_set():
        now = time.monotonic()
        if now < nxt:
            stop.wait(nxt - now)
            if stop.is_set():
                break
        nxt = max(nxt + args.interval, time.monotonic())
        i += 1
        msg = (
            f"From: <probe@example.org>\r\nTo: <{RCPT}>\r\nSubject: probe {i}\r\n"
            f"Message-ID: <probe-{os.getpid()}-{i}@example.org>\r\n\r\n{body}.\r\n"
        ).encode()
        try:
            t_mail = time.monotonic()
            c.cmd(f"MAIL FROM:<probe@example.org>", 250)
            c.cmd(f"RCPT TO:<{RCPT}>", 250)
            c.cmd("DATA", 354)
            t0 = time.monotonic()
            c.sock.sendall(msg)
            code, line = c.reply()
            t1 = time.monotonic()
        except (OSError, RuntimeError, ConnectionError) as e:
            errors.append(str(e))
            break
        if code == 250:
            # (start of the wait, accept latency, whole transaction)
            samples.append((t0, t1 - t0, t1 - t_mail))
        else:
            errors.append(line)
    try:
        c.cmd("QUIT", 221)
    except Exception:
        pass
    json.dump({"samples": samples, "errors": errors}, sys.stdout)


# ---------------------------------------------------------------------------------------------
# one measurement


def smtp_source(args, port, sessions, count, log):
    cmd = [
        args.smtp_source, "-d", "-s", str(sessions), "-m", str(count), "-l", str(args.size),
        "-f", SENDER, "-t", RCPT, "-M", "load.test", f"127.0.0.1:{port}",
    ]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.Popen(cmd, stdout=log, stderr=log)


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * p))]


def measure(args, name, port, root_pid, tree, log):
    """Warm-up, then the measured run with probe and RSS sampling. Returns a result dict."""
    sessions = args.sessions
    res = {"server": name, "sessions": sessions, "load1": os.getloadavg()[0]}
    # Warm-up (also sizes the run).
    warm = max(args.warmup_min, 40 * sessions)
    t = time.monotonic()
    p = smtp_source(args, port, sessions, warm, log)
    rc = p.wait()
    warm_rate = warm / (time.monotonic() - t)
    res.update(warmup=warm, warmup_rate=warm_rate)
    if rc != 0:
        res.update(error=f"smtp-source (warm-up) exited {rc}; see {log.name}")
        return res
    count = int(min(args.max_messages, max(args.min_messages, warm_rate * args.seconds)))
    count -= count % sessions
    res["messages"] = count
    # The measured run.
    pr = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "probe", "--port", str(port),
         "--interval", str(args.probe_interval), "--size", str(args.size)],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    if pr.stdout.readline().strip() != "ready":
        pr.wait()
        res.update(error=f"probe did not start; see {log.name}")
        return res
    with Sampler(root_pid, tree) as s:
        t0 = time.monotonic()
        p = smtp_source(args, port, sessions, count, log)
        rc = p.wait()
        t1 = time.monotonic()
        pr.send_signal(signal.SIGTERM)
        out, _ = pr.communicate(timeout=300)
    probe_res = json.loads(out)
    inside = [x for x in probe_res["samples"] if t0 <= x[0] and x[0] + x[1] <= t1]
    lat = sorted(x[1] for x in inside)
    whole = sorted(x[2] for x in inside)
    res.update(
        seconds=t1 - t0,
        rate=count / (t1 - t0),
        smtp_source_rc=rc,
        probe_accepted=len(probe_res["samples"]),
        probe_samples=len(lat),
        probe_errors=probe_res["errors"],
        p50_ms=pct(lat, 0.50) * 1000,
        p99_ms=pct(lat, 0.99) * 1000,
        max_ms=(lat[-1] * 1000) if lat else float("nan"),
        txn_p50_ms=pct(whole, 0.50) * 1000,
        txn_p99_ms=pct(whole, 0.99) * 1000,
        lat_ms=[round(x * 1000, 3) for x in lat],
        rss_peak_kb=s.peak_rss,
        pss_peak_kb=s.peak_pss,
        procs_peak=s.peak_procs,
        load1_end=os.getloadavg()[0],
    )
    if not tree:
        res["hwm_kb"] = status_kb(root_pid, "VmHWM")
    if rc != 0:
        res["error"] = f"smtp-source exited {rc}; see {log.name}"
    res["expected"] = warm + count + len(probe_res["samples"])
    return res


# ---------------------------------------------------------------------------------------------
# the two servers


def record_pid(args, pid):
    with open(args.pidfile, "a") as f:
        f.write(f"{pid}\n")


def run_mailroom(args, level_dir, log, shim=None):
    name = "mailroom-fdatasync" if shim else "mailroom"
    d = os.path.join(level_dir, name)
    os.makedirs(d)
    cfg = os.path.join(d, "mailroom.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[store]\npath = "{d}/data"\n'
            # Measure accepting, not the backpressure limit: the pipeline (parse, spam filter,
            # tickets) runs on the same 2 cores and falls behind at high rates.
            "spool_max_entries = 10000000\n"
            f'[smtp]\nlisten = ["127.0.0.1:0"]\ndomains = ["{DOMAIN}"]\nmax_connections = 1024\n'
            '[http]\nlisten = []\n[log]\nlevel = "warn"\n'
        )
    errlog = open(os.path.join(d, "stderr.log"), "w")
    env = dict(os.environ)
    if shim:
        env["LD_PRELOAD"] = shim
    p = subprocess.Popen([args.mailroom, "serve", "--config", cfg], stdout=subprocess.PIPE,
                         stderr=errlog, text=True, env=env)
    record_pid(args, p.pid)
    port = None
    for line in p.stdout:
        if line.startswith("smtp: listening on "):
            port = int(line.rsplit(":", 1)[1])
        if line.startswith("control: listening"):
            break
    if port is None:
        p.kill()
        p.wait()
        return {"server": name, "sessions": args.sessions,
                "error": f"mailroom did not start; see {errlog.name}"}
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    if shim:
        with open(f"/proc/{p.pid}/maps") as f:
            if shim not in f.read():
                p.kill()
                p.wait()
                return {"server": name, "sessions": args.sessions,
                        "error": "the fdatasync shim is not loaded (LD_PRELOAD ignored?)"}
    res = measure(args, name, port, p.pid, False, log)
    # Durability: SIGKILL (no graceful flush), then count what the store holds.
    p.kill()
    p.wait()
    t = time.monotonic()
    out = subprocess.run([args.mailroom, "stats", "--json", "--config", cfg],
                         capture_output=True, text=True)
    if out.returncode != 0:
        res["error"] = f"mailroom stats failed: {out.stderr.strip()}"
        return res
    c = json.loads(out.stdout)
    res["stored"] = c["messages"] + c["spool"] + c["failed"]
    res["stored_detail"] = c
    res["count_seconds"] = time.monotonic() - t
    res["disk_mb"] = du_mb(os.path.join(d, "data"))
    return res


def postfix_queue_files(queue):
    n = 0
    for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
        for _, _, files in os.walk(os.path.join(queue, sub)):
            n += len(files)
    return n


def master_pid(queue):
    try:
        with open(os.path.join(queue, "pid", "master.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def wait_gone(pid, timeout=60):
    end = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.05)


def postfix_cmd(args, *what):
    return subprocess.run(["postfix", "-c", args.postfix_config, *what],
                          capture_output=True, text=True)


def run_postfix(args, log):
    queue, data = args.postfix_queue, args.postfix_data
    # A fresh, empty queue for every level.
    pid = master_pid(queue)
    if pid and os.path.exists(f"/proc/{pid}"):
        postfix_cmd(args, "stop")
        wait_gone(pid)
    for d in (queue, data):
        subprocess.run(["rm", "-rf", d], check=True)
        os.makedirs(d)
    for what in (("set-permissions",), ("start",)):
        r = postfix_cmd(args, *what)
        if r.returncode != 0:
            return {"server": "postfix", "sessions": args.sessions,
                    "error": f"postfix {what[0]} failed: {r.stdout}{r.stderr} "
                             f"(see {args.postfix_log})"}
    pid = None
    for _ in range(100):
        pid = master_pid(queue)
        if pid and os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    if not pid:
        return {"server": "postfix", "sessions": args.sessions,
                "error": f"postfix master did not start (see {args.postfix_log})"}
    res = measure(args, "postfix", args.postfix_port, pid, True, log)
    postfix_cmd(args, "stop")
    wait_gone(pid)
    res["stored"] = postfix_queue_files(queue)
    res["disk_mb"] = du_mb(queue)
    return res


def du_mb(path):
    out = subprocess.run(["du", "-sm", path], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else 0


def settle():
    """Let the previous run's writes reach the disk before the next one starts."""
    subprocess.run(["sync"])
    time.sleep(2)


def run(args):
    levels = [int(x) for x in args.levels.split(",")]
    log = open(os.path.join(args.work, "smtp-source.log"), "a")
    servers = ["mailroom", "postfix"]
    if args.fdatasync_shim:
        servers.insert(1, "mailroom-fdatasync")
    with open(args.results, "a") as out:
        for rep in range(args.repeat):
            for i, n in enumerate(levels):
                args.sessions = n
                level_dir = os.path.join(args.work, f"level-{n}")
                os.makedirs(level_dir, exist_ok=True)
                # Rotate who goes first, so none always gets the quieter disk.
                k = (i + rep) % len(servers)
                for server in servers[k:] + servers[:k]:
                    settle()
                    print(f"postfix-compare: round {rep + 1}/{args.repeat}, {n} session(s): "
                          f"{server} ...", file=sys.stderr, flush=True)
                    if server == "postfix":
                        res = run_postfix(args, log)
                    else:
                        shim = args.fdatasync_shim if server == "mailroom-fdatasync" else None
                        res = run_mailroom(args, level_dir, log, shim)
                    res["round"] = rep + 1
                    res["durable"] = res.get("stored") == res.get("expected")
                    out.write(json.dumps(res) + "\n")
                    out.flush()
                    print("  " + summary(res), file=sys.stderr, flush=True)
                if not args.keep:
                    subprocess.run(["rm", "-rf", level_dir])
    if not args.keep:
        subprocess.run(["rm", "-rf", args.postfix_queue])


def summary(r):
    if "rate" not in r:
        return f"{r['server']}: ERROR {r.get('error')}"
    s = (f"{r['server']}: {r['messages']} msgs in {r['seconds']:.1f} s = {r['rate']:.0f} msg/s; "
         f"accept p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms ({r['probe_samples']} probes); "
         f"peak RSS {r['rss_peak_kb'] / 1024:.0f} MiB")
    if "hwm_kb" in r:
        s += f" (VmHWM {r['hwm_kb'] / 1024:.0f} MiB)"
    else:
        s += f" over {r['procs_peak']} processes (PSS {r['pss_peak_kb'] / 1024:.0f} MiB)"
    s += f"; on disk {r.get('stored')} of {r.get('expected')} acknowledged"
    s += f"; load {r['load1']:.2f}"
    if r.get("error"):
        s += f"; ERROR {r['error']}"
    return s


# ---------------------------------------------------------------------------------------------
# the table


def mib(kb):
    return f"{kb / 1024:.0f} MiB"


LABELS = {
    "mailroom": "mailroom",
    "mailroom-fdatasync": "mailroom + shim (sled's sync_file_range -> fdatasync)",
    "postfix": "Postfix",
}


def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def table(args):
    rows = [json.loads(l) for l in open(args.results) if l.strip()]
    meta = json.loads(args.meta) if args.meta else {}
    by = {}
    for r in rows:
        by.setdefault(r["sessions"], {}).setdefault(r["server"], []).append(r)
    rounds = max((r.get("round", 1) for r in rows), default=1)
    rate_head = "accepted msg/s" + (f", median of {rounds} (range)" if rounds > 1 else "")
    lines = [
        f"| sessions | server | {rate_head} | vs Postfix | accept latency p50 / p99 | "
        "peak memory | every acknowledged message on disk after kill/stop |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    ok = True
    for n in sorted(by):
        good = {name: [r for r in rs if "rate" in r] for name, rs in by[n].items()}
        pf = good.get("postfix", [])
        for name in ("mailroom", "mailroom-fdatasync", "postfix"):
            rs = by[n].get(name)
            if not rs:
                continue
            label = LABELS[name]
            if name == "postfix" and "postfix" in meta:
                label += " " + meta["postfix"]
            for r in rs:
                if "rate" not in r or r.get("error") or not r["durable"]:
                    ok = False
            g = good[name]
            if not g:
                errors = "; ".join(str(r.get("error")) for r in rs)
                lines.append(f"| {n} | {label} | error: {errors} | | | | |")
                continue
            rates = [r["rate"] for r in g]
            rate = f"{median(rates):,.0f}"
            if len(g) > 1:
                rate += f" ({min(rates):,.0f}-{max(rates):,.0f})"
            if name == "postfix":
                ratio = ""
                mem = (f"{mib(max(r['pss_peak_kb'] for r in g))} PSS "
                       f"({mib(max(r['rss_peak_kb'] for r in g))} RSS summed over "
                       f"{max(r['procs_peak'] for r in g)} processes)")
            else:
                ratio = (f"**{median(rates) / median([r['rate'] for r in pf]):.2f}x**"
                         if pf else "?")
                mem = f"{mib(max(max(r['hwm_kb'], r['rss_peak_kb']) for r in g))} RSS"
            lat = sorted(x for r in g for x in r.get("lat_ms", []))
            expected = sum(r["expected"] for r in rs if "expected" in r)
            stored = sum(r.get("stored", 0) for r in rs)
            mark = "yes" if all(r.get("durable") for r in rs) else "**NO**"
            lines.append(
                f"| {n} | {label} | {rate} | {ratio} | "
                f"{pct(lat, 0.5):.1f} / {pct(lat, 0.99):.1f} ms | {mem} | "
                f"{mark} ({stored:,} of {expected:,}) |"
            )
    detail = []
    for n in sorted(by):
        for name in ("mailroom", "mailroom-fdatasync", "postfix"):
            for r in by[n].get(name, []):
                if "rate" not in r:
                    detail.append(f"- round {r.get('round', 1)}, {n} session(s), {name}: "
                                  f"error: {r.get('error')}")
                    continue
                detail.append(
                    f"- round {r.get('round', 1)}, {n} session(s), {name}: "
                    f"{r['messages']:,} messages in {r['seconds']:.1f} s = {r['rate']:,.0f} msg/s "
                    f"(after {r['warmup']:,} warm-up); {r['probe_samples']} latency probes: p50 "
                    f"{r['p50_ms']:.1f}, p99 {r['p99_ms']:.1f}, max {r['max_ms']:.1f} ms; whole "
                    f"transaction p50/p99 {r['txn_p50_ms']:.1f}/{r['txn_p99_ms']:.1f} ms; "
                    f"{r.get('disk_mb', 0):,} MB on disk; load {r['load1']:.2f} -> "
                    f"{r['load1_end']:.2f}"
                    + (f"; spool backlog when killed {r['stored_detail']['spool']:,} (the pipeline "
                       f"had processed {r['stored_detail']['messages']:,})"
                       if "stored_detail" in r else "")
                )
    md = "\n".join(lines) + "\n"
    text = ""
    if meta:
        text += "".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n"
    text += md + "\n" + "\n".join(detail) + "\n"
    with open(args.md, "w") as f:
        f.write(text)
    print(text)
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("probe")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--interval", type=float, default=0.02)
    a.add_argument("--size", type=int, default=10240)
    a = sub.add_parser("run")
    a.add_argument("--levels", default="1,16,64")
    a.add_argument("--seconds", type=float, default=12)
    a.add_argument("--size", type=int, default=10240)
    a.add_argument("--probe-interval", type=float, default=0.02)
    a.add_argument("--warmup-min", type=int, default=200)
    a.add_argument("--min-messages", type=int, default=500)
    a.add_argument("--max-messages", type=int, default=200000)
    a.add_argument("--work", required=True)
    a.add_argument("--results", required=True)
    a.add_argument("--pidfile", required=True)
    a.add_argument("--mailroom", required=True)
    a.add_argument("--smtp-source", required=True)
    a.add_argument("--postfix-config", required=True)
    a.add_argument("--postfix-queue", required=True)
    a.add_argument("--postfix-data", required=True)
    a.add_argument("--postfix-log", required=True)
    a.add_argument("--postfix-port", type=int, required=True)
    a.add_argument("--keep", action="store_true")
    a.add_argument("--fdatasync-shim", default="")
    a.add_argument("--repeat", type=int, default=1)
    a = sub.add_parser("table")
    a.add_argument("--results", required=True)
    a.add_argument("--md", required=True)
    a.add_argument("--meta", default="")
    sub.add_parser("free-port")
    args = ap.parse_args()
    if args.cmd == "probe":
        probe(args)
    elif args.cmd == "run":
        run(args)
    elif args.cmd == "table":
        sys.exit(table(args))
    elif args.cmd == "free-port":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()


if __name__ == "__main__":
    main()
