"""Cache vs no cache: a 30-epoch probe from the store (extract once, then train) vs re-running the frozen encoder on
every batch of every epoch (what peer toolkits without a token cache do), side by side in one run.

    python -m bench.bench_cache_vs_encoder --clips 120 --encoder vit --out runs/bench_cache_vs_encoder.json

Cached: `extract` over the whole manifest (validation, decoding, forward, writes), then one head trained for
--epochs on the train split loaded from the store. Uncached: the train clips decoded once into RAM (generous to the
peers, who usually decode every epoch), then every epoch runs the encoder forward (inference mode) on each batch
and trains the same head, loss, optimiser and batch size on its tokens. Reported: both totals, their ratio, and the
ratio per additional probe (the next probe on the same store skips the extraction).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.results import emit, machine, parse_args, ratio, timed
from embedcache import audio, encoders, heads, losses
from embedcache.datasets import read_manifest
from embedcache.datasets.sample import build_sample_set
from embedcache.device import resolve_device
from embedcache.extract import ExtractConfig, extract
from embedcache.loader import SplitData
from embedcache.store import TokenStore
from embedcache.train import HeadBank, HeadSpec, TrainConfig, warmup_cosine

RANDOM_INIT = {"vit"}


def cached_run(manifest: Path, store_path: Path, encoder: str, options: dict, spec: HeadSpec, config: TrainConfig,
               batch_size: int) -> dict:
    """Seconds to extract the manifest into a store and to train one head on its train split."""
    extract_s, _ = timed(extract, ExtractConfig(
        encoder=encoder, manifest=str(manifest), out=str(store_path), random_init=encoder in RANDOM_INIT,
        encoder_options=options, batch_size=batch_size, workers=1, progress=False, overwrite=True,
        device=config.device,
    ))
    store = TokenStore.open(store_path)
    load_s, train = timed(SplitData, store, "train", in_memory=True, device=resolve_device(config.device))
    fit_s, _ = timed(HeadBank([spec], config).fit, train)
    return {"extract_s": round(extract_s, 6), "load_s": round(load_s, 6), "train_s": round(fit_s, 6),
            "total_s": round(extract_s + load_s + fit_s, 6), "clips_extracted": store.n_clips,
            "tokens": [store.num_tokens, store.embed_dim]}


def uncached_run(manifest: Path, encoder_name: str, options: dict, spec: HeadSpec, config: TrainConfig,
                 num_samples: int, multilabel: bool) -> dict:
    """Seconds to decode the train clips once, then run encoder + head step on every batch of every epoch."""
    device = resolve_device(config.device)
    encoder = encoders.create(encoder_name, random_init=encoder_name in RANDOM_INIT, **options).to(device).eval()
    layers = [encoder.num_layers - 1]
    manifest_data = read_manifest(manifest)
    clips = [clip for clip in manifest_data.clips if clip.split == "train"]
    names = manifest_data.label_names

    def decode() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        waves, valid = [], []
        for clip in clips:
            wave, kept = audio.fit_length(audio.load_audio(clip.path, encoder.sample_rate), num_samples)
            waves.append(torch.from_numpy(np.ascontiguousarray(wave)))
            valid.append(encoder.valid_tokens(kept, num_samples))
        targets = torch.zeros(len(clips), len(names))
        for row, clip in enumerate(clips):
            targets[row, [names.index(label) for label in clip.labels]] = 1.0
        return torch.stack(waves), torch.tensor(valid), targets

    decode_s, (waves, valid, targets) = timed(decode)
    head = heads.create(spec.kind, num_classes=len(names), embed_dim=encoder.embed_dim,
                        has_prefix=encoder.num_prefix > 0, generator=torch.Generator().manual_seed(spec.seed),
                        **spec.options).to(device)
    loss_fn = losses.create_loss(losses.default_loss_kind(multilabel))
    optimiser = torch.optim.AdamW(head.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps = config.epochs * -(-len(clips) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, 0, steps))
    generator = torch.Generator().manual_seed(0)

    def train() -> None:
        for _ in range(config.epochs):
            for rows in torch.randperm(len(clips), generator=generator).split(config.batch_size):
                with torch.inference_mode():
                    output = encoder(waves[rows].to(device), layers)
                tokens = output.layers[layers[0]].float().clone()  # [B, T, D], out of inference mode
                mask = torch.arange(tokens.shape[1], device=device)[None, :] < valid[rows].to(device)[:, None]
                prefix = output.prefix.get(layers[0])
                batch = heads.TokenBatch(tokens, mask, None if prefix is None else prefix.float().clone())
                loss = loss_fn(head(batch).float(), targets[rows].to(device)) + head.auxiliary_loss()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()

    train_s, _ = timed(train)
    return {"decode_s": round(decode_s, 6), "train_with_encoder_s": round(train_s, 6),
            "total_s": round(decode_s + train_s, 6), "train_clips": len(clips)}


def run(clips: int, encoder: str, options: dict, head: str, epochs: int, batch_size: int, device: str,
        workdir: Path) -> dict:
    """Both paths on one generated sample set; the JSON summary."""
    manifest = build_sample_set(workdir / f"sample_{clips}", n_clips=clips)
    spec = HeadSpec(head, lr=1e-3)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, device=device, warmup_epochs=0.0,
                         data_path="in-memory")
    cached = cached_run(manifest, workdir / f"cache_{encoder}_{clips}.zarr", encoder, options, spec, config,
                        batch_size)
    store = TokenStore.open(workdir / f"cache_{encoder}_{clips}.zarr")
    uncached = uncached_run(manifest, encoder, options, spec, config, store.provenance["clip_policy"]["num_samples"],
                            store.is_multilabel)
    return {
        "benchmark": "cache_vs_encoder_every_epoch",
        "machine": machine(),
        "device": str(resolve_device(device)),
        "encoder": encoder, "encoder_options": options, "head": head, "epochs": epochs, "batch_size": batch_size,
        "clips": clips,
        "cached": cached,
        "uncached": uncached,
        "ratio_uncached_vs_cached": ratio(uncached["total_s"], cached["total_s"]),
        "ratio_per_extra_probe": ratio(uncached["total_s"], cached["load_s"] + cached["train_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--encoder", default="vit", help="vit (random weights) or melpatch")
    parser.add_argument("--encoder-option", action="append", default=[], metavar="KEY=VALUE",
                        help="e.g. embed_dim=192 depth=4 (numbers parsed)")
    parser.add_argument("--head", default="protobin")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parse_args(parser)
    options = {}
    for item in args.encoder_option:
        key, _, value = item.partition("=")
        options[key] = float(value) if "." in value else int(value) if value.lstrip("-").isdigit() else value
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(args.clips, args.encoder, options, args.head, args.epochs, args.batch_size, args.device,
                      Path(tmp))
    emit(summary, args.out)


if __name__ == "__main__":
    main()
