"""Sound-event detection on generated sets: frame_linear (strong labels) and weakly trained protobin maps, against
chance, as `probe --task sed` reports them (PSDS1/2 and event/segment F1 from sed_scores_eval; sed.csv).

    python -m bench.bench_sed --out runs/bench-sed --seeds 3

Three sets, all extracted with melpatch (no weights, deterministic), 4-frame patches (40 ms steps):
  tones     build_tone_events: 1-2 harmonic tones (0.6-2 s, 3 classes) per 5 s clip over quiet noise (-50 dBFS);
            32-bin patches (2 frequency tokens); the set tests/test_sed.py uses, at 120 clips
  hard      5 classes, noise at -10 dBFS, 3 unlabelled distractor tones per clip, 300 clips
  oneshots  the bundled sample (real CC0 one-shots, 0.09-1 s, over an ambient bed, 8 classes, 120 clips); 64-bin
            patches (one frequency token), median filter 0.2 s (the events are shorter than the default 0.5 s)
Each: train on train, choose lr in {3e-3, 1e-2, 3e-2} on valid, test once per seed; chance rows are frame scores that
know nothing of the audio (uniform random, or each class's training step rate). PSDS counts false positives per hour:
the test splits hold 1.5 to 3.8 minutes of audio, so every false positive weighs heavily.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from embedcache.datasets.sample import build_sample_set, build_tone_events
from embedcache.extract import ExtractConfig, extract
from embedcache.probe import run_probe

COLUMNS = ("psds1", "psds2", "event_f1", "segment_f1", "frame_map")
HARD_TONES = (440.0, 700.0, 1250.0, 1900.0, 3100.0)
SETS = {  # name: (build the manifest, melpatch options, sed settings)
    "tones": (lambda out: build_tone_events(out, n_clips=120), {"patch_time": 4, "patch_freq": 32}, {}),
    "hard": (lambda out: build_tone_events(out, n_clips=300, tones_hz=HARD_TONES, noise_db=-10.0, distractors=3),
             {"patch_time": 4, "patch_freq": 32}, {}),
    "oneshots": (lambda out: build_sample_set(out, n_clips=120), {"patch_time": 4, "patch_freq": 64},
                 {"median_filter": 0.2}),
}


def run(out: Path, seeds: int, epochs: int) -> dict[str, list[dict]]:
    tables = {}
    for name, (build, options, settings) in SETS.items():
        manifest = build(out / name)
        store = out / f"{name}.zarr"
        extract(ExtractConfig(encoder="melpatch", manifest=str(manifest), out=str(store), encoder_options=options,
                              progress=False, workers=0, overwrite=True))
        config = {"task": "sed", "sed": settings, "grid": {"lr": [3e-3, 1e-2, 3e-2], "weight_decay": [1e-4]},
                  "train": {"epochs": epochs, "batch_size": 16, "device": "cpu"}}
        report = run_probe(store, ["frame_linear", "protobin"], out / "runs" / name, config=config, seeds=seeds,
                           overwrite=True, log=lambda _: None)
        with open(report.run_dir / "sed.csv", newline="") as handle:
            tables[name] = list(csv.DictReader(handle))
    return tables


def show(tables: dict[str, list[dict]]) -> str:
    lines = [f"| set | head | {' | '.join(COLUMNS)} |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, rows in tables.items():
        for row in rows:
            cells = []
            for key in COLUMNS:
                value, spread = row.get(key, ""), row.get(f"{key}_std", "")
                cells.append(f"{float(value):.3f}" + (f" ± {float(spread):.3f}" if spread not in ("", None) else ""))
            lines.append(f"| {name} | {row['head']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sed"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    print(show(run(args.out, args.seeds, args.epochs)))


if __name__ == "__main__":
    main()
