"""The notebook's story, from synthetic ledgers (no replay needed): turning points of every kind, an
off-scale failure kept out of the plot's range and called out beside it, tracks with their best,
and every point of a plot named with its label clear of every other."""

import math
from types import SimpleNamespace

import pytest

from provenance.lab.site import pages


def run(i: int, label: str, seg: float, pose: float, rate: float, size: int, verdict=None, prev=None, parent=None,
        track="codec", grade="A++", notes=None, era=None):
    score = 100 * seg + math.sqrt(10 * pose) + 25 * rate
    rec = SimpleNamespace(result=SimpleNamespace(segnet=seg, posenet=pose, rate=rate, canonical_score=score))
    return SimpleNamespace(sha256=f"{i:02x}" * 32, blake3=f"{i:02x}" * 32, label=label, record=rec, score=score,
                           archive_bytes=size, verdict=verdict, previous_frontier=prev, parent=parent, track=track,
                           grade=grade, notes=notes, reason=None, era=era)


@pytest.fixture
def ledger():
    s = lambda i: f"{i:02x}" * 32  # noqa: E731
    return [run(1, "baseline", 0.03, 0.5, 0.10, 90_000, "promote", notes="the clip re-zipped"),
            run(2, "smaller", 0.02, 0.3, 0.04, 40_000, "promote", prev=s(1), parent=s(1)),
            run(3, "nudge", 0.0199, 0.3, 0.04, 40_010, "promote", prev=s(2), parent=s(2)),  # < 1%: no turning point
            run(4, "broken", 0.95, 9.0, 0.04, 40_000, "reject", prev=s(3), parent=s(3), track="inflate"),
            run(5, "repaired", 0.018, 0.28, 0.04, 40_000, "promote", prev=s(3), parent=s(4), track="inflate"),
            run(6, "coarse", 0.04, 0.6, 0.02, 20_000, "reject", prev=s(5), parent=s(3))]


def test_turning_points_of_every_kind_in_order(ledger):
    tps = pages.turning_points(ledger)
    assert [(t["kind"], t["name"]) for t in tps] == [("baseline", "baseline"), ("promotion", "smaller"),
                                                    ("failure", "broken"), ("repair", "repaired")]
    base, promo, fail, repair = tps
    assert base["delta"] is None and "At 90,000 bytes" in base["why"] and base["notes"] == "the clip re-zipped"
    assert promo["against"] == "baseline" and float(promo["delta"]) < 0
    assert "term" in promo["why"] and "bytes -50,000" in promo["why"]  # which term moved, at what cost in bytes
    assert fail["off_scale"] and fail["why"].startswith("The SegNet term") and float(fail["delta"]) > 50
    assert repair["against"] == "broken" and float(repair["delta"]) < -50


def test_off_scale_is_named_and_left_out_of_the_plot(ledger, monkeypatch):
    from provenance.lab.site import plots
    assert [r.label for r in pages.off_scale(ledger)] == ["broken"]
    assert pages.off_scale(ledger[:2]) == []  # two runs have no scale to be off
    plt = plots._mpl()
    limits, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (limits.append(fig.axes[0].get_ylim()), close(fig)))
    svg = plots.score_vs_bytes(ledger, ledger[4].sha256)
    assert limits and limits[0][1] < ledger[3].score / 4, "the axis stays on the operating range"
    broken = ledger[3].sha256[:16]
    assert f"sb-{broken}" not in svg and f"lbl-{broken}" not in svg and "broken" not in svg
    for r in ledger[:3] + ledger[4:]:  # every other point drawn and named
        assert f'id="sb-{r.sha256[:16]}"' in svg and f'id="lbl-{r.sha256[:16]}"' in svg
    assert "rejected" in svg and "rejectd" not in svg
    # the page says where it went
    from jinja2 import Environment, FileSystemLoader
    from provenance.lab.site.build import HERE
    html = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True).get_template(
        "index.html.j2").render(story={"off_scale": [{"name": "broken", "href": "runs/x.html", "score": ledger[3].score}],
                                       "turning_points": pages.turning_points(ledger), "tracks": pages.tracks(ledger),
                                       "outcome": "o"}, counts={}, total=0, evidence_total=0)
    note = html[html.index('id="off-scale"'):]
    assert "broken" in note[:400] and repr(ledger[3].score) in note[:400]


def test_two_runs_at_one_spot_are_both_named_apart(ledger):
    from matplotlib.transforms import Bbox
    from provenance.lab.site import plots
    plt = plots._mpl()
    fig, ax = plt.subplots(figsize=(5.2, 4))
    pts = [(2000, 1.20, "half", "lbl-a", "k"), (2000, 1.21, "half_bilinear", "lbl-b", "k"),
           (2100, 1.19, "half_other", "lbl-c", "k"), (9000, 3.0, "copy", "lbl-d", "k")]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xscale("log")
    plots.place_labels(fig, ax, pts)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_gid(): plots._text_box(t, renderer) for t in ax.texts}
    assert sorted(boxes) == ["lbl-a", "lbl-b", "lbl-c", "lbl-d"]
    for a in boxes:
        for b in boxes:
            assert a == b or not Bbox.intersection(boxes[a], boxes[b]), (a, b)
    plt.close(fig)


def test_tracks_and_the_outcome(ledger):
    tracks = {t["name"]: t for t in pages.tracks(ledger)}
    assert tracks["codec"]["best"] == "nudge" and [h["name"] for h in tracks["codec"]["history"]] == \
        ["baseline", "smaller", "nudge", "coarse"]
    assert tracks["inflate"]["best"] == "repaired"
    text = pages.outcome(ledger[4], ledger, "CPU on Linux x86_64")
    assert "The frontier is repaired" in text and "40,000 bytes" in text and "6 measured runs" in text
    assert pages.outcome(None, ledger, None).startswith("No run has set a frontier yet")


def test_eras_group_tracks_in_the_order_they_began(ledger):
    for r in ledger[:3]:
        r.era = "1: codec sweep"
    for r in ledger[3:]:
        r.era = "2: inflate layout"
    groups = [(g["era"], g["name"], g["best"]) for g in pages.tracks(ledger)]
    assert groups == [("1: codec sweep", "codec", "nudge"), ("2: inflate layout", "inflate", "repaired"),
                      ("2: inflate layout", "codec", "coarse")]


def test_an_era_annotation_reaches_the_ledger_rows(tmp_path):
    """`prov ledger annotate --era` is stored, logged and read back, from the indexed rows and from
    the documents alike."""
    from conftest import prov_json, report
    rep = tmp_path / "report.txt"
    rep.write_bytes(report())
    store = tmp_path / "store"
    rec = prov_json("adjudicate", rep, store=store)
    prov_json("ledger", "annotate", rec["digest"]["sha256"], "--label", "a", "--track", "codec", "--era", "1: x265",
              store=store)
    shown = prov_json("ledger", "show", store=store)
    assert [(r["label"], r["track"], r["era"]) for r in shown] == [("a", "codec", "1: x265")]
    from provenance.lab import ledger as lg
    from provenance.store.objects import Store
    s = Store(store)
    assert [r.era for r in lg._runs_full(s)] == [r.era for r in lg.runs(s)] == ["1: x265"]
    s.close()
