#!/usr/bin/python3
"""Draws the panels of a Grafana dashboard JSON from a Prometheus's data, laid out by the
panels' gridPos, into a PNG: a stand-in for a Grafana screenshot where Grafana is not at hand.

    render.py PROMETHEUS_URL START END DASHBOARD.json OUT.png

Time series panels are queried over [START, END] (unix seconds) with query_range; stat panels
show their last value. `$job` is `agentctl`, `$__rate_interval` 30s. Used by render-demo.
"""
import json
import math
import re
import sys
import urllib.parse
import urllib.request
from datetime import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

DARK = "#111217"
PANEL = "#181b1f"
TEXT = "#ccccdc"
GRID = "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]


def query_range(url, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt, metric):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def expr_of(target):
    return target["expr"].replace("$__rate_interval", "30s").replace("$job", "agentctl")


def fmt_value(v, unit):
    if unit == "bytes":
        for u in ["B", "KiB", "MiB", "GiB"]:
            if abs(v) < 1024:
                return f"{v:.0f} {u}"
            v /= 1024
        return f"{v:.1f} TiB"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return f"{v:.0f} s"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def main():
    url, start, end, dash_path, out = sys.argv[1:6]
    start, end = int(start), int(end)
    step = max(5, (end - start) // 300)
    dash = json.load(open(dash_path))
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42  # inches per grid row
    fig = plt.figure(figsize=(24 * 0.75, rows * unit_h + 0.8), facecolor=DARK)
    H = rows * unit_h + 0.8
    fig.text(0.01, 1 - 0.35 / H, dash["title"], color=TEXT, fontsize=16, weight="bold", va="center")
    fig.text(
        0.99,
        1 - 0.35 / H,
        f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M} – {datetime.fromtimestamp(end):%H:%M}, "
        "rendered from a real cluster by packaging/mixin/render-demo (not Grafana)",
        color="#8e8e8e",
        fontsize=9,
        ha="right",
        va="center",
    )
    top = 0.8 / H
    for p in panels:
        g = p["gridPos"]
        x0, w = g["x"] / 24, g["w"] / 24
        y0 = 1 - top - (g["y"] + g["h"]) * unit_h / H
        h = g["h"] * unit_h / H
        pad_x, pad_y = 0.004, 0.006
        if p["type"] == "row":
            fig.text(x0 + 0.005, y0 + h / 2, p["title"], color=TEXT, fontsize=12, weight="bold", va="center")
            continue
        ax = fig.add_axes([x0 + pad_x + 0.03, y0 + pad_y + 0.022, w - 2 * pad_x - 0.035, h - 2 * pad_y - 0.05])
        ax.set_facecolor(PANEL)
        for s in ax.spines.values():
            s.set_color(GRID)
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        ax.set_title(p["title"], color=TEXT, fontsize=9, loc="left", pad=4)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series = []
        for t in p.get("targets", []):
            for r in query_range(url, expr_of(t), start, end, step):
                xs = [datetime.fromtimestamp(float(v[0])) for v in r["values"]]
                ys = [float(v[1]) for v in r["values"]]
                series.append((legend(t.get("legendFormat"), r["metric"]), xs, ys))
        if p["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            if series:
                _, xs, ys = series[0]
                ax.fill_between(xs, ys, color="#73bf69", alpha=0.15)
                last = ys[-1]
                steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
                color = steps[0]["color"]
                for s in steps[1:]:
                    if last >= s["value"]:
                        color = s["color"]
                ax.text(0.5, 0.45, fmt_value(last, unit), transform=ax.transAxes, ha="center",
                        va="center", fontsize=20, weight="bold",
                        color={"green": "#73bf69", "red": "#f2495c"}.get(color, color))
            else:
                ax.text(0.5, 0.45, "no data", transform=ax.transAxes, ha="center", color="#8e8e8e")
            continue
        for i, (name, xs, ys) in enumerate(sorted(series, key=lambda s: s[0])):
            ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.2, label=name[:48])
        if not series:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#8e8e8e")
        ax.grid(color=GRID, linewidth=0.5)
        ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        # `u=unit`: bound now; the formatter runs at savefig, after the loop.
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _, u=unit: fmt_value(v, u)))
        # Room above the highest value, so a flat line is not drawn on the frame.
        highest = max((y for _, _, ys in series for y in ys if math.isfinite(y)), default=0)
        ax.set_ylim(bottom=0, top=highest * 1.15 if highest > 0 else 1)
        if series:
            ax.legend(fontsize=6, loc="upper left", facecolor=PANEL, edgecolor=GRID,
                      labelcolor=TEXT, ncol=1 if len(series) < 5 else 2)
    fig.savefig(out, dpi=80, facecolor=DARK)


if __name__ == "__main__":
    main()
