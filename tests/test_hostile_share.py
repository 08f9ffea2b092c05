"""A store, zip or HDF5 file from a stranger: every attack is refused with one line, nothing is written outside the
destination, no other local file is read, and the user's own files survive."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

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
