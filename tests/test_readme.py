"""The README's code blocks run: every `embedcache` command line (shortened only by epochs/seeds/trials flags) on the
bundled sample set, and the plain-zarr Python snippet on the store they made."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedcache.datasets.sample import build_sample_set
from embedcache_cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()

# Lines that cannot run here, each with the reason; anything else that starts with `embedcache` must run.
NOT_HERE = {
    "my_pkg.my_module:make_encoder": "a placeholder for the reader's own encoder",
    "--folds": "needs an ESC-50 store; tests/test_split_roles.py runs this line on a 5-fold store",
    "/data/as20k-beats.zarr": "a multi-machine PostgreSQL sweep; tests/test_sweep.py runs it on a local server",
    "data/drums": "class folders of velocity layers; tests/test_adapters_folders.py runs --group-by on generated ones",
    "speech_commands_v0.02": "Speech Commands v2; tests/test_adapters_speech_commands.py runs it on a generated copy",
    "data/birdset_hsn": "a saved BirdSet split; tests/test_adapters_hf.py runs hf on data sets built with `datasets`",
    "data/DESED": "the DESED data set; tests/test_sed.py runs the adapter on a generated DESED layout",
    "data/URBAN-SED": "the URBAN-SED data set; tests/test_sed.py runs the adapter on a generated URBAN-SED layout",
}
# Flags appended so a line finishes in seconds; the command and its other arguments are the README's.
FAST = {
    "probe": ["--epochs", "1", "--seeds", "1"],
    "sweep": ["--epochs", "1", "--trials", "2", "--startup-trials", "2", "--final-seeds", "1", "--top-k", "1"],
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def command_lines() -> list[str]:
    """Every `embedcache ...` line of the README's bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("embedcache "):
                lines.append(line)
    return lines


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder laid out like the repository: data/sample built, configs/ linked."""
    root = tmp_path_factory.mktemp("readme")
    build_sample_set(root / "data" / "sample")
    (root / "configs").symlink_to(REPO_ROOT / "configs")
    return root


def test_every_command_line_is_run_or_named_as_not_runnable_here():
    lines = command_lines()
    assert len(lines) >= 8
    for marker in NOT_HERE:
        assert any(marker in line for line in lines), f"NOT_HERE names {marker!r}, which the README no longer has"


def test_readme_commands_and_python_snippet_run_in_order(workdir, monkeypatch, one_thread):
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    ran = []
    for line in command_lines():
        if any(marker in line for marker in NOT_HERE):
            continue
        args = shlex.split(line)[1:]
        args += FAST.get(args[0], [])
        if args[0] == "extract":
            args += ["--workers", "0", "--no-progress"]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        ran.append(args[0])
    assert {"extract", "probe", "results", "sweep"} <= set(ran)
    assert (workdir / "runs" / "windows.zarr").is_dir() and (workdir / "runs" / "probes" / "ledger.csv").is_file()
    snippets = blocks("python")
    assert len(snippets) == 2
    api: dict = {}
    exec(compile(snippets[0], "README.md", "exec"), api)  # noqa: S102 (the README's own code)
    assert api["clip"]["clip_id"] == "clip_0003" and api["clip"]["tokens"].shape[1] == api["store"].embed_dim
    assert len(api["scores"]) == 2 and api["scores"][0].shape == (18, 6)
    assert set(api["bank"].valid_metrics_[1]) >= {"map"} and api["report"].results[0].name == "protobin"
    saved = (workdir / "runs" / "api-probe" / "predictions.csv").read_text().splitlines()
    assert len(saved) == 1 + sum(len(values) for values in api["predictions"].scores.values())
    assert [t.layers[0].shape[1] for t in api["tokens"]] == [256, 256]
    scope: dict = {}
    exec(compile(snippets[1], "README.md", "exec"), scope)  # noqa: S102 (the README's own snippet)
    assert scope["grid"].shape[:3] == (8, *scope["meta"]["layout"]["grid"])
    assert scope["mask"].shape == scope["tokens"].shape[:2] and scope["mask"].any()
    # The int8 line dequantises without embedcache: within half a scale step of the float16 tokens it came from.
    scales = scope["g8"]["scales/layer_0"][:8].astype(np.float32)[:, :, None]
    error = np.abs(scope["tokens8"] - scope["tokens"].astype(np.float32))
    assert scope["tokens8"].shape == scope["tokens"].shape and (error <= scales / 2 * (1 + 1e-6)).all()
    assert os.path.samefile(Path.cwd(), workdir)
