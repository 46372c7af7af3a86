"""Plots drawn by matplotlib into inline SVG (text as paths: no fonts, nothing external)."""

from __future__ import annotations

import io
import re

STYLE = {"promote": ("#2ca02c", "*", 160, "promoted"), "reject": ("#d62728", "X", 70, "rejected"),
         None: ("#7f7f7f", "o", 45, "other runs")}


_STYLE_ATTR = re.compile(r' style="([^"]*)"')
_STYLE_ELEM = re.compile(r"<style[^>]*>(.*?)</style>", re.S)


def _presentation(m: re.Match) -> str:
    pairs = [d.split(":", 1) for d in m.group(1).split(";") if ":" in d]
    return "".join(f' {k.strip()}="{v.strip()}"' for k, v in pairs)


def _svg(fig, label: str) -> str:
    """Inline SVG that a strict CSP (no inline styles) renders: style attributes and the <style>
    element become SVG presentation attributes."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    root_attrs = ""
    m = _STYLE_ELEM.search(text)
    if m:  # matplotlib's only rule: *{stroke-linejoin: round; stroke-linecap: butt}; inherited from the root
        rule = re.search(r"\{([^}]*)\}", m.group(1))
        root_attrs = _presentation(re.match(r"(.*)", rule.group(1))) if rule else ""
        text = text[:m.start()] + text[m.end():]
    text = _STYLE_ATTR.sub(_presentation, text)
    return re.sub(r"<svg ", f'<svg role="img" aria-label="{label}"{root_attrs} ', text, count=1)


def _mpl():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.hashsalt": "comma-lab", "svg.fonttype": "path", "font.size": 9})
    import matplotlib.pyplot as plt
    return plt


DENSE = 300  # above this many runs of one kind, a plot shows their density rather than each marker


def _density(ax, xs: list[float], ys: list[float], color: str, label: str) -> None:
    """A 2-D histogram on log-spaced byte bins, rasterized (an inline PNG, kilobytes however many runs)."""
    import math
    from matplotlib.colors import LinearSegmentedColormap, LogNorm
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    xbins = [10 ** (lo + (hi - lo) * i / 60) for i in range(61)]
    cmap = LinearSegmentedColormap.from_list("runs", ["#ffffff", color])
    ax.hist2d(xs, ys, bins=[xbins, 40], cmin=1, cmap=cmap, norm=LogNorm(), rasterized=True, zorder=2)
    ax.scatter([], [], c=color, marker="s", s=45, label=label)


def score_vs_bytes(runs, frontier_sha: str | None) -> str:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7, 4))
    for verdict, (color, marker, size, label) in STYLE.items():
        pts = [r for r in runs if r.verdict == verdict and r.archive_bytes]
        if len(pts) > DENSE:  # thousands of markers would hide each other: draw where they are dense
            _density(ax, [r.archive_bytes for r in pts], [r.score for r in pts], color, f"{label} (density)")
        elif pts:
            ax.scatter([r.archive_bytes for r in pts], [r.score for r in pts], c=color, marker=marker,
                       s=size, label=label, edgecolors="black", linewidths=0.4, zorder=3)
    f = next((r for r in runs if r.sha256 == frontier_sha), None)
    if f is not None:
        ax.scatter([f.archive_bytes], [f.score], s=420, facecolors="none", edgecolors="#1f77b4",
                   linewidths=2, label="frontier", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("archive.zip bytes (log scale)")
    ax.set_ylabel("canonical score (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    if runs:
        ax.legend(loc="best")
    ax.set_title("Score against bytes")
    svg = _svg(fig, "score against archive bytes")
    plt.close(fig)
    return svg


def trajectory(points: list[tuple[str, float]], title: str) -> str:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7, 3))
    if points:
        ax.step(range(1, len(points) + 1), [s for _, s in points], where="post", color="#1f77b4")
        ax.scatter(range(1, len(points) + 1), [s for _, s in points], color="#1f77b4", zorder=3)
        for i, (label, s) in enumerate(points, 1):
            ax.annotate(label, (i, s), textcoords="offset points", xytext=(4, 6), fontsize=7)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("turning point")
    ax.set_ylabel("canonical score")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    svg = _svg(fig, title)
    plt.close(fig)
    return svg
