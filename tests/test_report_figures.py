"""Reports people can read: one centred colour scale per figure, clips that cover the classes with true, missed and
false-positive labels marked, one panel per head for curves, error bars for every head, tick labels apart, head
tables scoped to one store and subset with validation fallbacks marked, and a CLI that imports nothing heavy."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_report import DIM, GRID, _ledger_row, _synthetic_store

from embedcache import heads
from embedcache.probe import run_probe
from embedcache.report import build_report, choose_clips, figures
from embedcache.report.evidence import (
    CORRECT,
    FALSE_POSITIVE,
    MISSED,
    NEITHER,
    Background,
    clip_evidence,
    cover_classes,
    panel_classes,
    predicted_classes,
    token_energy,
)
from embedcache.report.tables import PerClassAP, SweepTrials, head_tables
from embedcache.store import TokenStore
from embedcache_cli.main import main as cli


# -- helpers ---------------------------------------------------------------------------------------------------
def tick_label_overlaps(figure: Figure) -> list[tuple[str, str]]:
    """Pairs of visible tick labels (per axis and direction) whose rendered boxes intersect."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    overlaps = []
    for axis in figure.axes:
        for labels in (axis.get_xticklabels(), axis.get_yticklabels()):
            shown = [t for t in labels if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in shown]
            for (a, box_a), (b, box_b) in itertools.combinations(zip(shown, boxes), 2):
                if box_a.overlaps(box_b):
                    overlaps.append((a.get_text(), b.get_text()))
    return overlaps


def similarity_images(figure: Figure) -> list:
    return [image for axis in figure.axes for image in axis.images if image.get_label() == "similarity"]


def colour_bars(figure: Figure) -> list:
    return [axis for axis in figure.axes if getattr(axis, "_colorbar", None) is not None]


def _protobin(seed: int = 0) -> heads.ProbeHead:
    return heads.create("protobin", num_classes=4, embed_dim=DIM, prototypes_per_class=2,
                        generator=torch.Generator().manual_seed(seed)).eval()


def _evidence(seed: int = 0):
    tokens = torch.randn(GRID[0] * GRID[1], DIM, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(len(tokens), dtype=torch.bool)
    return clip_evidence(_protobin(), tokens, mask), Background(token_energy(tokens, mask, GRID), "token energy",
                                                                None, "token-grid energy: test")


# -- prototype maps ----------------------------------------------------------------------------------------------
def test_prototype_figure_puts_every_panel_on_one_scale_centred_at_zero_with_one_colour_bar():
    evidence, background = _evidence()
    panels = [(c, NEITHER) for c in range(4)]
    figure = figures.prototype_figure("clip", panels, list("abcd"), evidence, background, GRID, "protobin")
    images = similarity_images(figure)
    assert len(images) == 4
    limit = figures.similarity_limit(evidence, range(4))
    columns = [evidence.best_prototype(c) for c in range(4)]
    assert limit == pytest.approx(np.nanmax(np.abs(evidence.similarity[:, columns])))
    for image in images:
        assert (image.norm.vmin, image.norm.vmax) == pytest.approx((-limit, limit))
        assert image.norm(0.0) == pytest.approx(0.5)  # cos 0 sits in the middle of the colormap
    # cos 0 is neutral: fully transparent over the spectrogram; strong evidence of either sign is coloured.
    cmap = images[0].get_cmap()
    assert cmap(0.5)[3] < 0.02 and cmap(0.0)[3] > 0.5 and cmap(1.0)[3] > 0.5
    assert len(colour_bars(figure)) == 1
    # A limit passed in (the report's, shared by all clips) wins over the figure's own.
    figure = figures.prototype_figure("clip", panels, list("abcd"), evidence, background, GRID, "protobin", limit=0.9)
    assert {(i.norm.vmin, i.norm.vmax) for i in similarity_images(figure)} == {(-0.9, 0.9)}


def test_panel_classes_adds_missed_true_labels_and_marks_each_status():
    probabilities = np.array([0.9, 0.2, 0.7, 0.1, 0.6])
    true = {0, 1, 3}
    predicted = predicted_classes(probabilities, multilabel=True)
    assert predicted == {0, 2, 4}
    panels = panel_classes(probabilities, true, predicted, top=2)
    # The two most probable, then the true classes outside them (most probable first).
    assert panels == [(0, CORRECT), (2, FALSE_POSITIVE), (1, MISSED), (3, MISSED)]
    assert panel_classes(probabilities, set(), predicted, top=4)[-1] == (1, NEITHER)
    assert predicted_classes(probabilities, multilabel=False) == {0}


def test_prototype_figure_colours_and_marks_correct_missed_and_false_positive_panels():
    evidence, background = _evidence()
    panels = [(0, CORRECT), (1, FALSE_POSITIVE), (2, MISSED), (3, NEITHER)]
    figure = figures.prototype_figure("clip", panels, list("abcd"), evidence, background, GRID, "protobin")
    titles = [axis._left_title for axis in figure.axes if axis.images]  # set_title(loc="left")
    for title, (_, status) in zip(titles, panels):
        mark, colour, _ = figures.STATUS_STYLE[status]
        assert title.get_text().startswith(f"{mark} ") and f"({status})" in title.get_text()
        assert title.get_color() == colour
    assert len({title.get_color() for title in titles}) == 4
    suptitle = figure.get_suptitle()
    assert "true: a, c" in suptitle and "predicted (p ≥ 0.5): a, b" in suptitle
    legend_texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert any("missed" in t for t in legend_texts) and any("false positive" in t for t in legend_texts)
    assert tick_label_overlaps(figure) == []


# -- which clips ---------------------------------------------------------------------------------------------------
def test_cover_classes_takes_for_each_class_in_turn_its_first_clip():
    labels = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1]])
    candidates = np.array([0, 1, 2, 3, 4, 5])
    assert cover_classes(labels, candidates, 10) == [(0, 0), (2, 1), (4, 3)]  # class 2 came with clip 2
    assert cover_classes(labels, candidates, 2) == [(0, 0), (2, 1)]
    assert cover_classes(labels, np.array([5, 2]), 10) == [(5, 0), (2, 1)]  # candidate order decides
    assert cover_classes(labels, candidates, 10) == cover_classes(labels, candidates, 10)  # deterministic


def test_choose_clips_covers_every_class_of_the_test_split(tmp_path):
    store = _synthetic_store(tmp_path / "syn.zarr")
    chosen = choose_clips(store, {"splits": {"test": "test"}}, None, 6)
    test = set(store.split_indices("test").tolist())
    assert all(index in test for index, _ in chosen)
    labels = np.asarray(store.labels)
    covered = set(np.flatnonzero(labels[[i for i, _ in chosen]].any(axis=0)).tolist())
    assert covered == set(np.flatnonzero(labels[sorted(test)].any(axis=0)).tolist()) == {0, 1, 2}
    assert [reason for _, reason in chosen] == [0, 1]  # s20 has a and c, s21 brings b
    # Not the first ids: the old choice drew the first test clips whatever their classes.
    assert choose_clips(store, {"splits": {"test": "test"}}, ["s03"], 6) == [(3, None)]


# -- curves --------------------------------------------------------------------------------------------------------
def _curve_rows(kinds=("linear", "attentive", "protobin"), lrs=(3e-3, 1e-2, 3e-2), seeds=(0, 1), epochs=5):
    rng = np.random.default_rng(0)
    rows = []
    for kind, lr, seed in itertools.product(kinds, lrs, seeds):
        for epoch in range(1, epochs + 1):
            rows.append({"head": f"{kind} lr={lr:g} wd=0.0001 seed={seed}", "kind": kind, "lr": str(lr),
                         "weight_decay": "0.0001", "seed": str(seed), "epoch": str(epoch),
                         "train_loss": str(1 / epoch + rng.random()), "valid_map": str(rng.random())})
    return rows


def test_eighteen_curves_get_one_panel_per_head_each_with_a_legend():
    rows = _curve_rows()
    assert len({row["head"] for row in rows}) == 18
    figure = figures.curve_figure(rows, "map", titles={"linear": "lin"}, chosen={"protobin": (3e-2, 1e-4)})
    metric_axes = [axis for axis in figure.axes if axis.get_ylabel() == "valid mAP"]
    loss_axes = [axis for axis in figure.axes if axis.get_ylabel() == "train loss"]
    assert len(metric_axes) == len(loss_axes) == 3  # one pair per head
    assert loss_axes[0].get_title(loc="left").startswith("lin: 3 config(s) x 2 seed(s)")
    configs = ["lr=0.003 wd=0.0001", "lr=0.01 wd=0.0001", "lr=0.03 wd=0.0001"]
    for axis, chosen in zip(metric_axes, (None, None, 2)):
        assert len(axis.lines) == 6  # 3 configurations x 2 seeds, no more
        assert len({tuple(np.atleast_1d(line.get_color())) for line in axis.lines}) == 3
        assert len({line.get_linestyle() for line in axis.lines}) == 2
        texts = [t.get_text() for t in axis.get_legend().get_texts()]
        assert texts == [c + (" (chosen)" if i == chosen else "") for i, c in enumerate(configs)] + ["seed 0", "seed 1"]
        thick = [line.get_linewidth() > 2 for line in axis.lines]
        assert thick == ([False] * 4 + [True] * 2 if chosen is not None else [False] * 6)
    assert metric_axes[0].get_shared_y_axes().joined(metric_axes[0], metric_axes[2])  # one metric scale
    assert tick_label_overlaps(figure) == []


def test_curve_group_strips_lr_wd_and_seed_but_keeps_options():
    assert figures.curve_group("protobin lr=0.01 wd=0.0001 seed=3") == "protobin"
    assert figures.curve_group("attentive lr=0.01 wd=0.0001 heads=4 seed=0") == "attentive heads=4"


# -- per-class AP --------------------------------------------------------------------------------------------------
def _series(n_heads: int, n_classes: int, long_names: bool = False) -> list[PerClassAP]:
    rng = np.random.default_rng(1)
    names = [("a rather long AudioSet-style class name, with commas " if long_names else "c") + str(i)
             for i in range(n_classes)]
    return [PerClassAP(f"head{h}", "run", "test", names, rng.random(n_classes), 0.1 * rng.random(n_classes),
                       seeds=3) for h in range(n_heads)]


@pytest.mark.parametrize("n_heads,n_classes", [(3, 6), (9, 40), (2, 300)])
def test_per_class_figure_has_error_bars_for_every_head_and_readable_ticks(n_heads, n_classes):
    series = _series(n_heads, n_classes, long_names=True)
    figure = figures.per_class_figure(series)
    axis = figure.axes[0]
    assert len(axis.containers) == n_heads
    for container, item in zip(axis.containers, series):
        assert container.has_xerr or container.has_yerr
        (bars,) = container.lines[2]
        segments = bars.get_segments()
        assert len(segments) == n_classes
        order = np.argsort(-series[0].ap, kind="stable")
        lengths = [np.ptp(np.asarray(segment)[:, 0 if container.has_xerr else 1]) for segment in segments]
        np.testing.assert_allclose(lengths, 2 * item.std[order], atol=1e-9)
    legend = [t.get_text() for t in axis.get_legend().get_texts()]
    assert legend == [f"head{h} (mAP {series[h].mean:.3f}; std over 3 seeds)" for h in range(n_heads)]
    assert tick_label_overlaps(figure) == []
    if n_classes <= 40:
        labels = [t.get_text() for t in axis.get_yticklabels()]
        assert len(labels) == n_classes and max(map(len, labels)) <= 28


def test_sweep_figure_has_one_colour_bar_and_no_crowded_log_ticks():
    lr = np.array([3e-3, 1e-2, 3e-2] * 2)
    trials = SweepTrials("s", "map", lr, np.full(6, 1e-4), np.linspace(0.3, 0.7, 6), ["complete"] * 6,
                         ["linear"] * 3 + ["protobin"] * 3)
    figure = figures.sweep_figure(trials)
    assert len(colour_bars(figure)) == 1
    assert tick_label_overlaps(figure) == []
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["0.003", "0.01", "0.03"]


# -- end to end: the figures a report draws --------------------------------------------------------------------
@pytest.fixture(scope="module")
def scoped_runs(tmp_path_factory) -> Path:
    """Three runs in one ledger: a whole store, a class subset of it, a second store without a test split."""
    root = tmp_path_factory.mktemp("scoped")
    first = _synthetic_store(root / "one.zarr")
    second = _synthetic_store(root / "two.zarr")
    config = {"grid": {"lr": [1e-2]}, "train": {"epochs": 2, "batch_size": 8}, "seeds": 2}
    run_probe(first.path, ["linear", "protobin"], root / "runs" / "whole", config=config)
    run_probe(first.path, ["linear"], root / "runs" / "subset", config={**config, "subset": {"classes": ["a", "b"]}})
    run_probe(second.path, ["linear"], root / "runs" / "novalid",
              config={**config, "splits": {"train": "train", "valid": "valid", "test": None}})
    return root / "runs"


def test_report_figures_share_one_scale_across_clips_and_cover_the_classes(scoped_runs, tmp_path, monkeypatch):
    drawn: dict[str, Figure] = {}
    save = figures.save

    def keep(figure, path):
        drawn[path.name] = figure
        return save(figure, path)

    monkeypatch.setattr(figures, "save", keep)
    build_report(scoped_runs / "whole", tmp_path / "out")
    maps = {name: fig for name, fig in drawn.items() if name.startswith("prototypes_")}
    assert sorted(maps) == ["prototypes_s20.png", "prototypes_s21.png"]
    norms = {(i.norm.vmin, i.norm.vmax) for fig in maps.values() for i in similarity_images(fig)}
    assert len(norms) == 1 and next(iter(norms))[0] == -next(iter(norms))[1]
    store = TokenStore.open(scoped_runs.parent / "one.zarr")
    ids = list(store.clip_ids)
    labels = np.asarray(store.labels)
    shown = {c for name in maps for c in np.flatnonzero(labels[ids.index(name[11:-4])])}
    assert shown == {0, 1, 2}
    for fig in maps.values():
        assert len(colour_bars(fig)) == 1
        # Every true class of the clip has a panel, whatever its probability.
        titles = " ".join(axis.get_title(loc="left") for axis in fig.axes)
        clip = fig.get_suptitle().split(" ")[0]
        for c in np.flatnonzero(labels[ids.index(clip)]):
            assert f" {store.label_names[c]} (correct)" in titles or f" {store.label_names[c]} (missed)" in titles
    per_class = drawn["per_class_ap.png"].axes[0]
    assert {t.get_text().split(" ")[0] for t in per_class.get_legend().get_texts()} == {"linear", "protobin"}
    assert len(per_class.containers) == 2
    assert "std over 2 seeds" in per_class.get_legend().get_texts()[0].get_text()
    for fig in drawn.values():
        assert tick_label_overlaps(fig) == [], fig


def test_a_ledger_with_two_stores_and_a_subset_gives_three_scoped_tables(scoped_runs, tmp_path):
    from embedcache.results import read_ledger

    tables = head_tables(read_ledger(scoped_runs / "ledger.csv"))
    assert len(tables) == 3
    scopes = {(Path(t.scope.store).name, t.scope.subset) for t in tables}
    assert scopes == {("one.zarr", None), ("one.zarr", "classes=a,b"), ("two.zarr", None)}
    # write_store gives every store from arrays one fingerprint: the path keeps the two stores apart.
    assert len({t.scope.fingerprint for t in tables}) == 1
    whole = next(t for t in tables if t.scope.subset is None and t.scope.store.endswith("one.zarr"))
    assert set(whole.rows) == {"linear", "protobin"} and all(c.split == "test" for c in whole.cells.values())
    novalid = next(t for t in tables if t.scope.store.endswith("two.zarr"))
    assert novalid.cells["linear"].split == "valid" and novalid.has_fallback
    assert novalid.cell_text("linear").endswith("†valid")
    assert novalid.best() is None  # a validation number is never highlighted as the best test result

    result = build_report(scoped_runs / "ledger.csv", tmp_path / "out", n_clips=1)
    html = result.html.read_text()
    assert html.count("<table>") == 3 and html.count("<h3 class=scope>") == 3
    assert "subset: classes=a,b" in html
    assert len(re.findall(r'<td class="[^"]*fallback[^"]*">[^<]*†valid</td>', html)) == 1
    assert "† validation number" in html
    markdown = result.table.read_text()
    assert markdown.count("### ") == 3 and "| valid † (no test split) |" in markdown
    assert "| linear | 2 | **" in markdown  # the test cells compete for best


def test_head_table_prefers_the_latest_tested_run_to_a_later_untested_one():
    later = {"timestamp": "2026-03-01T00:00:00+00:00", "run_dir": "/r/b", "test": ""}
    rows = [_ledger_row(test="0.4", valid="0.5"), _ledger_row(**later, valid="0.8"),
            _ledger_row(head="linear", **later, valid="0.7")]
    (table,) = head_tables(rows, {"/nowhere/as20k-beats.zarr": "as20k"}, {"/r/a": None, "/r/b": None})
    assert table.cell_text("protobin") == "40.00 ± 0.00" and table.cells["protobin"].run_dir == "/r/a"
    assert table.cell_text("linear") == "70.00 ± 0.00 †valid"
    assert table.rows == ["protobin", "linear"] and table.best() == "protobin"


def test_head_table_leaves_out_seeds_the_ledger_marks_not_ok():
    rows = [_ledger_row(test="0.4", seed="0"), _ledger_row(test="0.6", seed="1"),
            _ledger_row(test="0.01", seed="2", status="diverged")]
    (table,) = head_tables(rows, {"/nowhere/as20k-beats.zarr": "as20k"}, {"/r/a": None})
    cell = table.cells["protobin"]
    assert (round(cell.mean, 6), cell.seeds, cell.left_out) == (0.5, 2, 1)
    assert "| protobin | 2 (1 left out: not ok) | **50.00 ± 14.14** | test |" in table.to_markdown()


# -- the command line ----------------------------------------------------------------------------------------------
def test_report_command_imports_no_matplotlib_or_torch_until_it_runs():
    code = ("import sys, embedcache_cli.commands_report; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'embedcache.report') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_report_help_example_runs(scoped_runs, tmp_path, monkeypatch):
    help_text = CliRunner().invoke(cli, ["report", "--help"]).output
    (line,) = [line.strip() for line in help_text.splitlines() if line.strip().startswith("embedcache report ")]
    args = shlex.split(line)[1:]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(scoped_runs / "whole", Path(args[1]))  # the example's run directory, here a small one
    result = CliRunner().invoke(cli, args + ["--n-clips", "1"])
    assert result.exit_code == 0, result.output
    assert (Path(args[args.index("--out") + 1]) / "report.html").is_file()
