"""Plots drawn by matplotlib into inline SVG (text as paths: no fonts, nothing external)."""

from __future__ import annotations

import io
import re

STYLE = {"promote": ("#2ca02c", "*", 160, "promoted"), "reject": ("#d62728", "X", 70, "rejected"),
         None: ("#7f7f7f", "o", 45, "other runs")}
# the legend under the axes, where no point or label can be behind it
BELOW = dict(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=11, frameon=False)
LABELLED = 40  # up to this many runs, every point carries its name beside it (beyond, hover titles and the ledger)


def place_labels(fig, ax, items: list[tuple[float, float, str, str, str]]) -> None:
    """Name each point (x, y, text, gid, colour) beside it. A label that would cover one placed
    before moves down or up a line at a time, with a leader line back to its point: two runs at the
    same spot are both named, never one on top of the other."""
    from matplotlib.transforms import Bbox
    fig.canvas.draw()  # the axes' final limits: labels are placed in screen space
    renderer = fig.canvas.get_renderer()
    marks = [ax.transData.transform((x, y)) for x, y, *_ in items]
    placed = [Bbox.from_bounds(px - 7, py - 7, 14, 14) for px, py in marks]  # no label covers a point
    steps = (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8)
    for x, y, text, gid, color in items:
        for step in steps:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(9, 4 - 15 * step), fontsize=10,
                              color=color, gid=gid, va="center", annotation_clip=False,
                              arrowprops=dict(arrowstyle="-", color="#666666", lw=0.6, shrinkA=1, shrinkB=4)
                              if step else None)
            box = _text_box(ann, renderer)
            # no free line within eight either way: the last one stays, moved furthest
            if step == steps[-1] or not any(box.expanded(1.0, 1.15).overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()


def _text_box(ann, renderer):
    """The label's own box (an annotation's extent would include its leader line)."""
    from matplotlib.text import Text
    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


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
    import os
    # one BLAS thread: no thread pool to spin beside the site's workers, nor to be forked mid-flight
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import matplotlib
    matplotlib.use("Agg")
    # sized to be read on a phone: a 5.2 in figure scaled to ~360 px keeps 12 pt text near 11 px
    matplotlib.rcParams.update({"svg.hashsalt": "comma-lab", "svg.fonttype": "path", "font.size": 12})
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


def _titled(svg: str, titles: dict[str, str]) -> str:
    """Name every point: a <title> inside the group matplotlib wrote for its gid."""
    from xml.sax.saxutils import escape
    for gid, title in titles.items():
        svg = re.sub(rf'(<g id="{re.escape(gid)}"[^>]*>)', lambda m: f"{m.group(1)}<title>{escape(title)}</title>",
                     svg, count=1)
    return svg


def _bytes_label(x: float, _pos=None) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:g}{unit}"
    return f"{x:g}"


def _name(r) -> str:
    from provenance.core.sanitize import redact_text  # a label is published: redacted like every annotation
    return redact_text(r.label or r.sha256[:12])


def score_vs_bytes(runs, frontier_sha: str | None) -> str:
    """Score against bytes, every point named; an off-scale run (pages.off_scale) is left out of the
    axes' range and named in the caption the page puts beside the plot."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5.2, 4))
    titles = {}
    from provenance.lab.site.pages import off_scale
    off = {r.sha256 for r in off_scale(runs)}
    runs = [r for r in runs if r.sha256 not in off]
    named = len(runs) <= LABELLED
    for verdict, (color, marker, size, label) in STYLE.items():
        pts = [r for r in runs if r.verdict == verdict and r.archive_bytes]
        if len(pts) > DENSE:  # thousands of markers would hide each other: draw where they are dense
            _density(ax, [r.archive_bytes for r in pts], [r.score for r in pts], color, f"{label} (density)")
            continue
        for i, r in enumerate(pts):
            gid = f"sb-{r.sha256[:16]}"
            ax.scatter([r.archive_bytes], [r.score], c=color, marker=marker, s=size,
                       label=label if i == 0 else None, edgecolors="black", linewidths=0.4, zorder=3, gid=gid)
            titles[gid] = (f"{_name(r)}: score {r.score!r}, {r.archive_bytes:,} bytes, {r.grade}"
                           + (f", {label}" if verdict else ""))
    f = next((r for r in runs if r.sha256 == frontier_sha), None)
    if f is not None and f.archive_bytes:
        ax.scatter([f.archive_bytes], [f.score], s=420, facecolors="none", edgecolors="#1f77b4",
                   linewidths=2, label="frontier", zorder=4, gid="sb-frontier")
        titles["sb-frontier"] = f"frontier {_name(f)}: {f.score!r}"
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("archive.zip bytes (log scale)")
    ax.set_ylabel("canonical score (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    if runs:
        ax.legend(**BELOW)
        ax.margins(x=0.12, y=0.12)
    if named:
        place_labels(fig, ax, [(r.archive_bytes, r.score, _name(r), f"lbl-{r.sha256[:16]}", STYLE[r.verdict][0])
                               for r in sorted(runs, key=lambda r: (r.archive_bytes, r.score)) if r.archive_bytes])
    svg = _titled(_svg(fig, "score against archive bytes"), titles)
    plt.close(fig)
    return svg


def trajectory(points: list[tuple[str, float]], title: str, branches: list[tuple[str, float, float]] = ()) -> str:
    """The frontier's turning points as a step line; rejected side branches (label, score, x) as red
    crosses beside the turning point they were judged against."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5.2, 4))
    titles = {}
    if points:
        ax.step(range(1, len(points) + 1), [s for _, s in points], where="post", color="#1f77b4",
                label="mainline (promotions)")
        labels = []
        for i, (label, s) in enumerate(points, 1):
            ax.scatter([i], [s], color="#1f77b4", zorder=3, gid=f"tp-{i}")
            titles[f"tp-{i}"] = f"turning point {i}: {label}, score {s!r}"
            labels.append((i, s, label, f"lbl-tp-{i}", "#1b1b1b"))
        for j, (label, s, x) in enumerate(branches):
            ax.scatter([x], [s], color="#d62728", marker="X", s=60, zorder=3, gid=f"br-{j}",
                       label="rejected side branch" if j == 0 else None, edgecolors="black", linewidths=0.4)
            titles[f"br-{j}"] = f"rejected: {label}, score {s!r}"
            labels.append((x, s, label, f"lbl-br-{j}", "#d62728"))
        ax.margins(x=0.3, y=0.15)
        ax.legend(**BELOW)
        place_labels(fig, ax, labels)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("turning point")
    ax.set_ylabel("canonical score")
    ax.set_title(title, fontsize=12)
    ax.grid(True, alpha=0.3)
    svg = _titled(_svg(fig, title), titles)
    plt.close(fig)
    return svg
