#!/usr/bin/env python3
"""report.py: all of the benchmark's arithmetic and reporting.

  report.py WORKDIR OUT_JSON
      turns the raw readings scripts/bench.sh wrote (WORKDIR/samples.tsv:
      row, mode, metric, run, value; WORKDIR/meta.tsv: key, value) into the
      printed table and bench-results.json.
  report.py show WORKDIR ROW MODE RUN [SUFFIX]
      prints the progress line of one run of one row, from the same files,
      with SUFFIX (text bench.sh has, such as the daemon's log line) appended.

bench.sh records only what it read: elapsed nanoseconds (`*_ns`, and
`*_touch_ns` for mmap_touch's own timing), KiB from /proc (`*_kib`), clock
ticks (`*_ticks*`) and counter readings before and after. `derive` turns
them into the seconds, MiB, ratios and CPU seconds the report shows.

Ratios are computed per run from the paired measurements of that run (the
two sides of a comparison are measured back to back, alternating), then
summarised as median [min-max] like every other number. No thresholds:
the "goal" column is information, the exit status is 0."""
import json
import os
import statistics
import sys
from collections import defaultdict

MODE_NAME = {"pt": "passthrough", "off": "passthrough=off", "-": "default", "rclone": "rclone"}


def load(workdir):
    samples = defaultdict(dict)  # (row, mode, metric) -> {run: value}
    with open(f"{workdir}/samples.tsv") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            row, mode, metric, run, value = parts
            samples[(row, mode, metric)][run] = float(value)
    meta = {}
    try:
        with open(f"{workdir}/meta.tsv") as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                meta[k] = v
    except FileNotFoundError:
        pass
    return samples, meta


def derive(samples, meta):
    """Adds the derived metrics that Report.build reads to the raw readings:
    seconds from nanoseconds, MiB from KiB, CPU seconds and percentages from
    clock ticks, differences of counters read before and after."""
    hz = float(meta.get("clk_tck", "100"))
    size = float(meta.get("size_bytes", "0")) or 1.0
    out = defaultdict(dict)
    for key, runs in samples.items():
        out[key].update(runs)

    def put(row, mode, metric, run, value):
        out[(row, mode, metric)][run] = value

    for (row, mode, metric), runs in samples.items():
        for run, v in runs.items():
            if metric.endswith("_touch_ns"):
                put(row, mode, metric[:-len("_touch_ns")] + "_ms", run, v / 1e6)
            elif metric.endswith("_ns"):
                put(row, mode, metric[:-3] + "_s", run, v / 1e9)
            elif metric.endswith("_kib") and row in ("7", "10", "11", "12"):
                put(row, mode, metric[:-4] + "_mib", run, round(v / 1024, 1))

    def get(row, mode, metric):
        return samples.get((row, mode, metric), {})

    def diff(row, mode, before, after, metric, f=lambda d: d):
        b, a = get(row, mode, before), get(row, mode, after)
        for run in set(a) & set(b):
            put(row, mode, metric, run, f(a[run] - b[run]))

    # Row 8: how much Cached: grew, as a multiple of the model's size.
    for mode in ("pt", "off"):
        for side in ("mount", "direct"):
            diff("8", mode, f"{side}_before_kib", f"{side}_after_kib", f"{side}_growth",
                 lambda d: d * 1024 / size)
    # Rows 4 and 5: origin GETs, from the access log's count before and after.
    diff("4", "-", "gets_before", "gets_after", "modelfs_gets")
    diff("5", "-", "gets_before", "gets_after", "gets")
    diff("5", "-", "one_gets_before", "one_gets_after", "one_gets")
    diff("5", "-", "sent_before", "sent_after", "sent_x", lambda d: d / size)
    # Row 4: CPU seconds of curl (its shell's cutime + cstime), the daemon and nginx.
    cu, cs = get("4", "-", "curl_cutime_ticks"), get("4", "-", "curl_cstime_ticks")
    for run in set(cu) & set(cs):
        put("4", "-", "curl_cpu_s", run, (cu[run] + cs[run]) / hz)
    for run, v in get("4", "-", "modelfs_cpu_ticks").items():
        put("4", "-", "modelfs_cpu_s", run, v / hz)
    for side in ("curl", "modelfs"):
        diff("4", "-", f"nginx_ticks_before_{side}", f"nginx_ticks_after_{side}",
             f"nginx_cpu_for_{side}_s", lambda d: d / hz)
    # Row 5: each run's fastest and slowest of the concurrent openers ("RUN.K").
    per_run = defaultdict(list)
    for run, v in get("5", "-", "opener_s").items():
        per_run[run.split(".")[0]].append(v)
    for run, vs in per_run.items():
        put("5", "-", "slowest_s", run, max(vs))
        put("5", "-", "fastest_s", run, min(vs))
    # Rows 11 and 12: origin GETs and bytes sent (access log) per download,
    # the bytes as a multiple of the model's size.
    for row in ("11", "12"):
        diff(row, "-", "mount_gets_before", "mount_gets_after", "modelfs_gets")
        for side in ("mount", "aria2"):
            diff(row, "-", f"{side}_sent_before", f"{side}_sent_after", f"{side}_sent_x",
                 lambda d: d / size)
    # Row 16: each run's slowest fleet host ("RUN.K"), and the origin's bytes
    # for the whole fleet as a multiple of the size.
    per_run = defaultdict(list)
    for run, v in out.get(("16", "-", "host_s"), {}).items():
        per_run[run.split(".")[0]].append(v)
    for run, vs in per_run.items():
        put("16", "-", "slowest_s", run, max(vs))
    diff("16", "-", "fleet_sent_before", "fleet_sent_after", "fleet_sent_x", lambda d: d / size)
    diff("16", "-", "fleet_ticks_before", "fleet_ticks_after", "fleet_cpu_s", lambda d: d / hz)
    slowest = out.get(("16", "-", "slowest_s"), {})
    for run, cpu in out.get(("16", "-", "fleet_cpu_s"), {}).items():
        if slowest.get(run):
            put("16", "-", "fleet_cores", run, cpu / slowest[run])
    # Row 13: origin GETs and MiB sent for the facts of one `add`.
    diff("13", "-", "gets_before", "gets_after", "facts_gets")
    diff("13", "-", "sent_before", "sent_after", "facts_sent_mib", lambda d: d / 1048576)
    # Row 10: the daemon's CPU over an idle window, in % of one core.
    window = float(meta.get("row10_idle_window_s", "20"))
    diff("10", "-", "idle_ticks_before", "idle_ticks_after", "idle_cpu_pct",
         lambda d: 100 * d / hz / window)
    return out


def summary(values, unit):
    v = sorted(values)
    if not v:
        return None
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "n": len(v), "unit": unit,
            "samples": values}


def fmt(s, digits=2):
    if s is None:
        return "n/a"
    d = digits
    if s["n"] == 1:
        return f"{s['median']:.{d}f}"
    return f"{s['median']:.{d}f} [{s['min']:.{d}f}-{s['max']:.{d}f}]"


class Report:
    def __init__(self, samples, meta):
        self.s = samples
        self.meta = meta
        self.size_mib = float(meta.get("size_mib", "0"))
        self.rows = []

    def get(self, row, mode, metric):
        return self.s.get((row, mode, metric), {})

    def paired(self, a, b, f):
        """f(a_value, b_value) for every run present on both sides."""
        out = []
        for run in sorted(set(a) & set(b), key=lambda r: int(r) if r.isdigit() else r):
            out.append(f(a[run], b[run]))
        return out

    def add(self, num, what, mode, measured, reference, ratio, ratio_name, goal, better, goal_value,
            note=""):
        meets = None
        if ratio is not None and goal_value is not None:
            m = ratio["median"]
            meets = m >= goal_value if better == "higher" else m <= goal_value
        self.rows.append({
            "row": num, "what": what, "mode": MODE_NAME.get(mode, mode), "measured": measured,
            "reference": reference, "ratio": ratio, "ratio_is": ratio_name, "goal": goal,
            "meets_goal": meets, "note": note,
        })

    def tput(self, secs):
        return [self.size_mib / x for x in secs if x > 0]

    def build(self):
        size = self.size_mib
        # Row 1 and 2: sequential reads, mount vs direct.
        for num, label in (("1", "warm sequential read (cat)"), ("2", "cold sequential read (cat)")):
            for mode in ("pt", "off"):
                d = self.get(num, mode, "direct_s")
                m = self.get(num, mode, "mount_s")
                if not m:
                    continue
                ratio = summary(self.paired(m, d, lambda mv, dv: dv / mv), "x")
                if num == "1":
                    goal, gv = ("≥ 0.95", 0.95) if mode == "pt" else ("≥ 0.6", 0.6)
                else:
                    goal, gv = ("≥ 0.9", 0.9) if mode == "pt" else ("(none)", None)
                self.add(num, label, mode, ("mount", summary(self.tput(m.values()), "MiB/s")),
                         ("direct", summary(self.tput(d.values()), "MiB/s")), ratio,
                         "mount ÷ direct throughput", goal, "higher", gv)
        # Row 3: mmap random page touches.
        for mode in ("pt", "off"):
            d = self.get("3", mode, "direct_ms")
            m = self.get("3", mode, "mount_ms")
            if not m:
                continue
            ratio = summary(self.paired(m, d, lambda mv, dv: mv / dv), "x")
            goal, gv = ("≤ 1.1", 1.1) if mode == "pt" else ("(none)", None)
            self.add("3", "mmap, 20,000 random 4 KiB touches, warm", mode,
                     ("mount", summary(list(m.values()), "ms")),
                     ("direct", summary(list(d.values()), "ms")), ratio,
                     "mount ÷ direct time", goal, "lower", gv)
        # Row 4: first open vs curl.
        c = self.get("4", "-", "curl_s")
        m = self.get("4", "-", "modelfs_s")
        if m:
            ratio = summary(self.paired(m, c, lambda mv, cv: mv / cv), "x")
            self.add("4", "first open: fetch+verify+open+read all, vs curl -o", "-",
                     ("modelfs", summary(list(m.values()), "s")),
                     ("curl -o", summary(list(c.values()), "s")), ratio, "modelfs ÷ curl time",
                     "≤ 1.10", "lower", 1.10)
        cf = self.get("4", "-", "curl_fsync_s")
        if m and cf:
            ratio = summary(self.paired(m, cf, lambda mv, cv: mv / cv), "x")
            self.add("4", "  the same vs curl -o followed by fsync (reference)", "-",
                     ("modelfs", summary(list(m.values()), "s")),
                     ("curl -o + fsync", summary(list(cf.values()), "s")), ratio,
                     "modelfs ÷ (curl + fsync) time", "(information)", "lower", None)
        # Row 5: 32 concurrent first opens.
        g = self.get("5", "-", "gets")
        one = self.get("5", "-", "single_s")
        slow = self.get("5", "-", "slowest_s")
        if slow:
            # One download for all (single flight): the origin sends the
            # model once, in as many requests as one opener's download
            # takes (its ranges), not 32 times.
            sent = summary(list(self.get("5", "-", "sent_x").values()), "x")
            if sent:
                self.add("5", "origin bytes ÷ size for 32 concurrent first opens", "-",
                         ("origin", sent), None, sent, "origin bytes ÷ size", "1.0 (one download)",
                         "lower", 1.02)
            gets = summary(list(g.values()), "GETs")
            one_gets = summary(list(self.get("5", "-", "one_gets").values()), "GETs")
            self.add("5", "origin GETs for 32 concurrent first opens, and for one opener", "-",
                     ("32 openers", gets), ("one opener", one_gets), gets, "GET count",
                     "(information)", "lower", None)
            ratio = summary(self.paired(slow, one, lambda s, o: s / o), "x")
            self.add("5", "32 concurrent first opens: slowest vs single opener", "-",
                     ("slowest of 32", summary(list(slow.values()), "s")),
                     ("single", summary(list(one.values()), "s")), ratio,
                     "slowest ÷ single", "≤ 1.10", "lower", 1.10)
        # Row 6: 10,000 manifests.
        for op in ("ls", "stat"):
            idle = self.get("6", "-", f"{op}_idle_s")
            busy = self.get("6", "-", f"{op}_busy_s")
            if not idle:
                continue
            what = "`ls -l` of 10,001 entries" if op == "ls" else "`stat` of every entry (10,001)"
            s_idle = summary(list(idle.values()), "s")
            self.add("6", what + ", idle", "-", ("idle", s_idle), None, s_idle, "seconds",
                     "≤ 0.5 s" if op == "ls" else "(none)", "lower", 0.5 if op == "ls" else None)
            if busy:
                ratio = summary(self.paired(busy, idle, lambda b, i: b / i), "x")
                self.add("6", what + ", during a download", "-",
                         ("busy", summary(list(busy.values()), "s")), ("idle", s_idle), ratio,
                         "during ÷ idle", "no slower (≤ ~1.1)", "lower", 1.1)
        # Row 10: 100,000 manifests.
        rss = self.get("10", "-", "rss_mib")
        if rss:
            s = summary(list(rss.values()), "MiB")
            self.add("10", "100,000 manifests: daemon RSS once mounted", "-", ("VmRSS", s), None,
                     s, "MiB", "≤ 128", "lower", 128)
            cpu = summary(list(self.get("10", "-", "idle_cpu_pct").values()), "%")
            self.add("10", "100,000 manifests: daemon CPU while idle (20 s)", "-", ("CPU", cpu),
                     None, cpu, "% of a core", "≈ 0 (≤ 1)", "lower", 1.0)
            big = self.get("10", "-", "ls_s")
            small = self.get("6", "-", "ls_idle_s")
            if big and small:
                ratio = summary(self.paired(big, small, lambda b, s_: b / s_), "x")
                self.add("10", "`ls -l` of 100,000 entries vs 10,001 (row 6, idle)", "-",
                         ("100k", summary(list(big.values()), "s")),
                         ("10k", summary(list(small.values()), "s")), ratio,
                         "100k ÷ 10k time", "≤ 10", "lower", 10.0)
            tb = self.get("10", "-", "tmpfs_big_ls_s")
            ts = self.get("10", "-", "tmpfs_small_ls_s")
            if tb and ts:
                ratio = summary(self.paired(tb, ts, lambda b, s_: b / s_), "x")
                self.add("10", "  the same on tmpfs, no daemon (reference)", "-",
                         ("100k", summary(list(tb.values()), "s")),
                         ("10k", summary(list(ts.values()), "s")), ratio,
                         "100k ÷ 10k time", "(none)", "lower", None)
        # Rows 11 and 12: first open vs downloaders on a capped / WAN-like origin.
        for num, where, vs_aria2_goal in (
                ("11", f"origin capped at {self.meta.get('row11_cap_mib_per_request', '?')} MiB/s"
                       " per connection", ("≤ 1.10", 1.10)),
                ("12", "WAN-like link (" + self.meta.get("row12_link", "netem") + ")",
                 ("< 1 (ahead)", 1.0))):
            m = self.get(num, "-", "modelfs_s")
            if not m:
                if self.meta.get(f"row{num}_skipped"):
                    self.add(num, where, "-", None, None, None, "", "", "lower", None,
                             note="skipped: " + self.meta[f"row{num}_skipped"])
                continue
            sm = ("first open", summary(list(m.values()), "s"))
            a = self.get(num, "-", "aria2_s")
            ratio = summary(self.paired(m, a, lambda mv, av: mv / av), "x")
            self.add(num, f"{where}: first open ÷ aria2c -x16 (download only)", "-", sm,
                     ("aria2c -x16", summary(list(a.values()), "s")), ratio,
                     "first open ÷ aria2c time", vs_aria2_goal[0], "lower", vs_aria2_goal[1])
            c = self.get(num, "-", "curl_s")
            if c:
                ratio = summary(self.paired(m, c, lambda mv, cv: cv / mv), "x")
                self.add(num, f"{where}: curl -o ÷ first open", "-", sm,
                         ("curl -o", summary(list(c.values()), "s")), ratio,
                         "curl ÷ first open time", "≥ 10", "higher", 10.0)
            v = self.get(num, "-", "aria2_checksum_s")
            ratio = summary(self.paired(m, v, lambda mv, vv: mv / vv), "x")
            self.add(num, f"{where}: first open ÷ aria2c --checksum=sha-256", "-", sm,
                     ("aria2c + checksum", summary(list(v.values()), "s")), ratio,
                     "first open ÷ aria2c time", "(information)", "lower", None)
            sent = summary(list(self.get(num, "-", "mount_sent_x").values()), "x")
            if sent:
                self.add(num, f"{where}: bytes the origin sent for the first open ÷ size", "-",
                         ("first open", sent),
                         ("aria2c -x16", summary(list(self.get(num, "-", "aria2_sent_x").values()),
                                                 "x")),
                         sent, "origin bytes ÷ size", "≤ 1.02", "lower", 1.02)
        # Row 13: facts of a remote GGUF; row 14: a split model's cold load.
        sent = summary(list(self.get("13", "-", "facts_sent_mib").values()), "MiB")
        if sent:
            self.add("13", f"facts of a remote {size:.0f} MiB GGUF: bytes the origin sent", "-",
                     ("origin", sent), None, sent, "MiB", "≤ 8 MiB", "lower", 8.0)
            t = summary(list(self.get("13", "-", "add_s").values()), "s")
            self.add("13", "facts: wall time of `modelfs add` (loopback)", "-", ("add", t), None,
                     t, "seconds", "< 1 s", "lower", 1.0)
        one, split = self.get("14", "-", "single_s"), self.get("14", "-", "split_s")
        if split:
            n = self.meta.get("row14_shards", "?")
            ratio = summary(self.paired(split, one, lambda sv, ov: sv / ov), "x")
            self.add("14", f"cold llama.cpp-style load, {n} shards ÷ one file, capped origin", "-",
                     (f"{n} shards", summary(list(split.values()), "s")),
                     ("one file", summary(list(one.values()), "s")), ratio,
                     "set ÷ single time", "≤ 1.05", "lower", 1.05)
        # Row 7: peak RSS.
        h = self.get("7", "-", "hwm_mib")
        if h:
            s = summary(list(h.values()), "MiB")
            base = summary(list(self.get("7", "-", "base_mib").values()), "MiB")
            self.add("7", f"daemon peak RSS (VmHWM) during a cold {size:.0f} MiB fetch", "-",
                     ("VmHWM", s), ("VmRSS after mount", base), s, "MiB", "≤ 64", "lower", 64)
        # Row 8: page cache growth.
        for mode in ("pt", "off"):
            m = self.get("8", mode, "mount_growth")
            d = self.get("8", mode, "direct_growth")
            if not m:
                continue
            s = summary(list(m.values()), "x")
            self.add("8", "page cache added by one read through the mount ÷ size", mode,
                     ("mount", s), ("direct read", summary(list(d.values()), "x")),
                     s, "cache growth ÷ model size", "≤ 1.1", "lower", 1.1)
        # Row 9: rclone.
        skipped = self.meta.get("rclone_skipped")
        if skipped:
            self.add("9", "rclone mount :http: --vfs-cache-mode full", "rclone", None, None, None, "",
                     "ahead on every row", "higher", None, note="skipped: " + skipped)
        for num, metric, what, kind in (
                ("1", "warm_s", "vs rclone: warm sequential read", "tput"),
                ("2", "cold_s", "vs rclone: cold sequential read", "tput"),
                ("3", "mmap_ms", "vs rclone: mmap random touches, warm", "time"),
                ("4", "first_s", "vs rclone: first open + read all", "time")):
            r = self.get("9", "rclone", metric)
            mf = self.get("9", "modelfs", metric)
            if not r or not mf:
                continue
            if kind == "tput":
                ratio = summary(self.paired(mf, r, lambda a, b: b / a), "x")
                self.add("9", what, "rclone",
                         ("modelfs", summary(self.tput(mf.values()), "MiB/s")),
                         ("rclone", summary(self.tput(r.values()), "MiB/s")), ratio,
                         "modelfs ÷ rclone throughput", "> 1 (ahead)", "higher", 1.0)
            else:
                unit = "ms" if metric == "mmap_ms" else "s"
                ratio = summary(self.paired(mf, r, lambda a, b: a / b), "x")
                self.add("9", what, "rclone",
                         ("modelfs", summary(list(mf.values()), unit)),
                         ("rclone", summary(list(r.values()), unit)), ratio,
                         "modelfs ÷ rclone time", "< 1 (ahead)", "lower", 1.0)
        self.fleet()

    def fleet(self):
        """Row 16: a fleet sharing one host's server as mirror."""
        slow, lone = self.get("16", "-", "slowest_s"), self.get("16", "-", "lone_s")
        if not slow:
            return
        hosts = self.meta.get("row16_hosts", "?")
        ratio = summary(self.paired(slow, lone, lambda s_, l_: s_ / l_), "x")
        self.add("16", f"{hosts} hosts at once via one modelfs serve: slowest ÷ one host alone", "-",
                 ("slowest host", summary(list(slow.values()), "s")),
                 ("one host alone", summary(list(lone.values()), "s")), ratio,
                 "slowest ÷ lone time", "≤ 1.5", "lower", 1.5)
        cpu, cores = self.get("16", "-", "fleet_cpu_s"), self.get("16", "-", "fleet_cores")
        if cpu:
            self.add("16", f"{hosts} hosts at once: CPU the fleet's processes used ÷ the slowest host's"
                     f" wall time (cores busy; this machine has {os.cpu_count()})", "-",
                     ("fleet CPU", summary(list(cpu.values()), "s")), None,
                     summary(list(cores.values()), "cores"), "cores busy", "(information)",
                     "lower", None)
        sent = summary(list(self.get("16", "-", "fleet_sent_x").values()), "x")
        self.add("16", f"{hosts} hosts at once: bytes the origin sent ÷ size", "-",
                 ("fleet", sent), None, sent, "origin bytes ÷ size", "1.0", "lower", 1.02)

        # Row 15: choosing eviction victims among 10,000 blobs (`modelfs du --bench-plan`).
        p = self.get("15", "-", "plan_ms")
        if p:
            self.add("15", "choosing eviction victims among 10,000 blobs", "-",
                     ("plan", summary(list(p.values()), "ms")), None, None,
                     "", "< 100 ms", "lower", None,
                     note="met" if max(p.values()) < 100 else "NOT met")

    def table(self):
        hdr = ["#", "what", "mode", "modelfs / measured, median [min-max]", "reference",
               "ratio, median [min-max]", "goal", "met"]
        lines = []
        for r in self.rows:
            def cell(x):
                if not x or not x[1]:
                    return ""
                label, s = x
                digits = 0 if s["unit"] in ("MiB/s", "GETs") else (1 if s["unit"] == "MiB" else 3)
                return f"{label}: {fmt(s, digits)} {s['unit']}"
            ratio = r["ratio"]
            rdig = 0 if ratio and ratio["unit"] in ("GETs", "MiB") else 3
            met = {True: "yes", False: "NO", None: ""}[r["meets_goal"]]
            lines.append([r["row"], r["what"], r["mode"], cell(r["measured"]), cell(r["reference"]),
                          (fmt(ratio, rdig) + (f" ({r['ratio_is']})" if r["ratio_is"] else "")) if ratio else r["note"],
                          r["goal"], met])
        widths = [max(len(str(x[i])) for x in lines + [hdr]) for i in range(len(hdr))]
        out = ["| " + " | ".join(h.ljust(w) for h, w in zip(hdr, widths)) + " |",
               "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        for l in lines:
            out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(l, widths)) + " |")
        return "\n".join(out)


def show(samples, meta, row, mode, run, suffix):
    """The progress line bench.sh prints after one run of one row."""
    size_mib = float(meta.get("size_mib", "0"))

    def v(metric, r=row, m=mode):
        return samples.get((r, m, metric), {}).get(run)

    def mibs(secs):
        return f"{size_mib / secs:.0f} MiB/s" if secs else "n/a"

    if row in ("1", "2"):
        line = f"{mode} run {run}: mount {mibs(v('mount_s'))}, direct {mibs(v('direct_s'))}"
        r = v("warm_s" if row == "1" else "cold_s", "9", "rclone")
        if mode == "pt" and r is not None:
            line += f", rclone {mibs(r)}"
    elif row == "3":
        line = f"{mode} run {run}: mount {v('mount_ms'):.3f} ms, direct {v('direct_ms'):.3f} ms"
        r = v("mmap_ms", "9", "rclone")
        if mode == "pt" and r is not None:
            line += f", rclone {r:.3f} ms"
    elif row == "4":
        line = (f"run {run}: modelfs {v('modelfs_s'):.3f} s, curl -o {v('curl_s'):.3f} s"
                f" (with fsync {v('curl_fsync_s'):.3f} s),"
                f" daemon VmHWM {v('hwm_mib', '7'):.0f} MiB, CPU s: curl {v('curl_cpu_s'):.2f}"
                f" + nginx {v('nginx_cpu_for_curl_s'):.2f}, modelfs {v('modelfs_cpu_s'):.2f}"
                f" + nginx {v('nginx_cpu_for_modelfs_s'):.2f}")
        r = v("first_s", "9", "rclone")
        if r is not None:
            line += f", rclone {r:.3f} s"
    elif row == "5":
        line = (f"run {run}: single {v('single_s'):.3f} s; {meta.get('row5_openers', '?')} openers:"
                f" fastest {v('fastest_s'):.3f} s, slowest {v('slowest_s'):.3f} s;"
                f" origin GETs {v('gets'):.0f} (one opener: {v('one_gets') or 0:.0f}),"
                f" bytes {v('sent_x') or 0:.4f} x size")
    elif row == "6":
        line = (f"{mode} run {run}: ls -l {v(f'ls_{mode}_s', m='-'):.3f} s,"
                f" stat of every entry {v(f'stat_{mode}_s', m='-'):.3f} s")
    elif row == "10" and mode == "idle":
        ticks = v("idle_ticks_after", m="-") - v("idle_ticks_before", m="-")
        line = (f"RSS {v('rss_mib', m='-'):.0f} MiB once mounted; idle: {ticks:.0f} ticks in"
                f" {meta.get('row10_idle_window_s', '20')} s"
                f" ({v('idle_cpu_pct', m='-'):.2f}% of a core)")
    elif row == "10":
        line = f"run {run}: ls -l {v('ls_s'):.3f} s"
        if v("tmpfs_big_ls_s") is not None:
            line += (f"; tmpfs: 100k {v('tmpfs_big_ls_s'):.3f} s,"
                     f" 10k {v('tmpfs_small_ls_s'):.3f} s")
    elif row in ("11", "12"):
        line = f"run {run}: first open {v('modelfs_s'):.3f} s"
        if v("curl_s") is not None:
            line += f", curl -o {v('curl_s'):.3f} s"
        line += (f", aria2c -x16 {v('aria2_s'):.3f} s, with --checksum {v('aria2_checksum_s'):.3f} s;"
                 f" origin sent {v('mount_sent_x'):.4f} x size in {v('modelfs_gets'):.0f} GETs"
                 f" for the first open ({v('aria2_sent_x'):.4f} x for aria2c),"
                 f" daemon VmHWM {v('mount_hwm_mib'):.0f} MiB")
    elif row == "16":
        line = (f"run {run}: slowest of the fleet {v('slowest_s'):.3f} s, one host alone"
                f" {v('lone_s'):.3f} s; origin sent {v('fleet_sent_x'):.4f} x size for the fleet")
        if v("fleet_cpu_s") is not None:
            line += f"; the fleet used {v('fleet_cpu_s'):.2f} CPU s ({v('fleet_cores'):.2f} cores busy)"
    elif row == "13":
        line = (f"run {run}: add with facts {v('add_s'):.3f} s, origin sent"
                f" {v('facts_sent_mib'):.3f} MiB in {v('facts_gets'):.0f} GETs")
    elif row == "14":
        line = (f"run {run}: {meta.get('row14_shards', '?')} shards {v('split_s'):.3f} s,"
                f" one file {v('single_s'):.3f} s")
    elif row == "8":
        line = (f"{mode} run {run}: Cached grew by {v('mount_growth'):.4f} x the model size"
                f" through the mount, {v('direct_growth'):.4f} x reading the blob")
    else:
        line = f"row {row} run {run}: (no progress line)"
    print("   " + line + suffix)


def main():
    if sys.argv[1] == "show":
        workdir, row, mode, run = sys.argv[2:6]
        samples, meta = load(workdir)
        suffix = " ".join(sys.argv[6:])
        show(derive(samples, meta), meta, row, mode, run, " " + suffix if suffix else "")
        return
    workdir, out_json = sys.argv[1], sys.argv[2]
    samples, meta = load(workdir)
    samples = derive(samples, meta)
    rep = Report(samples, meta)
    rep.build()
    print(rep.table())
    raw = defaultdict(dict)
    for (row, mode, metric), runs in samples.items():
        raw[f"{row}/{mode}/{metric}"] = runs
    with open(out_json, "w") as f:
        json.dump({"meta": meta, "rows": rep.rows, "raw": raw}, f, indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
