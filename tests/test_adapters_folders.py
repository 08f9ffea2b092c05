"""`embedcache manifest folders --group-by`: groups never straddle splits, per-class stratification where groups
allow, and the warning when names look like takes of one source."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from embedcache.datasets import read_manifest
from embedcache.datasets.grouping import find_takes, take_base, takes_warning
from embedcache_cli.main import main as cli_main


def write_wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(80, 0.1, np.float32), 8000)
    return path


def velocity_layers(root: Path) -> Path:
    """kick 10, snare 7, hat 3 sources, each sampled at three velocities: `kick4_v2.wav`."""
    for label, sources in (("kick", 10), ("snare", 7), ("hat", 3)):
        for j in range(sources):
            for v in (1, 2, 3):
                write_wav(root / label / f"{label}{j}_v{v}.wav")
    return root


def folders(*args: str):
    return CliRunner().invoke(cli_main, ["manifest", "folders", *args])


def splits_by_key(manifest_path: Path, pattern: str) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for clip in read_manifest(manifest_path).clips:
        keys.setdefault(re.search(pattern, clip.path.name).group(1), set()).add(clip.split)
    return keys


def test_group_by_keeps_every_source_in_one_split_and_stratifies(tmp_path: Path) -> None:
    root = velocity_layers(tmp_path / "drums")
    result = folders(str(root), "--group-by", r"^(.*)_v\d+")
    assert result.exit_code == 0, result.output
    assert "60 clips, 3 labels (single-label); train 42, valid 12, test 6" in result.output
    assert "20 groups (--group-by ^(.*)_v\\d+), none in two splits" in result.output
    assert "warning" not in result.output
    keys = splits_by_key(root / "manifest.csv", r"^(.*)_v\d+")
    assert len(keys) == 20 and all(len(splits) == 1 for splits in keys.values())
    record = json.loads((root / "manifest.split.json").read_text())
    assert record["groups"] == 20 and record["warning"] is None and record["group_by"] == r"^(.*)_v\d+"
    # Per-class targets 0.7/0.15/0.15 of 30, 21 and 9 clips, in whole groups of 3.
    assert record["counts"] == {"kick": {"train": 21, "valid": 6, "test": 3},
                                "snare": {"train": 15, "valid": 3, "test": 3},
                                "hat": {"train": 6, "valid": 3, "test": 0}}
    first = (root / "manifest.csv").read_bytes()
    assert folders(str(root), "--group-by", r"^(.*)_v\d+").exit_code == 0
    assert (root / "manifest.csv").read_bytes() == first
    assert folders(str(root), "--group-by", r"^(.*)_v\d+", "--seed", "3").exit_code == 0
    assert (root / "manifest.csv").read_bytes() != first
    assert all(len(s) == 1 for s in splits_by_key(root / "manifest.csv", r"^(.*)_v\d+").values())


def test_names_that_look_like_takes_warn_without_group_by(tmp_path: Path) -> None:
    root = velocity_layers(tmp_path / "drums")
    result = folders(str(root))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "60 of 60 file names look like takes of one source (e.g. hat/hat0_v1.wav, hat/hat0_v2.wav)" \
        in warnings[0]
    assert "--group-by takes" in warnings[0] and "manifest.split.json" in warnings[0]
    record = json.loads((root / "manifest.split.json").read_text())
    assert record["warning"].startswith("60 of 60 file names") and record["group_by"] is None
    # Ungrouped, some sources straddle splits: the leak the warning is about.
    assert any(len(s) > 1 for s in splits_by_key(root / "manifest.csv", r"^(.*)_v\d+").values())


def test_takes_preset_groups_the_takes_the_warning_counted(tmp_path: Path) -> None:
    root = velocity_layers(tmp_path / "drums")
    result = folders(str(root), "--group-by", "takes")
    assert result.exit_code == 0, result.output
    assert "20 groups (--group-by takes)" in result.output
    assert all(len(s) == 1 for s in splits_by_key(root / "manifest.csv", r"^(.*)_v\d+").values())


def test_group_key_is_global_so_a_speaker_stays_in_one_split_across_words(tmp_path: Path) -> None:
    for word in ("yes", "no", "up"):
        for speaker in range(12):
            for take in range(2 if speaker % 3 else 1):
                write_wav(tmp_path / word / f"{speaker:08x}_nohash_{take}.wav")
    result = folders(str(tmp_path), "--group-by", r"^([0-9a-f]+)_nohash", "--ratios", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    assert "12 groups" in result.output
    speakers = splits_by_key(tmp_path / "manifest.csv", r"^([0-9a-f]+)_nohash")
    assert len(speakers) == 12 and all(len(s) == 1 for s in speakers.values())
    record = json.loads((tmp_path / "manifest.split.json").read_text())
    # Every speaker says every word, so each word follows the speakers: 6/3/3 speakers, 20 clips per word.
    assert {word: counts["train"] for word, counts in record["counts"].items()} == {"no": 10, "up": 10, "yes": 10}


def test_enumerated_and_numbered_names_do_not_warn(tmp_path: Path) -> None:
    for label in ("dog", "cat"):
        for i in range(20):
            write_wav(tmp_path / "a" / f"{label}s" / f"{label}_{i:03d}.wav")  # every file shares one base
            write_wav(tmp_path / "b" / label / f"{i:02d}.wav")  # bare numbers
    for sub in ("a", "b"):
        result = folders(str(tmp_path / sub))
        assert result.exit_code == 0, result.output
        assert "warning" not in result.output
        assert json.loads((tmp_path / sub / "manifest.split.json").read_text())["warning"] is None


def test_take_heuristic() -> None:
    assert [take_base(s) for s in ("kick_v2", "piano-take3", "vox 02", "snare.rr4", "hit-vel127", "pad_layer2",
                                   "bell3", "07", "drone")] == \
        ["kick", "piano", "vox", "snare", "hit", "pad", "bell", "", ""]
    names = {"kick": ["a_v1.wav", "a_v2.wav", "b_v1.wav", "c.wav"], "snare": ["snare_1.wav", "snare_2.wav", "a_3.wav"]}
    # a_* are takes (also across classes); snare_* is the class's own name; b_v1 and c have no partner.
    assert find_takes(names) == {("kick", 0): "a", ("kick", 1): "a", ("snare", 2): "a"}
    assert takes_warning({"x": ["a_1.wav", "a_2.wav", "b.wav", "c.wav"]}) is None  # 2 takes: below the minimum of 4
    assert takes_warning({"x": ["a_1.wav", "a_2.wav", "b_1.wav", "b_2.wav", "c.wav"]}).startswith("4 of 5")


@pytest.mark.parametrize(("args", "message"), [
    (["--group-by", r"^(kick)\d"], "error: --group-by '^(kick)\\\\d' matches no part of 30 file name(s), e.g. "
                                   "hat/hat0_v1.wav; make it match every file name"),
    (["--group-by", "(["], "error: --group-by '([': not a regular expression"),
    (["--ratios", "1,2"], "error: split ratios (1.0, 2.0): give three non-negative numbers"),
])
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    root = velocity_layers(tmp_path / "drums")
    result = folders(str(root), *args)
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output


def test_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = folders(str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert result.output == f"error: {tmp_path / 'nope'}: folder not found\n"
