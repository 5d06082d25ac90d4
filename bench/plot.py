#!/usr/bin/python3
"""Plots a results JSON file written by `agentctl-bench run` (SVG or PNG, by OUT's extension).

A run with several sizes at 5 s (the full run): scaling curves against the number of active
series, one line per scraper: CPU-seconds per million samples, RSS bytes per series, and bytes
written per sample (WAL growth and write_bytes); the 100k-at-1-s runs are marked apart.
Any other run (quick, allocators, one size): one bar group per (series, interval), one bar per
scraper, for CPU and RSS.

Usage: bench/plot.py RESULTS.json OUT.svg"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Same bytes for the same results: no random ids or dates in the SVG.
matplotlib.rcParams["svg.hashsalt"] = "agentctl-bench"
METADATA = {"svg": {"Date": None}, "png": {}}

# "before": an earlier agentctl build measured in the same run (--agentctl-variant before=...).
COLORS = {"agentctl": "#2a7ab0", "before": "#8fbcd9", "prometheus": "#e6522c", "vmagent": "#6a3d9a"}


def scrapers_of(runs):
    out = []
    for r in runs:
        if r["scraper"] not in out:
            out.append(r["scraper"])
    return out


def label(series):
    return f"{series // 1_000_000}M" if series >= 1_000_000 else f"{series // 1000}k"


def curves(report):
    runs = report["runs"]
    scrapers = scrapers_of(runs)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [
        ("cpu_s_per_million", "CPU-seconds per million samples", "%.2f"),
        ("rss_bytes_per_series", "RSS bytes per active series", "%.0f"),
    ]
    for ax, (field, title, fmt) in zip(axes[:2], panels):
        for s in scrapers:
            pts = sorted(
                (r["series"], r[field]) for r in runs if r["scraper"] == s and r["interval_s"] == 5
            )
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=f"{s} (5 s)", color=COLORS.get(s))
                for x, y in pts:
                    ax.annotate(fmt % y, (x, y), textcoords="offset points", xytext=(0, 5),
                                fontsize=7, ha="center", color=COLORS.get(s))
            fast = [(r["series"], r[field]) for r in runs if r["scraper"] == s and r["interval_s"] == 1]
            if fast:
                xs, ys = zip(*fast)
                ax.scatter(xs, ys, marker="x", s=50, color=COLORS.get(s), label=f"{s} (1 s)")
        ax.set_xscale("log")
        ax.set_xlabel("active series")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    for s in scrapers:
        pts = sorted(
            (r["series"], r["disk_bytes_per_sample"], r["write_bytes_per_sample"])
            for r in runs
            if r["scraper"] == s and r["interval_s"] == 5
        )
        if not pts or all(w == 0 for _, _, w in pts):
            continue
        xs, growth, written = zip(*pts)
        ax.plot(xs, growth, marker="o", color=COLORS.get(s), label=f"{s}: WAL growth")
        ax.plot(xs, written, marker="s", linestyle="--", color=COLORS.get(s), label=f"{s}: write_bytes")
    ax.axhline(8.0, color="grey", linestyle=":", linewidth=0.8)
    ax.text(0.01, 8.0, "target 8 B", transform=ax.get_yaxis_transform(), fontsize=7, va="bottom", color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("active series")
    ax.set_title("bytes per sample written to disk (5 s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7)
    return fig


def bars(report):
    runs = report["runs"]
    groups = []
    for r in runs:
        key = (r["series"], r["interval_s"])
        if key not in groups:
            groups.append(key)
    scrapers = scrapers_of(runs)
    width = 0.8 / max(len(scrapers), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    panels = [
        ("cpu_s_per_million", "CPU-seconds per million samples", "%.2f"),
        ("rss_bytes_per_series", "RSS bytes per active series", "%.0f"),
    ]
    cmap = plt.get_cmap("tab10")
    for ax, (field, title, fmt) in zip(axes, panels):
        for i, s in enumerate(scrapers):
            xs, ys = [], []
            for g, key in enumerate(groups):
                for r in runs:
                    if r["scraper"] == s and (r["series"], r["interval_s"]) == key:
                        xs.append(g + (i - (len(scrapers) - 1) / 2) * width)
                        ys.append(r[field])
            b = ax.bar(xs, ys, width, label=s, color=COLORS.get(s, cmap(i)))
            ax.bar_label(b, fmt=fmt, fontsize=6)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{label(s)} series\nevery {i} s" for s, i in groups])
        ax.set_title(title)
        ax.legend(fontsize=7)
    return fig


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py RESULTS.json OUT.svg")
    with open(sys.argv[1]) as f:
        report = json.load(f)
    sizes_at_5s = {r["series"] for r in report["runs"] if r["interval_s"] == 5}
    mode = report.get("mode", "")
    fig = curves(report) if len(sizes_at_5s) >= 2 and mode != "allocators" else bars(report)
    note = {"quick": " (development quick run)", "allocators": ": agentctl's global allocators"}.get(mode, "")
    fig.suptitle(f"agentctl vs Prometheus agent vs vmagent, {report.get('date', '')[:16]}{note}"
                 if mode != "allocators" else f"bench/run --allocators, {report.get('date', '')[:16]}{note}")
    fig.tight_layout()
    ext = sys.argv[2].rsplit(".", 1)[-1].lower()
    fig.savefig(sys.argv[2], dpi=110, metadata=METADATA.get(ext, {}))


if __name__ == "__main__":
    main()
