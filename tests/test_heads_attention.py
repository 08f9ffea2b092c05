"""ep, simpool and abmilp: each paper's parameter count, its math against a textbook implementation, and learning
localised events that mean pooling misses."""

from __future__ import annotations

import pytest
import torch
from test_train import make_event_store

from embedcache import heads
from embedcache.errors import ConfigError
from embedcache.loader import SplitData
from embedcache.train import HeadBank, HeadSpec, TrainConfig, split_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 16, 3  # small enough to write every formula out


def make(kind: str, num_classes: int = C, embed_dim: int = D, seed: int = 0, **options) -> heads.ProbeHead:
    return heads.create(kind, num_classes, embed_dim, generator=torch.Generator().manual_seed(seed), **options)


# ---- parameter counts: each paper's formula -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "options", "expected"), [
    # EP: W_v (D x D / d_out) + Q queries (Q x D) + classifier (D / d_out x C + C)
    ("ep", {"num_queries": 4}, D * D + 4 * D + D * C + C),
    ("ep", {"num_queries": 2, "d_out": 2}, D * D // 2 + 2 * D + D // 2 * C + C),
    # SimPool: W_q, W_k (D x D each) + LayerNorm (2 D) + classifier; no projections: LayerNorm + classifier
    ("simpool", {}, 2 * D * D + 2 * D + D * C + C),
    ("simpool", {"projections": False}, 2 * D + D * C + C),
    ("simpool", {"projections": False, "gamma": 1.25}, 2 * D + 1 + D * C + C),  # + beta
    # AbMILP, Ilse et al.: V, U (L x D each) and w (L) of the paper, with the biases of their code, + classifier
    ("abmilp", {"hidden": 8}, 2 * (8 * D + 8) + (8 + 1) + D * C + C),
    ("abmilp", {"scorer": "tanh", "hidden": 8}, (8 * D + 8) + (8 + 1) + D * C + C),
    ("abmilp", {"scorer": "linear"}, (D + 1) + D * C + C),  # Beyond [cls]'s depth-1 scorer
])
def test_parameter_counts_follow_each_papers_formula(kind, options, expected):
    assert make(kind, **options).num_parameters() == expected


def test_parameter_counts_at_vit_base_and_audioset_size_against_mhca(capsys):
    dim, classes = 768, 527
    counts = {(kind, str(options)): heads.create(kind, classes, dim, **options).num_parameters()
              for kind, options in [("linear", {}), ("attentive", {}), ("ep", {}), ("simpool", {}),
                                    ("simpool", {"projections": False}), ("abmilp", {}),
                                    ("abmilp", {"scorer": "linear"}), ("protobin", {}), ("knn", {}), ("logreg", {})]}
    with capsys.disabled():
        print(f"\nparameters at D = {dim}, C = {classes}:")
        for (kind, options), count in counts.items():
            print(f"  {kind:10s} {options:28s} {count:>12,}")
    linear = dim * classes + classes
    assert counts["attentive", "{}"] == 2 * dim * dim + dim + linear == 1_585_679  # mhca, one query
    assert counts["ep", "{}"] == dim * dim + 32 * dim + linear == 1_019_663
    assert counts["simpool", "{}"] == 2 * dim * dim + 2 * dim + linear == 1_586_447
    assert counts["simpool", "{'projections': False}"] == 2 * dim + linear == 406_799
    assert counts["abmilp", "{}"] == 2 * (128 * dim + 128) + 129 + linear == 602_256
    assert counts["abmilp", "{'scorer': 'linear'}"] == dim + 1 + linear == 406_032
    assert counts["logreg", "{}"] == counts["linear", "{}"] == linear == 405_263
    assert counts["knn", "{}"] == 0
    assert counts["protobin", "{}"] == 5270 * dim + 5270 * classes + classes == 6_825_177


def test_ep_defaults_are_the_papers_and_options_are_checked():
    head = heads.create("ep", 527, 768)
    assert (head.num_queries, head.d_out) == (32, 1)
    assert heads.create("ep", 3, 40).num_queries == 8  # 32 does not divide 40
    with pytest.raises(ConfigError, match="num_queries=5 must be >= 1 and divide the value width"):
        make("ep", num_queries=5)
    with pytest.raises(ConfigError, match="d_out=3 must be >= 1 and divide embed_dim=16"):
        make("ep", d_out=3)
    with pytest.raises(ConfigError, match="simpool head: gamma=-1"):
        make("simpool", gamma=-1)
    with pytest.raises(ConfigError, match="scorer='mlp' is not known"):
        make("abmilp", scorer="mlp")


# ---- the math, against textbook implementations -------------------------------------------------------------------


def token_batch(size: int = 4, length: int = 10, seed: int = 1) -> heads.TokenBatch:
    tokens = torch.randn(size, length, D, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(size, length, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 1:] = False
    return heads.TokenBatch(tokens, mask)


def test_ep_equals_projecting_every_token_and_splitting_the_values_across_queries():
    head = make("ep", num_queries=4, d_out=2)
    batch = token_batch()
    size, length, _ = batch.tokens.shape
    width = D // 2
    values = head.value(batch.clean).view(size, length, 4, width // 4).transpose(1, 2)  # [B, Q, T, w / Q]
    scores = torch.einsum("qd,btd->bqt", head.queries * D**-0.5, batch.clean)  # keys: the raw tokens
    weights = scores.masked_fill(~batch.mask[:, None], float("-inf")).softmax(dim=-1)
    pooled = torch.einsum("bqt,bqtw->bqw", weights, values).reshape(size, width)  # query q -> its own slice
    torch.testing.assert_close(head(batch), head.fc(pooled), rtol=1e-5, atol=1e-6)


def test_simpool_equals_the_official_formula():
    head = make("simpool")
    batch = token_batch()
    normed = head.norm(batch.clean)
    query = head.query(batch.mean)  # the global average of the raw tokens, then W_q
    keys = head.key(normed)
    scores = torch.einsum("bd,btd->bt", query, keys) / D**0.5
    weights = scores.masked_fill(~batch.mask, float("-inf")).softmax(dim=-1)
    expected = head.fc(torch.einsum("bt,btd->bd", weights, normed))  # values: LN(x), no projection
    torch.testing.assert_close(head(batch), expected, rtol=1e-5, atol=1e-6)


def test_simpool_without_projections_and_with_gamma_by_hand():
    head = make("simpool", projections=False, gamma=2.0)
    with torch.no_grad():
        head.beta.fill_(0.25)
    batch = token_batch()
    expected = []
    for row in range(4):
        x = head.norm(batch.tokens[row, batch.mask[row]])  # [n, D], the real tokens only
        weights = torch.softmax(x @ x.mean(dim=0) / D**0.5, dim=0)
        shifted = x - x.min() + 1e-6
        expected.append(((weights[:, None] * shifted**2).sum(dim=0)).sqrt() + 0.25)
    torch.testing.assert_close(head(batch), head.fc(torch.stack(expected)), rtol=1e-5, atol=1e-6)


def test_abmilp_gated_attention_by_hand():
    head = make("abmilp", hidden=8)
    batch = token_batch()
    for row in range(4):
        x = batch.tokens[row, batch.mask[row]]
        gate = torch.tanh(x @ head.attention_v.weight.t() + head.attention_v.bias) * torch.sigmoid(
            x @ head.attention_u.weight.t() + head.attention_u.bias)
        weights = torch.softmax((gate @ head.attention_w.weight.t()).squeeze(-1) + head.attention_w.bias, dim=0)
        expected = head.fc((weights[:, None] * x).sum(dim=0))
        torch.testing.assert_close(head(batch)[row], expected, rtol=1e-5, atol=1e-6)


# ---- learning ------------------------------------------------------------------------------------------------------


def test_ep_simpool_and_abmilp_beat_mean_pooled_linear_on_localized_events(tmp_path):
    store = make_event_store(tmp_path / "events.zarr")
    specs = [
        HeadSpec("linear", lr=1e-1, weight_decay=1e-4, seed=0, options={"pooling": "mean"}),
        HeadSpec("ep", lr=1e-1, weight_decay=1e-4, seed=0),
        HeadSpec("simpool", lr=1e-1, weight_decay=1e-4, seed=0),
        HeadSpec("abmilp", lr=1e-1, weight_decay=1e-4, seed=0),
        HeadSpec("simpool", lr=1e-1, weight_decay=1e-4, seed=0, options={"projections": False}),
    ]
    config = TrainConfig(epochs=10, batch_size=16, warmup_epochs=1.0, device="cpu")
    bank = HeadBank(specs, config).fit(SplitData(store, "train"))
    test = SplitData(store, "test")
    linear, ep, simpool, abmilp, free = (split_metrics(test.labels, s, True)["map"] for s in bank.predict(test))
    # Measured (data seed 0): linear 0.60, ep 0.97, simpool 0.84, abmilp 0.73 test mAP; with data seed 1: 0.60,
    # 0.98, 0.83, 0.82. Linear's lr 1e-1 is its fair best here (see test_train).
    assert ep > linear + 0.3
    assert simpool > linear + 0.2
    assert abmilp > linear + 0.1
    # Without W_q, W_k the attention follows the average token (the background): no better than the mean (0.58).
    assert free < linear + 0.05
