"""A stranger's store: every attribute of zarr.json is hostile; info, verify and probe answer in one line, never a
traceback, and refuse before anything is allocated or decoded."""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedcache.errors import ConfigError, StoreError
from embedcache.store import TokenStore, schema, write_store
from embedcache.store.summary import format_summary, summarize
from embedcache.store.verify import verify_store
from embedcache_cli.main import main

KEY = "zarr.json:attributes.embedcache"


def make_store(path: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    labels = np.eye(3, dtype=np.uint8)[np.arange(n) % 3]
    tokens = rng.standard_normal((n, 6, 8)).astype(np.float32) + 2 * labels[:, None, :] @ rng.standard_normal((3, 8))
    splits = ["train"] * (n // 2) + ["valid"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    write_store(path, {1: tokens}, labels, ["dog", "bell", "siren"], [f"clip{i:02d}" for i in range(n)], splits,
                (3, 2), chunk_clips=4, provenance={"encoder": {"name": "test", "sample_rate": 16000}})
    return path


def edit_attrs(root: Path, change) -> None:
    meta = root / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc["attributes"]["embedcache"])
    meta.write_text(json.dumps(doc))


def cli(*args) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    unexpected = None if result.exception is None or isinstance(result.exception, SystemExit) else result.exception
    return result.exit_code, result.output, unexpected


def one_red_line(args, *fragments) -> str:
    code, output, unexpected = cli(*args)
    assert unexpected is None, f"{args[0]} raised {type(unexpected).__name__}: {str(unexpected)[:300]}"
    lines = output.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), output[:2000]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def probe_args(store: Path, out: Path) -> list:
    return ["probe", store, "--head", "linear", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--lr", "1e-3",
            "--out", out]


def _layout(change):
    return lambda attrs: change(attrs["layout"])


# (name, edit of attributes.embedcache, the key every refusal names, what it says)
ATTACKS = [
    ("unknown layout key", _layout(lambda lay: lay.update(bogus=1)), "layout.bogus", "unknown"),
    ("missing layout key", _layout(lambda lay: lay.pop("embed_dim")), "layout.embed_dim", "missing"),
    ("chunk_clips 0", _layout(lambda lay: lay.update(chunk_clips=0)), "layout.chunk_clips", ">= 1"),
    ("n_clips a string", _layout(lambda lay: lay.update(n_clips="12")), "layout.n_clips", "integer"),
    ("n_clips 1e12", _layout(lambda lay: lay.update(n_clips=1e12)), "layout.n_clips", "integer"),
    ("n_clips 10**12", _layout(lambda lay: lay.update(n_clips=10**12)), "layout.n_clips", "<= "),
    ("grid vs num_tokens", _layout(lambda lay: lay.update(grid=[4, 4])), "layout.grid", "num_tokens is 6"),
    ("grid a string", _layout(lambda lay: lay.update(grid="3x2")), "layout.grid", "list"),
    ("negative embed_dim", _layout(lambda lay: lay.update(embed_dim=-8)), "layout.embed_dim", ">= 1"),
    ("split_names a string", _layout(lambda lay: lay.update(split_names="train")), "layout.split_names", "list"),
    ("split_names ints", _layout(lambda lay: lay.update(split_names=[1, 2, 3])), "layout.split_names[0]", "string"),
    ("label_names a huge list", _layout(lambda lay: lay.update(label_names=[f"x{i}" for i in range(200_000)])),
     "layout.label_names", "at most"),
    ("layers a string", _layout(lambda lay: lay.update(layers="1")), "layout.layers", "list"),
    ("layers unsorted", _layout(lambda lay: lay.update(layers=[3, 1])), "layout.layers", "sorted"),
    ("dtype int4", _layout(lambda lay: lay.update(dtype="int4")), "layout.dtype", "float16, bfloat16, float32, int8"),
    ("int8 in format 2", lambda a: a.update(format_version=2, layout={**a["layout"], "dtype": "int8"}),
     "layout.dtype", "needs format_version >= 3"),
    ("extra a number", _layout(lambda lay: lay.update(extra=5)), "layout.extra", "mapping"),
    ("layout null", lambda a: a.update(layout=None), "layout", "mapping"),
    ("format_version true", lambda a: a.update(format_version=True), "format_version", "1, 2, 3"),
    ("status a number", lambda a: a.update(status=5), "status", "writing"),
    ("provenance a list", lambda a: a.update(provenance=[1]), "provenance", "mapping"),
    ("sample_rate a string", lambda a: a["provenance"]["encoder"].update(sample_rate="fast"),
     "provenance.encoder.sample_rate", "integer"),
    ("window_samples a list", lambda a: a["provenance"].update(clip_policy={"window_samples": [1]}),
     "provenance.clip_policy.window_samples", "integer"),
    ("skipped a string", lambda a: a.update(skipped="x"), "skipped", "list"),
    ("skipped of numbers", lambda a: a.update(skipped=[1, 2]), "skipped[0]", "not a mapping"),
    ("nested 100 deep", lambda a: a["provenance"].update(deep=json.loads("[" * 100 + "]" * 100)), "provenance.deep",
     "nested deeper than"),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("template") / "s.zarr")


@pytest.fixture
def store(template, tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    shutil.copytree(template, path)
    return path


@pytest.mark.parametrize("name,change,key,what", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_malformed_attributes_are_one_line_in_info_probe_and_verify(store, tmp_path, name, change, key, what):
    edit_attrs(store, change)
    for args in (["info", store], ["info", store, "--json"], probe_args(store, tmp_path / "run")):
        line = one_red_line(args, f"{KEY}.{key}", what)
        assert "embedcache verify" in line or args[0] == "info"
    assert not (tmp_path / "run").exists()
    with pytest.raises(StoreError, match=f"{KEY}.{key}".replace("[", r"\[").replace("]", r"\]")):
        TokenStore.open(store)
    report = verify_store(store)
    assert any(p.key == f"{KEY}.{key}" and what in p.what for p in report.problems), report.problems
    code, output, unexpected = cli("verify", store)
    assert unexpected is None and code == 1 and f"{KEY}.{key}" in output


def test_arrays_that_disagree_with_the_layout_are_refused_before_reading(store, tmp_path):
    edit_attrs(store, _layout(lambda lay: lay.update(n_clips=13)))  # rows != the arrays' 12
    one_red_line(["info", store], "array valid_tokens has shape [12], the layout promises [13]", "embedcache verify")
    one_red_line(probe_args(store, tmp_path / "run"), "the layout promises [13]")
    edit_attrs(store, _layout(lambda lay: lay.update(n_clips=12, label_names=["dog"])))  # columns != the labels array
    one_red_line(["info", store], "array labels has shape [12, 3], the layout promises [12, 1]")
    edit_attrs(store, _layout(lambda lay: lay.update(label_names=["dog", "bell", "siren"], layers=[1, 2])))
    one_red_line(probe_args(store, tmp_path / "run"), "array tokens/layer_2 is missing")


def test_a_200k_deep_attribute_document_is_one_line_not_a_recursion_error(store, tmp_path):
    text = (store / "zarr.json").read_text()
    deep = "[" * 200_000 + "]" * 200_000
    (store / "zarr.json").write_text(text.replace('"provenance": {', f'"deep": {deep}, "provenance": {{', 1))
    for args in (["info", store], probe_args(store, tmp_path / "run")):
        one_red_line(args, "zarr.json", "nested too deeply")
    report = verify_store(store)
    assert [p.key for p in report.problems] == ["zarr.json"] and "nested too deeply" in report.problems[0].what


def test_a_format_1_store_still_passes_the_schema(store):
    for name in ("recording_ids", "offsets", "lost_samples"):
        shutil.rmtree(store / name)
    edit_attrs(store, lambda a: a.update(format_version=1))
    opened = TokenStore.open(store)
    assert opened.format_version == 1 and opened.offsets.tolist() == [0] * 12
    assert verify_store(store).ok
    assert "rows        one per clip (12 recordings)" in format_summary(summarize(opened))
    assert "warning" not in format_summary(summarize(opened))  # its clips are as long as its clip policy


def test_a_format_1_store_of_clips_of_other_lengths_is_flagged_by_info_and_probe(store, tmp_path):
    for name in ("recording_ids", "offsets", "lost_samples"):
        shutil.rmtree(store / name)
    # The old default policy: every clip padded or cropped to 10 s (the fixture's clips are shorter).
    policy = {"num_samples": 160000, "sample_rate": 16000, "crop": "keep start", "pad": "zeros at end"}
    edit_attrs(store, lambda a: (a.update(format_version=1), a["provenance"].update(clip_policy=policy)))
    note = ("12 of 12 clip(s) are not 10.00 s long, and this format-1 store padded or cropped their waveforms to that "
            "length, which the official pipelines do not, so their tokens differ from the official ones; extract the "
            "store again with this version")
    code, output, unexpected = cli("info", store)
    assert code == 0 and unexpected is None and f"warning     {note}" in output
    code, output, unexpected = cli(*probe_args(store, tmp_path / "run"))
    assert code == 0 and unexpected is None and f"warning: {store}: {note}" in output.splitlines()


def test_the_readme_documents_every_schema_field_and_bound():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## The store format"):]
    section = section[:section.index("\n## ")]
    fields = [*schema.ATTRS.fields, *schema.LAYOUT.fields, *schema.PROVENANCE.fields, *schema.ENCODER.fields,
              *schema.CLIP_POLICY.fields]
    assert [name for name in fields if f"`{name}`" not in section] == []
    bounds = [schema.MAX_CLIPS, schema.MAX_TOKENS, schema.MAX_PREFIX, schema.MAX_EMBED_DIM, schema.MAX_LAYER,
              schema.MAX_LAYER + 1, schema.MAX_CLASSES, schema.MAX_SPLITS, schema.MAX_NAME_CHARS,
              schema.MAX_FINGERPRINT_CHARS, schema.MAX_SAMPLE_RATE, schema.MAX_DEPTH]
    plain = section.replace(",", "")  # 1,024 or 1024
    assert [bound for bound in bounds if not re.search(rf"\b{bound}\b", plain)] == []
    assert schema.MAX_CHUNK_BYTES == 2 << 30 and "2 GiB" in section
    assert schema.MAX_SAMPLES == 1 << 62 and "2^62" in section


# -- property-based: arbitrary and mutated attribute documents ------------------------------------------------
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(
    max_size=8)
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=6), inner, max_size=4), max_leaves=12)
LAYOUT_KEYS = ["n_clips", "num_tokens", "num_prefix", "embed_dim", "grid", "layers", "dtype", "chunk_clips",
               "label_names", "split_names", "compression", "extra"]
TOP_KEYS = ["format_version", "status", "layout", "provenance", "fingerprint", "skipped", "growing"]
# Values close to valid ones find the boundaries faster than arbitrary JSON alone.
NEAR = st.sampled_from([0, 1, -1, 2, 3, 6, 12, 13, 2**31, 10**12, 1.0, 1e12, True, "", "3", [], [3, 2], [2, 3],
                        [1], [1, 1], ["train"], ["dog", "bell", "siren"], {}, None, "float16", "zstd", "complete",
                        "writing"])


def mutations():
    """(path of keys, action, value): set, delete or replace one field of the valid document."""
    path = st.one_of(st.tuples(st.sampled_from(TOP_KEYS)),
                     st.tuples(st.just("layout"), st.sampled_from(LAYOUT_KEYS)),
                     st.tuples(st.just("provenance"), st.sampled_from(["encoder", "clip_policy", "layers", "dtype"])),
                     st.tuples(st.just("provenance"), st.just("encoder"),
                               st.sampled_from(["name", "sample_rate", "num_layers", "checkpoint_sha256"])),
                     st.tuples(st.just("provenance"), st.just("clip_policy"),
                               st.sampled_from(["window_samples", "hop_samples", "num_samples", "semantics"])))
    return st.lists(st.tuples(path, st.sampled_from(["set", "delete"]), NEAR | JSON), min_size=1, max_size=4)


def _apply(doc: dict, edits) -> dict:
    doc = copy.deepcopy(doc)
    for keys, action, value in edits:
        node = doc
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            continue
        if action == "delete":
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return doc


def _write(root: Path, attrs) -> None:
    meta = root / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["embedcache"] = attrs
    meta.write_text(json.dumps(doc))


def _one_line_or_works(root: Path) -> str:
    """"opened" or "refused", after checking the reader, `info` and `verify` on the store at `root`."""
    try:
        summarize(TokenStore.open(root, allow_incomplete=True))
        outcome = "opened"
    except (StoreError, ConfigError) as error:
        assert "\n" not in str(error) and len(str(error)) < 2000, str(error)[:500]
        outcome = "refused"
    code, output, unexpected = cli("info", root)
    assert unexpected is None, f"info raised {type(unexpected).__name__}: {unexpected}"
    assert code == 0 or (code == 1 and len(output.strip().splitlines()) == 1), output[:2000]
    report = verify_store(root, check_values=False)  # never raises: every problem is a (key, what) line
    assert all("\n" not in str(problem) for problem in report.problems)
    return outcome


@pytest.fixture(scope="module")
def scratch(template):
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    shutil.copytree(template, folder / "s.zarr")
    valid = json.loads((template / "zarr.json").read_text())["attributes"]["embedcache"]
    yield folder / "s.zarr", valid
    shutil.rmtree(folder)


HYPOTHESIS = {"derandomize": True, "database": None, "deadline": None,
              "suppress_health_check": [HealthCheck.too_slow]}


def test_mutations_of_a_valid_document_open_or_refuse_in_one_line(scratch):
    root, valid = scratch
    tried = []

    @settings(max_examples=150, **HYPOTHESIS)
    @given(edits=mutations())
    def check(edits):
        _write(root, _apply(valid, edits))
        tried.append(_one_line_or_works(root))

    check()
    print(f"hypothesis: {len(tried)} mutated documents, {tried.count('opened')} opened")  # pytest -s shows it
    assert len(tried) >= 100 and tried.count("opened") >= 10


def test_arbitrary_documents_open_or_refuse_in_one_line(scratch):
    root, _ = scratch
    tried = []
    documents = JSON | st.fixed_dictionaries({key: NEAR | JSON for key in TOP_KEYS}) | st.fixed_dictionaries(
        {"format_version": st.just(2), "status": st.just("complete"), "provenance": st.just({}),
         "fingerprint": st.just(""), "layout": st.fixed_dictionaries({key: NEAR | JSON for key in LAYOUT_KEYS})})

    @settings(max_examples=100, **HYPOTHESIS)
    @given(attrs=documents)
    def check(attrs):
        _write(root, attrs)
        tried.append(_one_line_or_works(root))

    check()
    print(f"hypothesis: {len(tried)} arbitrary documents, {tried.count('opened')} opened")
    assert len(tried) >= 80
