"""Reports: prototype evidence math, head table, sweep readers, source discovery, whole pages, a real browser."""

from __future__ import annotations

import base64
import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from embedcache import heads
from embedcache.errors import ConfigError
from embedcache.extract import ExtractConfig, extract
from embedcache.probe import run_probe
from embedcache.report import build_report, find_sources
from embedcache.report.evidence import clip_evidence, grid_map, load_head
from embedcache.report.tables import head_tables, sweep_trials
from embedcache.store import write_store
from embedcache_cli.main import main as cli

GRID = (6, 3)  # n_time, n_freq
DIM = 16


# -- evidence: pure math ---------------------------------------------------------------------------------------
def _planted_clip(direction: torch.Tensor, t: int, f: int) -> torch.Tensor:
    """Tokens [T, D]: small noise, one token at (t, f) pointing along `direction`."""
    tokens = 0.05 * torch.randn(GRID[0] * GRID[1], DIM, generator=torch.Generator().manual_seed(1))
    tokens[t * GRID[1] + f] += direction
    return tokens


def test_grid_map_puts_time_major_tokens_at_freq_row_time_column():
    values = np.arange(GRID[0] * GRID[1])  # token t * n_freq + f holds its own index
    image = grid_map(values, GRID)
    assert image.shape == (GRID[1], GRID[0])
    assert image[2, 4] == 4 * GRID[1] + 2
    assert image[0, 5] == 5 * GRID[1]


def test_protobin_evidence_finds_the_planted_token_and_the_supporting_prototype():
    head = heads.create("protobin", num_classes=2, embed_dim=DIM, prototypes_per_class=2,
                        generator=torch.Generator().manual_seed(0))
    signs = torch.ones(4, DIM)
    signs[2, DIM // 2:] = -1.0  # prototype 2's binary pattern
    with torch.no_grad():
        head.prototypes.copy_(0.1 * signs)
        head.prototypes[[0, 1, 3]] = 0.1 * torch.randn(3, DIM, generator=torch.Generator().manual_seed(5))
        head.fc.weight.zero_()
        head.fc.weight[1, 2] = 3.0  # class 1 is supported by prototype 2 only
        head.fc.bias.zero_()
    tokens = _planted_clip(signs[2] / DIM**0.5, t=4, f=1)
    mask = torch.ones(len(tokens), dtype=torch.bool)
    mask[-GRID[1]:] = False  # the last time step is padding
    evidence = clip_evidence(head, tokens, mask)

    assert evidence.best_prototype(1) == 2
    planted = grid_map(evidence.similarity[:, 2], GRID)
    assert np.unravel_index(np.nanargmax(planted), planted.shape) == (1, 4)  # (freq row, time column)
    assert np.isnan(evidence.similarity[-GRID[1]:]).all()
    # Scores are the max over real tokens; contributions are fc.weight * score; probabilities match the head.
    unit = torch.nn.functional.normalize(tokens[:-GRID[1]], dim=-1) @ torch.nn.functional.normalize(
        torch.sign(head.prototypes.detach()), dim=-1).t()
    np.testing.assert_allclose(evidence.scores, unit.max(dim=0).values.numpy(), atol=1e-6)
    np.testing.assert_allclose(evidence.contributions[1, 2], 3.0 * evidence.scores[2], atol=1e-6)
    logits = head(heads.TokenBatch(tokens[None], mask[None]))[0].detach()
    np.testing.assert_allclose(evidence.probabilities, torch.sigmoid(logits).numpy(), atol=1e-6)
    assert evidence.top_classes(2)[0] == 1


def test_proto_evidence_only_uses_each_class_own_prototypes():
    head = heads.create("proto", num_classes=2, embed_dim=DIM, prototypes_per_class=3,
                        generator=torch.Generator().manual_seed(0))
    tokens = _planted_clip(head.prototypes.detach()[1], t=0, f=0)  # matches class 0's prototype 1
    evidence = clip_evidence(head, tokens, torch.ones(len(tokens), dtype=torch.bool))
    assert evidence.best_prototype(0) == 1
    assert 3 <= evidence.best_prototype(1) < 6
    assert np.isneginf(evidence.contributions[0, 3:]).all() and np.isneginf(evidence.contributions[1, :3]).all()


def test_load_head_refuses_files_without_a_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="no 'config'"):
        load_head(tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match="no head weights"):
        load_head(tmp_path / "missing.safetensors")


# -- tables and sweeps -----------------------------------------------------------------------------------------
def _ledger_row(**values) -> dict:
    row = {"timestamp": "2026-01-01T00:00:00+00:00", "run_dir": "/r/a", "store": "/nowhere/as20k-beats.zarr",
           "encoder": "beats", "layer": "11", "head": "protobin", "metric": "map", "valid": "0.5", "test": ""}
    row.update(values)
    return row


def test_head_table_takes_the_latest_run_mean_std_over_seeds_and_marks_valid_fallback():
    view = {"store": "/nowhere/as20k-beats.zarr", "fingerprint": "f" * 64, "subset": None}
    rows = [
        _ledger_row(test="0.40", seed="0"), _ledger_row(test="0.50", seed="1"),
        # a later run of the same head on the same store replaces the earlier one
        _ledger_row(timestamp="2026-02-01T00:00:00+00:00", run_dir="/r/b", test="0.30", seed="0"),
        _ledger_row(timestamp="2026-02-01T00:00:00+00:00", run_dir="/r/b", test="0.34", seed="1"),
        _ledger_row(head="linear", run_dir="/r/c", valid="0.9", test=""),  # no test split
    ]
    (table,) = head_tables(rows, {"/nowhere/as20k-beats.zarr": "as20k"}, {"/r/a": view, "/r/b": view, "/r/c": view})
    assert table.scope.dataset == "as20k" and table.scope.fingerprint == "f" * 64 and table.scope.metric == "map"
    assert table.rows == ["protobin", "linear"]  # test numbers first; the validation fallback after them
    cell = table.cells["protobin"]
    assert (round(cell.mean, 6), round(cell.std, 6), cell.seeds, cell.split) == (
        0.32, round(float(np.std([0.30, 0.34], ddof=1)), 6), 2, "test")
    assert table.cell_text("linear") == "90.00 ± 0.00 †valid" and table.cells["linear"].split == "valid"
    assert table.best() == "protobin"  # a validation number never wins over test numbers
    markdown = table.to_markdown()
    assert "| protobin | 2 | **32.00 ± 2.83** | test |" in markdown
    assert "| linear | 1 | 90.00 ± 0.00 †valid | valid † (no test split) |" in markdown
    assert "† validation number" in markdown
    assert markdown.startswith("### as20k · beats · /nowhere/as20k-beats.zarr (fingerprint ffffffffffff, subset: "
                               "whole store)")


def test_head_table_splits_a_store_probed_at_several_layers():
    rows = [_ledger_row(layer="11", test="0.3"), _ledger_row(layer="8", test="0.2")]
    (table,) = head_tables(rows, {"/nowhere/as20k-beats.zarr": "as20k"}, {"/r/a": None})
    assert table.rows == ["protobin L11", "protobin L8"]
    assert table.scope.fingerprint is None and "run directory gone" in table.scope.describe()


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_sweep_trials_reads_optuna_states_and_grid_means(tmp_path):
    trials = _write_csv(tmp_path / "trials.csv", [
        {"number": 0, "state": "complete", "lr": 1e-3, "weight_decay": 1e-4, "valid_map": 0.6, "last_valid_map": 0.6,
         "epochs": 4, "sampler": "sobol", "worker": "w"},
        {"number": 1, "state": "pruned", "lr": 1e-1, "weight_decay": 1e-5, "valid_map": "", "last_valid_map": 0.1,
         "epochs": 1, "sampler": "sobol", "worker": "w"},
    ])
    read = sweep_trials(trials)
    assert read.metric == "map" and read.state == ["complete", "pruned"]
    np.testing.assert_allclose(read.value, [0.6, 0.1])
    grid = _write_csv(tmp_path / "sweep.csv", [
        {"head": "linear", "kind": "linear", "lr": 1e-3, "weight_decay": 1e-4, "seed": 0, "valid_map": 0.2},
        {"head": "linear", "kind": "linear", "lr": 1e-3, "weight_decay": 1e-4, "seed": 1, "valid_map": 0.4},
        {"head": "linear", "kind": "linear", "lr": 1e-2, "weight_decay": 1e-4, "seed": 0, "valid_map": 0.5},
    ])
    read = sweep_trials(grid)
    np.testing.assert_allclose(read.value, [0.3, 0.5])
    assert read.head == ["linear", "linear"] and read.state == ["complete", "complete"]



def test_sweep_trials_skip_hand_edited_rows_and_name_them(tmp_path):
    trials = _write_csv(tmp_path / "trials.csv", [
        {"number": i, "state": "complete", "lr": lr, "weight_decay": 1e-4, "valid_map": 0.5}
        for i, lr in enumerate([1e-3, "fast", 1e-2])])
    with open(trials, "a") as handle:
        handle.write("3,complete\n")  # cut short
    notes = []
    read = sweep_trials(trials, log=notes.append)
    np.testing.assert_allclose(read.lr, [1e-3, 1e-2])
    assert notes == [f"{trials}: 2 row(s) cut short or with an lr or weight_decay that is not a number left out "
                     "(first: line 3)"]
    missing = _write_csv(tmp_path / "missing.csv", [{"state": "complete", "valid_map": 0.5}])
    with pytest.raises(ConfigError, match=r"missing\.csv: no column\(s\) \['lr', 'weight_decay'\]"):
        sweep_trials(missing)

# -- end to end ------------------------------------------------------------------------------------------------
def _synthetic_store(path: Path):
    """24 clips, 3 classes: class c is one strong token along direction c at frequency row c, a random time."""
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((3, DIM)).astype(np.float32)
    n = 24
    labels = np.zeros((n, 3), np.uint8)
    tokens = 0.3 * rng.standard_normal((n, GRID[0], GRID[1], DIM)).astype(np.float32)
    for i in range(n):
        for c in {i % 3, (i // 3) % 3}:
            labels[i, c] = 1
            tokens[i, rng.integers(GRID[0]), c] += 2 * directions[c]
    splits = ["train"] * 16 + ["valid"] * 4 + ["test"] * 4
    return write_store(path, {0: tokens.reshape(n, -1, DIM)}, labels, ["a", "b", "c"],
                       [f"s{i:02d}" for i in range(n)], splits, GRID)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    store = _synthetic_store(root / "syn.zarr")
    config = {"grid": {"lr": [1e-2, 3e-2], "weight_decay": [1e-4]}, "train": {"epochs": 4, "batch_size": 8}}
    run_probe(store.path, ["linear", "protobin"], root / "runs" / "syn", config=config)
    return root / "runs" / "syn"


def _inlined_images(html: str) -> list[str]:
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)


def test_report_of_a_run_writes_every_figure_and_one_self_contained_page(synthetic_run, tmp_path):
    result = build_report(synthetic_run, tmp_path / "out", n_clips=2)
    names = sorted(p.name for p in result.images)
    # s20 (classes a, c) is the first test clip with class a, s21 (a, b) the first with b: all classes covered.
    assert names == ["curves.png", "per_class_ap.png", "prototypes_s20.png", "prototypes_s21.png", "sweep_grid.png"]
    html = result.html.read_text()
    assert re.search(r"Run syn: heads (protobin, linear|linear, protobin) on split test; error bars", html)
    assert "2 clip(s) covering 3 of 3 classes" in html
    images = _inlined_images(html)
    assert len(images) == len(result.images)
    for encoded in images:
        assert base64.b64decode(encoded)[:8] == b"\x89PNG\r\n\x1a\n"
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html
    # The synthetic store has no audio: the background falls back to the token grid and the page says why.
    assert "token energy" in html
    table = result.table.read_text().splitlines()
    assert table[0].startswith("### syn · arrays · ") and "subset: whole store" in table[0]  # write_store's provenance
    assert table[2] == "| head | seeds | mAP (%) | split |"
    assert {line.split(" | ")[0] for line in table[4:]} == {"| linear", "| protobin"}


def test_per_class_figure_switches_to_points_for_many_classes(tmp_path):
    from matplotlib.image import imread

    from embedcache.report import figures
    from embedcache.report.tables import PerClassAP

    rng = np.random.default_rng(0)
    labels = [f"class{i}" for i in range(300)]
    series = [PerClassAP(name, "run", "test", labels, rng.random(300), 0.05 * rng.random(300), seeds=3)
              for name in ("protobin", "linear")]
    series[1].ap[5] = np.nan  # a class without positives
    figure = figures.per_class_figure(series)
    axis = figure.axes[0]
    assert len(axis.containers) == 2 and not axis.patches  # points with error bars, no bars
    ranked = axis.containers[0].lines[0].get_ydata()
    assert np.all(np.diff(ranked) <= 0)  # sorted by the first head, best first
    assert imread(figures.save(figure, tmp_path / "pc.png")).shape[1] > 500


def test_report_names_clips_and_heads_and_refuses_unknown_ones(synthetic_run, tmp_path):
    result = build_report(synthetic_run, tmp_path / "out", clips=["s03"], heads=["protobin", "linear"])
    assert [p.name for p in result.images if p.name.startswith("prototypes")] == ["prototypes_s03.png"]
    with pytest.raises(ConfigError, match="no clip"):
        build_report(synthetic_run, tmp_path / "x", clips=["nope"])
    with pytest.raises(ConfigError, match="no per-class AP for head"):
        build_report(synthetic_run, tmp_path / "y", heads=["attentive"])
    result = build_report(synthetic_run, tmp_path / "z", n_clips=1, heads=["linear"])
    assert "Run syn: heads linear on split test" in result.html.read_text()


def test_report_from_the_ledger_finds_the_runs(synthetic_run, tmp_path):
    sources = find_sources(synthetic_run.parent / "ledger.csv")
    assert sources.run_dirs == [synthetic_run.resolve()] and sources.trials is None
    assert find_sources(synthetic_run.parent).ledger == (synthetic_run.parent / "ledger.csv").resolve()
    result = build_report(synthetic_run.parent / "ledger.csv", tmp_path / "out", n_clips=1)
    assert (tmp_path / "out" / "per_class_ap.png").is_file() and result.table is not None


def test_find_sources_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ConfigError, match="no metrics.json"):
        find_sources(tmp_path)
    other = _write_csv(tmp_path / "other.csv", [{"a": 1}])
    with pytest.raises(ConfigError, match="neither a results ledger"):
        find_sources(other)


def test_report_of_a_sweep_marks_pruned_trials(tmp_path):
    from embedcache.sweep import run_sweep

    store = _synthetic_store(tmp_path / "syn.zarr")
    config = {"heads": ["protobin"], "train": {"epochs": 3, "batch_size": 8}}
    sweep = {"trials": 4, "startup_trials": 2, "batch_trials": 4, "min_epochs": 1, "reduction_factor": 2,
             "lr": [1e-4, 1e-1], "weight_decay": [1e-5, 1e-3], "top_k": 1, "final_seeds": 1}
    run_sweep(store.path, "protobin", tmp_path / "sweep", config=config, sweep=sweep, log=lambda line: None)
    result = build_report(tmp_path / "sweep", tmp_path / "out", n_clips=1)
    assert "sweep_trials.png" in [p.name for p in result.images]
    trials = sweep_trials(tmp_path / "sweep" / "trials.csv")
    assert trials.head == ["protobin (Optuna trials)"] * 4
    assert len(trials.state) == 4 and set(trials.state) <= {"complete", "pruned", "fail"}
    html = result.html.read_text()
    assert f"{trials.state.count('complete')} complete" in html


def test_report_draws_the_spectrogram_from_the_manifest_audio(tiny_manifest, tmp_path):
    store = tmp_path / "tiny.zarr"
    extract(ExtractConfig(encoder="melpatch", manifest=str(tiny_manifest), out=str(store), progress=False,
                          workers=0))
    config = {"splits": {"train": "train", "valid": "valid", "test": "test"}, "grid": {"lr": [1e-2]},
              "train": {"epochs": 2, "batch_size": 4}}
    run_probe(store, ["protobin"], tmp_path / "runs" / "tiny", config=config)
    result = build_report(tmp_path / "runs" / "tiny", tmp_path / "out", n_clips=1, top_classes=2)
    html = result.html.read_text()
    assert "(spectrogram; log-mel of clip" in html
    # Moving the audio away falls back to the token grid and says why.
    shutil.move(tiny_manifest.parent / "audio", tmp_path / "moved")
    html = build_report(tmp_path / "runs" / "tiny", tmp_path / "out2", n_clips=1).html.read_text()
    assert "(token energy; token-grid energy: " in html and "missing file" in html


def test_cli_report_prints_the_page_and_one_red_line_on_errors(synthetic_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(synthetic_run), "--out", str(tmp_path / "out"), "--n-clips", "1"])
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'out' / 'report.html'}" in result.output
    result = runner.invoke(cli, ["report", str(synthetic_run), "--out", str(tmp_path / "o"), "--clips", "zz"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1



def test_report_of_a_hand_edited_ledger_skips_bad_rows_with_a_note(synthetic_run, tmp_path):
    lines = (synthetic_run.parent / "ledger.csv").read_text().splitlines()
    header = lines[0].split(",")
    bad = lines[1].split(",")
    bad[header.index("test")] = "great"
    edited = tmp_path / "ledger.csv"
    cut = ",".join(lines[1].split(",")[:2])  # a row cut short by a crash or an editor
    edited.write_text("\n".join([lines[0], *lines[1:], ",".join(bad), cut]) + "\n")
    result = CliRunner().invoke(cli, ["report", str(edited), "--out", str(tmp_path / "out"), "--n-clips", "1"])
    assert result.exit_code == 0, result.output
    assert f"note: {edited} line {len(lines) + 1}: test 'great' is not a number; row skipped" in result.output
    assert f"note: {edited} line {len(lines) + 2}: 2 fields, the header has {len(header)}" in result.output
    assert "| linear | 1 |" in (tmp_path / "out" / "head_table.md").read_text()


@pytest.mark.parametrize("content,message", [
    ("timestamp,run_dir,store\n2026,/r,/s\n", "not an embedcache results ledger: missing column(s)"),
    (b"run_dir,x\n\xff\n", "not UTF-8 text"),
])
def test_report_refuses_a_ledger_it_cannot_read_in_one_line(tmp_path, content, message):
    path = tmp_path / "ledger.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = CliRunner().invoke(cli, ["report", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines

# -- a real browser --------------------------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended to a copy of the page: after load, report how many images decoded (naturalWidth > 0).
CHECK_SCRIPT = """<script>window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  const out = document.createElement("pre"); out.id = "image-check";
  out.textContent = "images=" + images.length + " decoded=" + ok; document.body.appendChild(out);
});</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(synthetic_run, tmp_path):
    from matplotlib.image import imread

    binary = _chromium()
    result = build_report(synthetic_run, tmp_path / "out", n_clips=1)
    checked = tmp_path / "checked.html"
    checked.write_text(result.html.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _run_chromium(binary, tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom",
                        checked.as_uri())
    match = re.search(r"images=(\d+) decoded=(\d+)", dom.stdout)
    assert match, f"no image check in the DOM; chromium said: {dom.stderr[-2000:]}"
    assert int(match.group(1)) == len(result.images) == int(match.group(2))

    screenshot = tmp_path / "report.png"
    _run_chromium(binary, tmp_path / "profile2", f"--screenshot={screenshot}", "--window-size=1280,2400",
                  "--hide-scrollbars", result.html.as_uri())
    pixels = imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    # Non-blank: the figures put many distinct colours on the page, well beyond white text on a white page.
    assert pixels.std() > 0.05
    assert len(np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 200
