"""Seed-paired differences of bench_int8's probe runs: is an int8 - float16 difference larger than seed noise?

    python -m bench.int8_seed_pairs /tmp/b8 --out runs/int8_seed_pairs.json

Reads the ledgers bench_int8 leaves under WORKDIR/runs/<set>-<encoder>-<dtype>/lr<lr>/ledger.csv (run it with
--workdir). A seed starts both stores' probes from the same initial weights and the same batch order, so per seed
the difference int8 - float16 (and float32 - float16, where a float32 store was probed) isolates the change of
input. Per (case, head), at the lr float16 chooses on validation (mean over seeds, as `probe` does): the mean of
the per-seed test mAP differences in points, its standard error (std / sqrt(seeds)) and the number of seeds.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.results import emit, machine, parse_args

DTYPES = ("float16", "int8", "float32")


def read_ledgers(run: Path) -> dict:
    """{lr: {head: {seed: (valid mAP, test mAP)}}} of one store's probe runs (one lr per subfolder)."""
    results: dict = defaultdict(lambda: defaultdict(dict))
    for ledger in sorted(run.glob("lr*/ledger.csv")):
        with open(ledger, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["status"] == "ok":
                    results[float(row["lr"])][row["head"]][int(row["seed"])] = (float(row["valid"]),
                                                                                float(row["test_map"]))
    return results


def paired(reference: dict, other: dict) -> dict:
    """Mean, standard error and count of the per-seed test mAP differences other - reference, in points."""
    seeds = sorted(set(reference) & set(other))
    diffs = np.array([100 * (other[seed][1] - reference[seed][1]) for seed in seeds])
    error = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    return {"mean_points": round(float(diffs.mean()), 2), "standard_error": round(error, 2), "seeds": len(seeds)}


def case_pairs(runs: dict) -> dict:
    """Per head: the lr float16 chooses, and the paired differences of int8 (and float32) against float16 there."""
    reference = runs["float16"]
    heads = sorted({head for per_head in reference.values() for head in per_head})
    rows = {}
    for head in heads:
        lrs = [lr for lr in reference if head in reference[lr]]
        chosen = max(lrs, key=lambda lr: np.mean([valid for valid, _ in reference[lr][head].values()]))
        rows[head] = {"lr": chosen}
        for dtype in DTYPES[1:]:
            if head in runs.get(dtype, {}).get(chosen, {}):
                rows[head][f"{dtype}_minus_float16"] = paired(reference[chosen][head], runs[dtype][chosen][head])
    return rows


def collect(workdir: Path) -> dict:
    """{case: per-head rows} of every <set>-<encoder> that has float16 and int8 runs under WORKDIR/runs."""
    folders = defaultdict(dict)
    for folder in sorted((workdir / "runs").iterdir()):
        case, _, dtype = folder.name.rpartition("-")
        if dtype in DTYPES and folder.is_dir():
            folders[case][dtype] = read_ledgers(folder)
    return {case: case_pairs(runs) for case, runs in folders.items() if {"float16", "int8"} <= set(runs)}


def markdown(cases: dict) -> str:
    lines = ["| case | head | lr | seeds | int8 − fp16, points (± SE) | fp32 − fp16, points (± SE) |",
             "|---|---|---|---|---|---|"]
    for case, rows in cases.items():
        for head, row in rows.items():
            cells = []
            for key in ("int8_minus_float16", "float32_minus_float16"):
                value = row.get(key)
                cells.append(f"{value['mean_points']:+.2f} ± {value['standard_error']:.2f}" if value else "–")
            lines.append(f"| {case} | {head} | {row['lr']:g} | {row['int8_minus_float16']['seeds']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="bench_int8's --workdir")
    args = parse_args(parser)
    if not (args.workdir / "runs").is_dir():
        parser.error(f"{args.workdir}: has no runs/ folder; give the --workdir bench_int8 ran with")
    cases = collect(args.workdir)
    emit({"benchmark": "int8_seed_pairs", "machine": machine(), "workdir": str(args.workdir), "cases": cases}, args.out)
    print(markdown(cases), file=sys.stderr)


if __name__ == "__main__":
    main()
