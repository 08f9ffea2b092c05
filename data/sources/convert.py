"""Rebuild data/sources/ from Debian's sonic-pi-samples: pick CC0 one-shots, 16 kHz mono FLAC, attribution table.

Run: apt-get download sonic-pi-samples && dpkg-deb -x sonic-pi-samples_*.deb x &&
     python data/sources/convert.py x/usr/share/sonic-pi/samples x/usr/share/doc/sonic-pi-samples/copyright
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from embedcache.audio import load_audio

SAMPLE_RATE = 16000
MAX_EVENT_SECONDS = 1.5
FADE_SECONDS = 0.02
# Trailing samples quieter than this (relative to the peak) are cut, so an event's length is its audible length.
TAIL_DB = -50.0

# class -> (role, sonic-pi sample names); "background" beds are mixed under the events but are never a label.
CLASSES = {
    "bass_drum": ("event", [
        "bd_808", "bd_ada", "bd_boom", "bd_fat", "bd_gas", "bd_haus", "bd_klub", "bd_pure", "bd_sone",
        "bd_tek", "bd_zome", "bd_zum", "drum_bass_hard", "drum_bass_soft", "drum_heavy_kick",
    ]),
    "snare": ("event", [
        "sn_dolf", "sn_dub", "sn_zome", "drum_snare_hard", "drum_snare_soft", "elec_snare",
        "elec_hi_snare", "elec_lo_snare", "elec_mid_snare", "elec_filt_snare",
    ]),
    "tabla": ("event", [
        "tabla_dhec", "tabla_ghe1", "tabla_ghe2", "tabla_ghe3", "tabla_ghe4", "tabla_ghe5", "tabla_ghe6",
        "tabla_ghe7", "tabla_ghe8", "tabla_ke1", "tabla_ke2", "tabla_ke3", "tabla_na", "tabla_na_o",
        "tabla_na_s", "tabla_re", "tabla_tas1", "tabla_tas2", "tabla_tas3", "tabla_te1", "tabla_te2",
        "tabla_te_m", "tabla_te_ne", "tabla_tun1", "tabla_tun2", "tabla_tun3",
    ]),
    "cymbal": ("event", [
        "drum_cymbal_closed", "drum_cymbal_hard", "drum_cymbal_open", "drum_cymbal_pedal", "drum_cymbal_soft",
        "drum_splash_hard", "drum_splash_soft", "elec_cymbal",
    ]),
    "vinyl_scratch": ("event", ["vinyl_backspin", "vinyl_rewind", "vinyl_scratch"]),
    "electronic_blip": ("event", [
        "elec_beep", "elec_bell", "elec_blip", "elec_blip2", "elec_blup", "elec_bong", "elec_chime",
        "elec_flip", "elec_ping", "elec_plip", "elec_pop", "elec_tick", "elec_triangle", "elec_twip",
        "elec_twang", "elec_wood",
    ]),
    "ambient": ("background", ["ambi_drone", "ambi_glass_hum", "ambi_haunted_hum", "ambi_lunar_land"]),
}


def read_cc0_entries(copyright_path: Path) -> dict[str, tuple[str, str]]:
    """Sample name -> (copyright line, Freesound URL) for every CC0 stanza of a Debian copyright file."""
    entries = {}
    for stanza in copyright_path.read_text(encoding="utf-8").split("\n\n"):
        files = re.search(r"^Files: etc/samples/(\S+)\.flac$", stanza, re.MULTILINE)
        licence = re.search(r"^License: (\S+)$", stanza, re.MULTILINE)
        if not files or not licence or licence.group(1) != "CC0":
            continue
        holder = re.search(r"^Copyright: (.+)$", stanza, re.MULTILINE)
        url = re.search(r"(https?://\S*freesound\.org\S*)", stanza)
        entries[files.group(1)] = (holder.group(1).strip() if holder else "", url.group(1) if url else "")
    return entries


def shape_event(wave: np.ndarray) -> np.ndarray:
    """Cut the inaudible tail, keep at most MAX_EVENT_SECONDS and fade out the last 20 ms to avoid a click."""
    floor = np.abs(wave).max() * 10 ** (TAIL_DB / 20)
    loud = np.flatnonzero(np.abs(wave) > floor)
    wave = wave[: loud[-1] + 1] if loud.size else wave
    wave = wave[: int(MAX_EVENT_SECONDS * SAMPLE_RATE)].copy()
    fade = min(len(wave), int(FADE_SECONDS * SAMPLE_RATE))
    wave[len(wave) - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return wave


def main() -> None:
    """Convert the chosen samples and write classes.csv and the attribution table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples_dir", type=Path)
    parser.add_argument("copyright", type=Path)
    args = parser.parse_args()
    out_dir = Path(__file__).resolve().parent
    entries = read_cc0_entries(args.copyright)
    rows = []
    for label, (role, names) in CLASSES.items():
        for name in names:
            if name not in entries:
                raise SystemExit(f"{name}: no CC0 stanza in {args.copyright}; pick another sample")
            wave = load_audio(args.samples_dir / f"{name}.flac", SAMPLE_RATE)
            if role == "event":
                wave = shape_event(wave)
            sf.write(out_dir / f"{name}.flac", wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            holder, url = entries[name]
            rows.append([f"{name}.flac", label, role, f"{len(wave) / SAMPLE_RATE:.3f}", holder, url])
    with open(out_dir / "classes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "class", "role", "seconds", "copyright", "source"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} files to {out_dir}")


if __name__ == "__main__":
    main()
