#!/usr/bin/env python3
"""The report of bench/run.sh: tables (Markdown) and plots (SVG) from its raw
results, never edited by hand.

    python3 bench/report.py --raw DIR/raw.tsv --out DIR [--benchmarks BENCHMARKS.md]

Reads the tab-separated records run.sh wrote (meta, tps, wal, waldump, pgss,
graphile, pipeline), writes DIR/report.md and DIR/*.svg, and with
--benchmarks replaces the part of that file between the markers
`<!-- bench/run.sh: begin -->` and `<!-- bench/run.sh: end -->`.
Standard library only: the SVG is written here (bars and labels, nothing
more), so the report needs no plotting package.
"""

import argparse
import collections
import datetime
import html
import json
import os
import statistics
import sys

BEGIN = "<!-- bench/run.sh: begin -->"
END = "<!-- bench/run.sh: end -->"

NAMES = {
    "read-byok": "`byok.use_key` (byok_consumer login)",
    "read-byok-vault": "`byok.use_key`, key stored in Supabase Vault (byok_consumer login)",
    "read-vault": "`vault.decrypted_secrets` by id",
    "read-pgcrypto": "pgcrypto `pgp_sym_decrypt` from a mapping table",
    "read-plain": "plain `SELECT` from a mapping table",
    "store-byok-superuser": "`byok.add_key` as superuser",
    "store-byok-postgrest": "`byok.add_key`, PostgREST path (authenticated, JWT sub, members table)",
    "store-vault": "`vault.create_secret`",
    "store-pgcrypto": "pgcrypto `pgp_sym_encrypt` INSERT",
    "store-plain": "plain `INSERT`",
}
SHORT = {
    "read-byok": "pg_byok use_key",
    "read-byok-vault": "pg_byok use_key (Vault-stored)",
    "read-vault": "vault decrypted_secrets",
    "read-pgcrypto": "pgcrypto decrypt",
    "read-plain": "plain SELECT",
    "store-byok-superuser": "pg_byok add_key (superuser)",
    "store-byok-postgrest": "pg_byok add_key (PostgREST)",
    "store-vault": "vault create_secret",
    "store-pgcrypto": "pgcrypto encrypt+INSERT",
    "store-plain": "plain INSERT",
}
READS = ["read-byok", "read-byok-vault", "read-vault", "read-pgcrypto", "read-plain"]
STORES = ["store-byok-superuser", "store-byok-postgrest", "store-vault", "store-pgcrypto", "store-plain"]


def load(path):
    recs = collections.defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if fields and fields[0]:
                recs[fields[0]].append(fields[1:])
    return recs


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def ms(value):
    """A latency in milliseconds, to 0.1 ms (the JSON carries float noise)."""
    return f"{value:.1f}" if isinstance(value, (int, float)) else "–"


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def keys_label(n):
    n = int(n)
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


class Report:
    def __init__(self, recs):
        self.r = recs
        self.meta = {m[0]: m[1] for m in recs["meta"] if len(m) >= 2}
        # tps[(level, sync, variant)] -> [tps...]
        self.tps = collections.defaultdict(list)
        self.lat = collections.defaultdict(list)
        for level, sync, variant, _run, tps, lat in (t[:6] for t in recs["tps"] if len(t) >= 6):
            if num(tps) is not None:
                self.tps[(level, sync, variant)].append(num(tps))
                self.lat[(level, sync, variant)].append(num(lat))
        self.levels = sorted({k[0] for k in self.tps}, key=int)
        self.vault = self.meta.get("vault", "not installed") != "not installed"

    def mean_tps(self, level, sync, variant):
        v = self.tps.get((level, sync, variant))
        return statistics.mean(v) if v else None

    def spread(self, level, sync, variant):
        v = self.tps.get((level, sync, variant))
        if not v or len(v) < 2:
            return ""
        return f" ({fmt(min(v))}–{fmt(max(v))})"

    def ratio(self, level, sync, variant, base):
        a, b = self.mean_tps(level, sync, variant), self.mean_tps(level, sync, base)
        return a / b if a and b else None

    def calls_table(self, variants, base):
        out = [
            f"| call | stored keys | tps, synchronous_commit on | × {SHORT[base]} | tps, off | × {SHORT[base]} |",
            "|---|---|---|---|---|---|",
        ]
        for v in variants:
            for level in self.levels:
                cells = [NAMES[v], keys_label(level)]
                for sync in ("on", "off"):
                    t = self.mean_tps(level, sync, v)
                    if v.endswith("-vault") and not self.vault:
                        cells += ["not installed", "–"]
                        continue
                    r = self.ratio(level, sync, v, base)
                    cells += [fmt(t) + self.spread(level, sync, v), "–" if r is None else f"{r:.2f}×"]
                out.append("| " + " | ".join(cells) + " |")
        return "\n".join(out)

    def targets(self):
        out = ["| target | stored keys | synchronous_commit on | off |", "|---|---|---|---|"]
        rows = [
            ("`use_key` ≥ 1.0× `vault.decrypted_secrets`", "read-byok", "read-vault"),
            # Stricter than the Vault backend's criterion (below): as fast
            # as reading Vault directly, pg_byok's checks included.
            ("`use_key` on a vault-stored key ≥ 1.0× `vault.decrypted_secrets`", "read-byok-vault",
             "read-vault"),
            ("`add_key` (PostgREST path) ≥ 1.0× `vault.create_secret`", "store-byok-postgrest", "store-vault"),
            ("`add_key` (superuser) ≥ 1.0× `vault.create_secret`", "store-byok-superuser", "store-vault"),
        ]
        for label, v, base in rows:
            for level in self.levels:
                cells = [label, keys_label(level)]
                for sync in ("on", "off"):
                    if not self.vault:
                        cells.append("vault not installed")
                        continue
                    r = self.ratio(level, sync, v, base)
                    cells.append("–" if r is None else f"{r:.2f}× {'met' if r >= 1.0 else '**missed**'}")
                out.append("| " + " | ".join(cells) + " |")
        # Issue 10's criterion: use_key on a vault-stored key costs no more
        # than reading vault.decrypted_secrets by id plus pg_byok's own
        # checks. Time per call is clients / tps; pg_byok's own checks are
        # native use_key's time less a plain SELECT's (the round trip both
        # share), so the allowance is t(vault read) + t(use_key) - t(plain).
        for level in self.levels:
            cells = ["`use_key` on a vault-stored key ≤ Vault's read + pg_byok's checks "
                     "(allowance ÷ time per call)", keys_label(level)]
            for sync in ("on", "off"):
                r = self.allowance_ratio(level, sync) if self.vault else None
                if not self.vault:
                    cells.append("vault not installed")
                else:
                    cells.append("–" if r is None else f"{r:.2f}× {'met' if r >= 1.0 else '**missed**'}")
            out.append("| " + " | ".join(cells) + " |")
        wal = self.wal_rows()
        for level in self.levels:
            b = wal.get((level, "store-byok-superuser"))
            vb = wal.get((level, "store-vault"))
            if b and vb:
                verdict = "met" if b[0] <= vb[0] else "**missed**"
                out.append(f"| WAL per stored key ≤ Vault's | {keys_label(level)} | "
                           f"{fmt(b[0])} B vs {fmt(vb[0])} B: {verdict} | |")
            elif b:
                out.append(f"| WAL per stored key ≤ Vault's | {keys_label(level)} | "
                           f"{fmt(b[0])} B; vault not installed | |")
        return "\n".join(out)

    def allowance_ratio(self, level, sync):
        tps = [self.mean_tps(level, sync, v) for v in ("read-vault", "read-byok", "read-plain", "read-byok-vault")]
        if not all(tps):
            return None
        vault, byok, plain, byok_vault = (1.0 / t for t in tps)
        return (vault + byok - plain) / byok_vault

    def first_use_table(self):
        rows = {}
        for level, v, secs in (t[:3] for t in self.r.get("firstuse", []) if len(t) >= 3):
            if num(secs) is not None:
                rows[(level, v)] = num(secs)
        if not rows:
            return "No first-use pass in this run."
        out = ["| call | stored keys | one statement reading every key once: seconds | µs per key |",
               "|---|---|---|---|"]
        for v in READS:
            for level in sorted({k[0] for k in rows}, key=int):
                if (level, v) in rows:
                    secs = rows[(level, v)]
                    out.append(f"| {NAMES[v]} | {keys_label(level)} | {secs:.2f} | {secs * 1e6 / int(level):.0f} |")
        return "\n".join(out)

    def wal_rows(self):
        rows = {}
        for level, v, n, diff, records, fpi in (w[:6] for w in self.r["wal"] if len(w) >= 6):
            n = int(n)
            rows[(level, v)] = (int(diff) / n, int(records) / n, int(fpi))
        return rows

    def wal_table(self):
        rows = self.wal_rows()
        out = ["| stores | stored keys | WAL bytes per key | WAL records per key | full-page images (all adds) |",
               "|---|---|---|---|---|"]
        for level in self.levels:
            for v in STORES:
                if (level, v) in rows:
                    b, rec, fpi = rows[(level, v)]
                    out.append(f"| {NAMES[v]} | {keys_label(level)} | {fmt(b)} | {rec:.1f} | {fpi} |")
                elif v == "store-vault" and not self.vault:
                    out.append(f"| {NAMES[v]} | {keys_label(level)} | not installed | | |")
        return "\n".join(out)

    def waldump_table(self):
        by = collections.OrderedDict()
        for v, rmgr, desc, rel, tot in (w[:5] for w in self.r["waldump"] if len(w) >= 5):
            key = (v, rel if rel != "-" else "(none)", f"{rmgr} {desc}")
            c = by.setdefault(key, [0, 0])
            c[0] += 1
            c[1] += int(tot)
        if not by:
            return "(no pg_waldump records)"
        out = ["| one add | relation | record | count | bytes |", "|---|---|---|---|---|"]
        totals = collections.Counter()
        for (v, rel, what), (count, size) in by.items():
            out.append(f"| {SHORT.get(v, v)} | `{rel}` | {what} | {count} | {size:,} |")
            totals[v] += size
        for v, size in totals.items():
            out.append(f"| **{SHORT.get(v, v)}: total** | | | | **{size:,}** |")
        return "\n".join(out)

    def pgss_table(self):
        rows = [p for p in self.r["pgss"] if len(p) >= 5]
        if not rows:
            return "(no pg_stat_statements records)"
        out = ["| top level | calls | mean ms | total ms | statement |", "|---|---|---|---|---|"]
        for top, calls, mean, total, q in rows:
            q = q.replace("|", "\\|")
            out.append(f"| {'yes' if top == 't' else 'no'} | {int(calls):,} | {mean} | {total} | `{q}` |")
        return "\n".join(out)

    def perf_table(self):
        rows = [p for p in self.r["perf"] if len(p) >= 3]
        if not rows:
            return "(no perf profile: run with --perf, perf installed)"
        out = ["| perf, one backend (add_key, PostgREST path, synchronous_commit off) | % of samples |", "|---|---|"]
        for kind, pct, sym in rows:
            sym = sym.split()[0] if sym.split() else sym
            if sym.startswith("0x"):
                continue
            label = "self" if kind == "self" else "with callees"
            out.append(f"| `{sym}` ({label}) | {pct} |")
        return "\n".join(out)

    def pipeline_table(self):
        out = ["| validation pipeline | vendor latency | jobs | jobs/s | notes |", "|---|---|---|---|---|"]
        for g in self.r["graphile"]:
            latency, what = g[0], g[1] if len(g) > 1 else "skipped"
            version = g[2] if len(g) > 2 else ""
            if what in ("skipped", "failed"):
                out.append(f"| graphile-worker | {latency} ms | | {what} | |")
                continue
            d = json.loads(what)
            out.append(f"| graphile-worker {version} (concurrency {d['concurrency']}) | {latency} ms | "
                       f"{d['jobs']:,} | {d['per_s']:,} | {d['seconds']} s, {d.get('errors', 0)} job errors |")
        for p in self.r["pipeline"]:
            what = p[0] if p else "skipped"
            if what in ("skipped", "failed"):
                out.append(f"| pg_byok sidecar (bench/pipeline.rs) | | | {what} | "
                           f"{'not in this checkout' if what == 'skipped' else ''} |")
                continue
            try:
                d = json.loads(what)
            except json.JSONDecodeError:
                continue
            drain = d.get("drain") or {}
            trickle = d.get("trickle") or {}
            notes = [f"{d.get('sidecars', '?')} sidecar(s)"]
            if trickle:
                notes.append(f"trickle {trickle.get('rate_per_s')}/s: p50 {ms(trickle.get('p50_ms'))} ms, "
                             f"p99 {ms(trickle.get('p99_ms'))} ms")
            if d.get("sidecar_peak_rss_kb_max"):
                notes.append(f"peak RSS {d['sidecar_peak_rss_kb_max'] / 1024:.1f} MB")
            rate = drain.get("validations_per_s")
            keys = d.get("keys")
            out.append(f"| pg_byok sidecar, defaults | {d.get('latency_ms', '')} ms | "
                       f"{fmt(keys) if isinstance(keys, (int, float)) else ''} | "
                       f"{fmt(rate) if isinstance(rate, (int, float)) else '–'} | {', '.join(notes)} |")
        return "\n".join(out)

    def svg_bars(self, path, title, variants, unit="tps"):
        """Horizontal grouped bars: one group per variant, a bar per
        (level, sync) series."""
        series = [(level, sync) for level in self.levels for sync in ("on", "off")]
        colours = ["#1f77b4", "#aec7e8", "#d62728", "#ff9896", "#2ca02c", "#98df8a"]
        vals = {(v, s): self.mean_tps(s[0], s[1], v) for v in variants for s in series}
        top = max([x for x in vals.values() if x] or [1])
        bar_h, gap, left, width = 12, 14, 230, 460
        h = 50 + len(variants) * (len(series) * bar_h + gap) + 20 * len(series)
        e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{h}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="20" font-size="14" font-weight="bold">{html.escape(title)}</text>']
        y = 40
        for v in variants:
            e.append(f'<text x="10" y="{y + len(series) * bar_h / 2 + 4}">{html.escape(SHORT[v])}</text>')
            for i, s in enumerate(series):
                x = vals[(v, s)]
                w = 0 if not x else width * x / top
                e.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{colours[i % 6]}"/>')
                label = "not installed" if v.endswith("-vault") and not self.vault else fmt(x)
                e.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}">{label}</text>')
                y += bar_h
            y += gap
        for i, (level, sync) in enumerate(series):
            e.append(f'<rect x="10" y="{y}" width="10" height="10" fill="{colours[i % 6]}"/>')
            e.append(f'<text x="26" y="{y + 9}">{keys_label(level)} stored keys, '
                     f'synchronous_commit {sync} ({unit})</text>')
            y += 20
        e.append("</svg>")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(e) + "\n")

    def svg_wal(self, path):
        rows = self.wal_rows()
        items = [(f"{SHORT[v]}, {keys_label(level)}", rows[(level, v)][0])
                 for level in self.levels for v in STORES if (level, v) in rows]
        top = max([b for _, b in items] or [1])
        left, width, bar_h = 260, 420, 16
        h = 40 + len(items) * (bar_h + 4) + 10
        e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{h}" '
             f'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>',
             '<text x="10" y="20" font-size="14" font-weight="bold">WAL bytes per stored key</text>']
        y = 32
        for label, b in items:
            w = width * b / top
            e.append(f'<text x="10" y="{y + 12}">{html.escape(label)}</text>')
            e.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#1f77b4"/>')
            e.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}">{fmt(b)} B</text>')
            y += bar_h + 4
        e.append("</svg>")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(e) + "\n")

    def markdown(self, svg_prefix):
        m = self.meta
        when = self.measured_at.strftime("%Y-%m-%d %H:%M UTC")
        parts = [
            f"Generated by `bash bench/run.sh{' --quick' if m.get('mode') == 'quick' else ''}` on {when}: "
            f"pg_byok {m.get('pg_byok_commit', '?')} ({m.get('build', '?')} build), PostgreSQL "
            f"{m.get('postgres', '?')}, supabase_vault {m.get('vault', 'not installed')}, {m.get('cpus', '?')} CPUs; "
            f"pgbench `-M prepared -c 2 -j 2` over the unix socket, {m.get('runs', '?')} run(s) of "
            f"{m.get('seconds', '?')} s per variant, interleaved; tps is the mean of the runs (min–max). "
            f"Load average {m.get('load_start', '?')} at the start, {m.get('load_end', '?')} at the end; "
            f"the whole run took {int(m.get('duration_s', 0)) // 60} min {int(m.get('duration_s', 0)) % 60} s.",
            "### Targets (issue 11), ratios from this run",
            self.targets(),
            "### Reading a key",
            self.calls_table(READS, "read-vault" if self.vault else "read-plain"),
            f"![reads]({svg_prefix}reads.svg)",
            "Before each level's runs every stored key is read once by each read variant, one statement "
            "each (untimed by pgbench, timed here), and the usage worker's flush of those uses is waited "
            "for, so the runs above measure the steady state. The first use of a key in an hour is where "
            "pg_byok's record of uses writes (a `byok.key_usage` row, and `keys.last_used_at`, flushed "
            "by the background worker after this statement, so not in these seconds).",
            self.first_use_table(),
            "### Storing a key",
            self.calls_table(STORES, "store-vault" if self.vault else "store-plain"),
            f"![stores]({svg_prefix}stores.svg)",
            "### WAL per stored key",
            "pg_current_wal_lsn() difference over single-client adds, each its own transaction "
            "(synchronous_commit on), after the runs above (so pages already had their full-page image); "
            "records from pg_stat_wal.",
            self.wal_table(),
            f"![wal]({svg_prefix}wal.svg)",
            "### The WAL records of one add (pg_waldump)",
            self.waldump_table(),
            "### Where `add_key`'s time goes (pg_stat_statements, track = all, PostgREST path)",
            self.pgss_table(),
            "### perf: where a backend running `add_key` spends its time",
            self.perf_table(),
            "### The validation pipeline",
            self.pipeline_table(),
        ]
        return "\n\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--benchmarks")
    a = ap.parse_args()
    rep = Report(load(a.raw))
    # When the run ended (its last record is the raw file's last write), not
    # when this report was rendered: re-rendering a run must not re-date it.
    rep.measured_at = datetime.datetime.fromtimestamp(os.path.getmtime(a.raw), datetime.timezone.utc)
    rep.svg_bars(os.path.join(a.out, "reads.svg"), "Reading a key (tps)", READS)
    rep.svg_bars(os.path.join(a.out, "stores.svg"), "Storing a key (tps)", STORES)
    rep.svg_wal(os.path.join(a.out, "wal.svg"))
    with open(os.path.join(a.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(rep.markdown(""))
    if a.benchmarks:
        rel = os.path.relpath(a.out, os.path.dirname(os.path.abspath(a.benchmarks)) or ".")
        text = open(a.benchmarks, encoding="utf-8").read()
        if BEGIN not in text or END not in text:
            sys.exit(f"{a.benchmarks} has no {BEGIN} … {END} section")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(a.benchmarks, "w", encoding="utf-8") as f:
            f.write(head + BEGIN + "\n" + rep.markdown(rel + "/") + END + tail)


if __name__ == "__main__":
    main()
