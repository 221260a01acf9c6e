#!/usr/bin/env python3
"""report.py WORKDIR OUT_JSON: turns the raw samples scripts/bench.sh wrote
(WORKDIR/samples.tsv: row, mode, metric, run, value; WORKDIR/meta.tsv:
key, value) into the printed table and bench-results.json.

Ratios are computed per run from the paired measurements of that run (the
two sides of a comparison are measured back to back, alternating), then
summarised as median [min-max] like every other number. No thresholds:
the "goal" column is information, the exit status is 0."""
import json
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
            gets = summary(list(g.values()), "GETs")
            self.add("5", "origin GETs for 32 concurrent first opens", "-",
                     ("origin", gets), None, gets, "GET count", "exactly 1", "lower", None,
                     note="meets" if gets and gets["min"] == gets["max"] == 1 else "")
            if gets:
                self.rows[-1]["meets_goal"] = gets["min"] == gets["max"] == 1
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
                self.add("10", "`ls -l` of 100,001 entries vs 10,001 (row 6, idle)", "-",
                         ("100k", summary(list(big.values()), "s")),
                         ("10k", summary(list(small.values()), "s")), ratio,
                         "100k ÷ 10k time", "≤ 10", "lower", 10.0)
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


def main():
    workdir, out_json = sys.argv[1], sys.argv[2]
    samples, meta = load(workdir)
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
