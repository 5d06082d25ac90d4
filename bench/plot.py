#!/usr/bin/python3
"""Plots CPU-seconds per million samples and RSS bytes per series per scraper from a results
JSON file written by `agentctl-bench run`: one bar group per (series, interval), one bar per
scraper. Usage: bench/plot.py RESULTS.json OUT.png"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"agentctl": "#2a7ab0", "prometheus": "#e6522c", "vmagent": "#6a3d9a"}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py RESULTS.json OUT.png")
    with open(sys.argv[1]) as f:
        report = json.load(f)
    runs = report["runs"]
    groups = []
    for r in runs:
        key = (r["series"], r["interval_s"])
        if key not in groups:
            groups.append(key)
    scrapers = []
    for r in runs:
        if r["scraper"] not in scrapers:
            scrapers.append(r["scraper"])
    width = 0.8 / max(len(scrapers), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [
        ("cpu_s_per_million", "CPU-seconds per million samples", 1.0),
        ("rss_bytes_per_series", "RSS bytes per active series", 400.0),
    ]
    for ax, (field, title, target) in zip(axes, panels):
        for i, s in enumerate(scrapers):
            xs, ys = [], []
            for g, key in enumerate(groups):
                for r in runs:
                    if r["scraper"] == s and (r["series"], r["interval_s"]) == key:
                        xs.append(g + (i - (len(scrapers) - 1) / 2) * width)
                        ys.append(r[field])
            bars = ax.bar(xs, ys, width, label=s, color=COLORS.get(s))
            ax.bar_label(bars, fmt="%.2f" if field.startswith("cpu") else "%.0f", fontsize=7)
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.text(-0.45, target, "agentctl target", fontsize=7, va="bottom", ha="left", color="grey")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{s // 1000}k series\nevery {i} s" for s, i in groups])
        ax.set_title(title)
        ax.legend(fontsize=8)
    mode = report.get("mode", "")
    note = " (development quick run)" if mode == "quick" else ""
    fig.suptitle(f"agentctl vs Prometheus agent vs vmagent, {report.get('date', '')[:10]}{note}")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
