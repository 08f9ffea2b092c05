"""What every benchmark JSON carries: the machine it ran on, and one way to print and save the result."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def machine() -> dict:
    """CPU, core count, torch threads, RAM and GPU of this machine, with the library versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(memory / 1e9, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }


def timed(function: Callable, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call; synchronises CUDA around it so GPU work is counted."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator rounded to 3 places (nan when the denominator is 0)."""
    return round(numerator / denominator, 3) if denominator > 0 else float("nan")


def emit(summary: dict, out: Path | None) -> str:
    """Print the JSON summary and write it to `out` when given; returns the text."""
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return text


def parse_args(parser) -> object:
    """Add the options every benchmark shares (--threads, --out), parse, and apply --threads."""
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a busy shared machine)")
    parser.add_argument("--out", type=Path, help="write the JSON here as well")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
