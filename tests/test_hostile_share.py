"""A store, zip or HDF5 file from a stranger: every attack is refused with one line, nothing is written outside the
destination, no other local file is read, and the user's own files survive."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck
from hypothesis import strategies as st

from embedcache.store import write_store
from embedcache.store.hdf5 import export_hdf5
from embedcache.store.verify import verify_store
from embedcache_cli.main import main

LABELS = ["dog", "bell", "siren"]
N = 6
SECRET = b"SECRET-BYTES-FROM-ANOTHER-FILE"


def make(path: Path, n: int = N) -> Path:
    rng = np.random.default_rng(0)
    write_store(
        path, {1: rng.standard_normal((n, 6, 8)).astype(np.float32)}, np.eye(3, dtype=np.uint8)[np.arange(n) % 3],
        LABELS, [f"clip{i}" for i in range(n)], ["train", "valid", "test"] * (n // 3), (3, 2), chunk_clips=2,
        provenance={"encoder": {"name": "melpatch"}, "dtype": "float16"},
    )
    return path


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def refused(result, *words: str) -> str:
    """The command exited 1 with exactly one line, `error: ...`, holding every word; no traceback."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under `root` (not following links): file bytes, link targets, or its kind."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            found[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(mode):
            found[str(path)] = path.read_bytes()
        elif not stat.S_ISDIR(mode):
            found[str(path)] = ("special", stat.S_IFMT(mode))
    return found


def written_outside(before: dict, after: dict, *allowed: Path) -> list[str]:
    """Paths new or changed in `after` that lie outside every `allowed` folder."""
    changed = [path for path, value in after.items() if before.get(path) != value]
    return [path for path in changed if not any(Path(path).is_relative_to(folder) for folder in allowed)]


# -- crafted zips ------------------------------------------------------------------------------------------------
def store_zip(tmp_path: Path, extra: list[zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]] = ()) -> Path:
    """A packed store (made with plain zipfile, not embedcache) plus the `extra` members."""
    store = make(tmp_path / "src.zarr")
    out = tmp_path / "crafted.zip"
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(store.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(store).as_posix())
        for item in extra:
            info, data = item if isinstance(item, tuple) else (item, SECRET)
            archive.writestr(info, data)
    shutil.rmtree(store)
    return out


def member(name: str, mode: int = 0o100644, compress: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    info.external_attr = mode << 16
    info.compress_type = compress
    return info


def patch_declared_size(path: Path, name: str, size: int) -> None:
    """Rewrite the uncompressed size that the central directory declares for `name`."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_length] == name.encode():
            struct.pack_into("<I", data, at + 24, size)
            break
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def escaping_names(tmp_path: Path) -> list[str]:
    return ["../x", "a/../../x", str(tmp_path / "work" / "abs_x"), "..\\x", "C:/x", "tokens/./zarr.json", "a//b"]


@pytest.mark.parametrize("index", range(7))
def test_zip_member_names_that_escape_are_refused_by_every_command(tmp_path, index):
    name = escaping_names(tmp_path)[index]
    crafted = store_zip(tmp_path, [member(name)])
    (tmp_path / "work").mkdir()
    before = snapshot(tmp_path)
    out = tmp_path / "work" / "out.zarr"
    refused(cli("copy", crafted, out), str(crafted), name, "zip member")
    refused(cli("info", crafted), name, "zip member")
    refused(cli("probe", crafted, "--head", "linear", "--epochs", "1", "--device", "cpu", "--out",
                tmp_path / "work" / "run"), name, "zip member")
    refused(cli("pack", crafted, tmp_path / "work" / "again.zip"), name)
    verified = cli("verify", crafted)
    assert verified.exit_code == 1 and name in verified.output and "Traceback" not in verified.output
    assert written_outside(before, snapshot(tmp_path)) == [] and not out.exists()
    assert not (tmp_path / "work" / "x").exists() and not (tmp_path / "x").exists()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_symlink_member_and_duplicate_names_are_refused(tmp_path):
    crafted = store_zip(tmp_path, [(member("evil", mode=0o120777), b"/etc/passwd")])
    refused(cli("copy", crafted, tmp_path / "out.zarr"), "evil", "symbolic link")
    refused(cli("info", crafted), "evil", "symbolic link")
    twice = store_zip(tmp_path / "b", [(member("zarr.json"), b"{}")])
    refused(cli("copy", twice, tmp_path / "out.zarr"), "zarr.json", "more than once")
    assert not (tmp_path / "out.zarr").exists()


def test_zip_bomb_and_lying_sizes_are_refused_before_reading(tmp_path):
    bomb = store_zip(tmp_path, [(member("big", compress=zipfile.ZIP_DEFLATED), bytes(64 << 20))])
    assert bomb.stat().st_size < 1 << 20
    line = refused(cli("copy", bomb, tmp_path / "out.zarr"), "big", "declares 67108864 bytes")
    assert "re-pack" in line
    refused(cli("info", bomb), "big")
    liar = store_zip(tmp_path / "b", [(member("big", compress=zipfile.ZIP_DEFLATED), bytes(1000))])
    patch_declared_size(liar, "big", 0xF0000000)
    refused(cli("copy", liar, tmp_path / "out.zarr"), "big", "declares 4026531840 bytes")
    assert not (tmp_path / "out.zarr").exists()


# -- symlinks, FIFOs and devices inside a store directory ---------------------------------------------------------
def chunk_of(store: Path) -> Path:
    return store / "tokens" / "layer_1" / "c" / "0" / "0" / "0"


def plant(store: Path, kind: str, outside: Path) -> str:
    """Replace one chunk, one array's metadata or a folder of `store` with something that is not a regular file."""
    target = chunk_of(store)
    if kind.endswith("metadata"):
        target = store / "labels" / "zarr.json"
    if kind == "folder link":
        target = store / "tokens" / "layer_1" / "c"
        (outside / "c").mkdir(parents=True)
        shutil.rmtree(target)
        target.symlink_to(outside / "c")
        return "tokens/layer_1/c"
    target.unlink()
    if kind.startswith("fifo"):
        os.mkfifo(target)
    elif kind.startswith("dev zero"):
        target.symlink_to("/dev/zero")
    elif kind == "secret link":
        target.symlink_to(outside / "secret.txt")
    return "labels/zarr.json" if kind.endswith("metadata") else "tokens/layer_1/c/0/0/0"


@pytest.mark.parametrize("kind", ["fifo", "fifo metadata", "dev zero", "dev zero metadata", "secret link",
                                  "folder link"])
def test_links_fifos_and_devices_in_a_store_are_refused_never_opened(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    store = make(tmp_path / "s.zarr")
    key = plant(store, kind, outside)
    what = "FIFO" if kind.startswith("fifo") else "symbolic link"
    verified = cli("verify", store)  # a FIFO metadata file blocked here, /dev/zero grew without bound
    assert verified.exit_code == 1 and key in verified.output and what in verified.output, verified.output
    assert "Traceback" not in verified.output
    refused(cli("info", store), key, what)
    refused(cli("pack", store, tmp_path / "s.zip"), key, what)
    refused(cli("copy", store, tmp_path / "c.zarr"), key, what)
    refused(cli("export", store, tmp_path / "s.h5"), key, what)
    assert not (tmp_path / "s.zip").exists() and not (tmp_path / "c.zarr").exists()
    assert not (tmp_path / "s.h5").exists()
    assert not verify_store(store).ok


# -- copy: same store by another spelling, the user's folders --------------------------------------------------------
SPELLINGS = ["./s.zarr", "s.zarr/", "s.zarr/../s.zarr", "link.zarr", "ABSOLUTE", "s.zarr/inner"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_copy_onto_itself_by_another_spelling_is_refused_and_keeps_the_source(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "s.zarr")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "s.zarr")
    destination = str(tmp_path / "s.zarr") if spelling == "ABSOLUTE" else spelling
    before = snapshot(tmp_path)
    what = "inside the source" if spelling.endswith("inner") else "same store"
    refused(cli("copy", "s.zarr", destination, "--overwrite"), what)
    assert snapshot(tmp_path) == before and verify_store(tmp_path / "s.zarr").ok


def test_copy_never_mixes_into_or_deletes_a_users_folder(tmp_path):
    make(tmp_path / "s.zarr")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):
        refused(cli("copy", tmp_path / "s.zarr", folder, *flags), str(folder), "not an embedcache token store")
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    # A store folder holding the user's files too (as today's copy left it): --overwrite keeps them.
    assert cli("copy", tmp_path / "s.zarr", tmp_path / "c.zarr").exit_code == 0
    (tmp_path / "c.zarr" / "notes.txt").write_text("mine")
    refused(cli("copy", tmp_path / "s.zarr", tmp_path / "c.zarr", "--overwrite"), "notes.txt")
    assert (tmp_path / "c.zarr" / "notes.txt").read_text() == "mine"
    # A zip that is not a store is the user's: --overwrite does not replace it.
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        archive.writestr("photo.jpg", b"jpeg")
    before = (tmp_path / "photos.zip").read_bytes()
    refused(cli("pack", tmp_path / "s.zarr", tmp_path / "photos.zip", "--overwrite"), "not an embedcache token store")
    refused(cli("copy", tmp_path / "s.zarr", tmp_path / "photos.zip", "--overwrite"), "not an embedcache token store")
    assert (tmp_path / "photos.zip").read_bytes() == before
    assert cli("copy", tmp_path / "s.zarr", tmp_path / "c2.zarr").exit_code == 0
    assert cli("copy", tmp_path / "s.zarr", tmp_path / "c2.zarr", "--overwrite").exit_code == 0
    assert verify_store(tmp_path / "c2.zarr").ok


# -- unwritable or odd destinations -----------------------------------------------------------------------------------
def test_export_onto_a_folder_is_one_line(tmp_path):
    make(tmp_path / "s.zarr")
    (tmp_path / "out.h5").mkdir()
    (tmp_path / "out.h5" / "keep.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):
        refused(cli("export", tmp_path / "s.zarr", tmp_path / "out.h5", *flags), "out.h5", "is a folder")
    assert (tmp_path / "out.h5" / "keep.txt").read_text() == "mine"


def commands_into(tmp_path: Path, folder: Path) -> dict[str, list]:
    return {
        "copy": ["copy", tmp_path / "s.zarr", folder / "c.zarr"],
        "pack": ["pack", tmp_path / "s.zarr", folder / "s.zip"],
        "export": ["export", tmp_path / "s.zarr", folder / "s.h5"],
        "import": ["import", tmp_path / "s.h5", folder / "i.zarr"],
    }


def test_a_destination_under_a_file_is_one_line(tmp_path):
    make(tmp_path / "s.zarr")
    export_hdf5(tmp_path / "s.zarr", tmp_path / "s.h5")
    (tmp_path / "file.txt").write_text("mine")
    for args in commands_into(tmp_path, tmp_path / "file.txt").values():
        refused(cli(*args), "file.txt", "not a folder")
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_a_read_only_destination_is_one_line(tmp_path):
    make(tmp_path / "s.zarr")
    export_hdf5(tmp_path / "s.zarr", tmp_path / "s.h5")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod 555 does not stop writes here, so there is nothing to refuse")
        for args in commands_into(tmp_path, locked).values():
            refused(cli(*args), "locked", "cannot write")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_a_write_that_fails_midway_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """Root ignores chmod: a disk that refuses the second batch of writes stands in for a read-only one."""
    from embedcache.store import pack, urls

    make(tmp_path / "s.zarr")
    real, calls = urls.set_many, []

    def refusing(store, items):
        calls.append(1)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied", str(tmp_path / "c.zarr" / "labels"))
        real(store, items)

    monkeypatch.setattr(pack, "COPY_BATCH", 8)
    monkeypatch.setattr(urls, "set_many", refusing)
    refused(cli("copy", tmp_path / "s.zarr", tmp_path / "c.zarr"), "c.zarr", "cannot write there (Permission denied)")
    assert not (tmp_path / "c.zarr").exists()  # the half-written copy is removed, so a retry is not refused


# -- HDF5 files that reach other files or declare huge sizes ------------------------------------------------------
@pytest.fixture
def exported(tmp_path) -> Path:
    make(tmp_path / "s.zarr")
    export_hdf5(tmp_path / "s.zarr", tmp_path / "s.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["labels"] = np.ones((N, 3), np.uint8)  # another file's bytes: all ones, unlike the one-hot labels
    (tmp_path / "secret.bin").write_bytes(bytes([1]) * (N * 3))
    return tmp_path / "s.h5"


def replace_labels(path: Path, how: str) -> None:
    folder = path.parent
    with h5py.File(path, "r+") as handle:
        del handle["labels"]
        if how == "external link":
            handle["labels"] = h5py.ExternalLink(str(folder / "other.h5"), "/labels")
        elif how == "virtual dataset":
            layout = h5py.VirtualLayout(shape=(N, 3), dtype=np.uint8)
            layout[:] = h5py.VirtualSource(str(folder / "other.h5"), "labels", shape=(N, 3))
            handle.create_virtual_dataset("labels", layout)
        elif how == "external storage":
            handle.create_dataset("labels", shape=(N, 3), dtype=np.uint8, external=[(str(folder / "secret.bin"), 0,
                                                                                     N * 3)])
        elif how == "soft link":
            handle["elsewhere"] = np.eye(3, dtype=np.uint8)[np.arange(N) % 3]
            handle["labels"] = h5py.SoftLink("/elsewhere")


@pytest.mark.parametrize("how", ["external link", "virtual dataset", "external storage", "soft link"])
def test_hdf5_import_never_reads_another_file(exported, how):
    replace_labels(exported, how)
    out = exported.parent / "i.zarr"
    word = {"external link": "external link", "virtual dataset": "virtual dataset",
            "external storage": "external file", "soft link": "soft link"}[how]
    refused(cli("import", exported, out), "/labels", word)
    assert not out.exists()


def forge_huge(source: Path, out: Path, n: int) -> None:
    """An HDF5 file of a few KB whose layout and datasets declare `n` clips (chunked, nothing written)."""
    with h5py.File(source, "r") as src, h5py.File(out, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        attrs = json.loads(src.attrs["embedcache"])
        attrs["layout"]["n_clips"] = n
        dst.attrs["embedcache"] = json.dumps(attrs)
        names = []
        src.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            shape = (n, *src[name].shape[1:])
            dst.create_dataset(name, shape=shape, dtype=src[name].dtype, chunks=(1024, *shape[1:]))


def test_hdf5_with_huge_declared_dimensions_is_refused_before_allocating(exported):
    huge = exported.parent / "huge.h5"
    forge_huge(exported, huge, 1 << 40)
    assert huge.stat().st_size < 1 << 20
    line = refused(cli("import", huge, exported.parent / "i.zarr"), "huge.h5", "declares")
    assert "bytes" in line and not (exported.parent / "i.zarr").exists()


def test_hdf5_import_into_a_users_folder_or_onto_a_fifo_is_refused(exported):
    folder = exported.parent / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):
        refused(cli("import", exported, folder, *flags), "not an embedcache token store")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    os.mkfifo(exported.parent / "pipe.h5")
    refused(cli("import", exported.parent / "pipe.h5", exported.parent / "i.zarr"), "pipe.h5", "not a regular file")


# -- property-based: fuzzed zip member names and small HDF5 structures ------------------------------------------------
HYPOTHESIS = {"derandomize": True, "database": None, "deadline": None,
              "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
ZIP_EXAMPLES, HDF5_EXAMPLES = 120, 60
SEGMENTS = ["a", "c", "0", "..", ".", "", "zarr.json", "tokens", "labels", "x\\y", "C:", "~", "a b", "\x01", "é",
            "...", " ", "a" * 300]
DEEP = "w/" * 7  # out.zarr sits 8 folders below the sandbox: 5 fuzzed '..' cannot climb out of it


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    """A packed store, its HDF5 export, and the files an attack would read: other.h5 and secret.bin."""
    root = tmp_path_factory.mktemp("templates")
    make(root / "s.zarr")
    store_zip(root / "z", [])
    shutil.move(root / "z" / "crafted.zip", root / "s.zip")
    export_hdf5(root / "s.zarr", root / "s.h5")
    with h5py.File(root / "s.h5", "r") as src, h5py.File(root / "other.h5", "w") as other:
        def secret_copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                other.create_dataset(name, data=obj[()] if obj.dtype.kind == "O" else np.full(obj.shape, 7, obj.dtype),
                                     dtype=obj.dtype)
        src.visititems(secret_copy)
    (root / "secret.bin").write_bytes(b"\xc8" * (1 << 16))
    return root


zip_members = st.tuples(
    st.one_of(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map("/".join),
              st.text(alphabet="a./\\:\x00", max_size=12)),
    st.booleans(),  # absolute: under the sandbox, so a bug cannot write anywhere else
    st.sampled_from([0o100644, 0o120777, 0o010644, 0o040755, 0o020644, 0]),
    st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
    st.sampled_from([None, 0, 100, 1 << 20, 0xF0000000]),  # a forged declared size
)


def test_fuzzed_zip_members_never_escape_crash_or_bring_in_other_bytes(templates, tmp_path):
    from hypothesis import given, settings

    from embedcache.errors import StoreError
    from embedcache.store import TokenStore
    from embedcache.store.pack import copy_store

    outcomes: list[str] = []

    @settings(max_examples=ZIP_EXAMPLES, **HYPOTHESIS)
    @given(members=st.lists(zip_members, min_size=1, max_size=3))
    def check(members):
        sandbox = Path(tempfile.mkdtemp(dir=tmp_path))
        (sandbox / DEEP).mkdir(parents=True)
        crafted = sandbox / "crafted.zip"
        shutil.copy(templates / "s.zip", crafted)
        with zipfile.ZipFile(crafted, "a") as archive, _quiet():
            for name, absolute, mode, method, _ in members:
                archive.writestr(member(f"{sandbox}/{name}" if absolute else name, mode, method), SECRET * 3)
        for name, absolute, _, _, size in members:
            if size is not None:
                patch_declared_size(crafted, f"{sandbox}/{name}" if absolute else name, size)
        out = sandbox / DEEP / "out.zarr"
        before = snapshot(sandbox)
        try:
            copy_store(crafted, out)
            outcomes.append("copied")
        except StoreError:
            outcomes.append("refused")
        assert written_outside(before, snapshot(sandbox), out) == []
        if out.exists():  # every byte written is a member's own bytes, under its own (checked) name
            with zipfile.ZipFile(crafted) as archive:
                names = set(archive.namelist())
                for path in out.rglob("*"):
                    assert not path.is_symlink()
                    if path.is_file():
                        key = path.relative_to(out).as_posix()
                        assert key in names and path.read_bytes() == archive.read(key)
        try:
            TokenStore.open(crafted)
        except StoreError:
            pass
        verify_store(crafted)  # reports, never raises
        shutil.rmtree(sandbox)

    check()
    print(f"hypothesis: {len(outcomes)} fuzzed zips, {outcomes.count('copied')} copied, "
          f"{outcomes.count('refused')} refused")  # pytest -s shows it
    assert len(outcomes) >= ZIP_EXAMPLES // 2 and outcomes.count("refused") > 0 and outcomes.count("copied") > 0


class _quiet:
    """zipfile warns about the duplicate names the fuzzer writes on purpose."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


HDF5_NAMES = ["labels", "splits", "valid_tokens", "num_samples", "clip_ids", "recording_ids", "offsets",
              "lost_samples", "tokens/layer_1"]
HDF5_OPS = ["external link", "soft link", "dangling soft link", "virtual", "external storage", "huge", "compact",
            "gzip", "delete", "float64", "alias", "extra external link", "n_clips", "bad json", "no format",
            "array attribute"]


def mutate_hdf5(path: Path, templates: Path, op: str, name: str, number: int) -> None:
    """Apply one attack or harmless rewrite to the export at `path`."""
    other, flat = str(templates / "other.h5"), name.replace("/", "_")
    with h5py.File(path, "r+") as handle:
        def taken(link: str) -> bool:  # without resolving it (an external link would open its file)
            return handle.id.links.exists(link.encode())

        if op in ("n_clips", "bad json", "no format", "array attribute", "extra external link"):
            if op == "n_clips":
                try:
                    attrs = json.loads(handle.attrs["embedcache"])
                    attrs["layout"]["n_clips"] = number
                    handle.attrs["embedcache"] = json.dumps(attrs)
                except (KeyError, TypeError, ValueError):
                    pass  # an earlier edit broke the attribute already
            elif op == "bad json":
                handle.attrs["embedcache"] = "{" * (number % 5000)
            elif op == "no format" and "format" in handle.attrs:
                del handle.attrs["format"]
            elif op == "array attribute":
                handle.attrs["embedcache"] = np.arange(number % 7)
            elif op == "extra external link" and not taken(f"extra_{number}"):
                handle[f"extra_{number}"] = h5py.ExternalLink(other, "/labels")
            return
        if not taken(name):
            return
        if handle.id.links.get_info(name.encode()).type != h5py.h5l.TYPE_HARD:
            return  # an earlier edit replaced it
        dataset = handle[name]
        shape, dtype, text = dataset.shape, dataset.dtype, dataset.dtype.kind == "O"
        data = dataset[()]
        if op == "alias" and not taken(f"alias_{flat}"):
            handle[f"alias_{flat}"] = dataset
            return
        if op == "soft link" and not taken(f"stash_{flat}"):
            handle.move(name, f"/stash_{flat}")
            handle[name] = h5py.SoftLink(f"/stash_{flat}")
            return
        del handle[name]
        if op == "external link":
            handle[name] = h5py.ExternalLink(other, f"/{name}")
        elif op == "dangling soft link":
            handle[name] = h5py.SoftLink("/nowhere")
        elif op == "virtual" and not text:
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(other, name, shape=shape)
            handle.create_virtual_dataset(name, layout)
        elif op == "external storage" and not text:
            handle.create_dataset(name, shape=shape, dtype=dtype,
                                  external=[(str(templates / "secret.bin"), 0, int(np.prod(shape)) * dtype.itemsize)])
        elif op == "huge":
            big = (shape[0] << (1 + number % 40), *shape[1:])
            handle.create_dataset(name, shape=big, dtype=dtype, chunks=(min(big[0], 1024), *shape[1:]))
        elif op == "compact":
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_layout(h5py.h5d.COMPACT)
            handle.create_dataset(name, data=data, dtype=dtype, dcpl=plist)
        elif op == "gzip":
            handle.create_dataset(name, data=data, dtype=dtype, compression="gzip")
        elif op == "float64" and not text:
            handle.create_dataset(name, data=data.astype(np.float64))
        elif op != "delete":
            handle.create_dataset(name, data=data, dtype=dtype)  # an op that does not apply: put it back


def same_arrays(store, template) -> bool:
    names = ["labels", "split_codes", "valid_tokens", "num_samples", "clip_ids", "recording_ids", "offsets",
             "lost_samples"]
    return all(np.array_equal(getattr(store, name), getattr(template, name)) for name in names) and np.array_equal(
        store.read_tokens(1, 0, N).numpy(), template.read_tokens(1, 0, N).numpy())


def test_fuzzed_hdf5_structures_never_crash_write_outside_or_read_other_files(templates, tmp_path):
    from hypothesis import given, settings

    from embedcache.errors import StoreError
    from embedcache.store import TokenStore
    from embedcache.store.hdf5 import import_hdf5

    template = TokenStore.open(templates / "s.zarr")
    outcomes: list[str] = []

    @settings(max_examples=HDF5_EXAMPLES, **HYPOTHESIS)
    @given(edits=st.lists(st.tuples(st.sampled_from(HDF5_OPS), st.sampled_from(HDF5_NAMES),
                                    st.integers(-3, 1 << 45)), min_size=1, max_size=3))
    def check(edits):
        sandbox = Path(tempfile.mkdtemp(dir=tmp_path))
        source = sandbox / "in.h5"
        shutil.copy(templates / "s.h5", source)
        for op, name, number in edits:
            mutate_hdf5(source, templates, op, name, number)
        out = sandbox / "out.zarr"
        before = snapshot(sandbox)
        try:
            imported = import_hdf5(source, out)
        except StoreError:
            outcomes.append("refused")
            assert not out.exists()
        else:
            outcomes.append("imported")
            assert same_arrays(imported, template)  # nothing from other.h5 or secret.bin came in
        assert written_outside(before, snapshot(sandbox), out) == []
        shutil.rmtree(sandbox)

    check()
    print(f"hypothesis: {len(outcomes)} fuzzed HDF5 files, {outcomes.count('imported')} imported, "
          f"{outcomes.count('refused')} refused")  # pytest -s shows it
    assert len(outcomes) >= HDF5_EXAMPLES // 2 and outcomes.count("refused") > 0 and outcomes.count("imported") > 0
