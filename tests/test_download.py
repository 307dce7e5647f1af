"""The download stage: every dataset kind from local copies, broken files, archives, downloads."""
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CATS_DOGS, PETS, data_settings, make_tree, need
from PIL import Image

from transferlab.core import fetch
from transferlab.data import datasets, index
from transferlab.data.images import BadImage, inspect, load_rgb
from transferlab.pipeline.layout import files_in


def data_params(dataset="folder", source=None, label=None):
    return data_settings(dataset=dataset, source=str(source) if source else None, label=label)


def good_jpeg(path: Path, size=(48, 32)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path, "JPEG")
    return path.read_bytes()


def test_folder_dataset_index(tmp_path):
    src = make_tree(tmp_path / "src", {"cat": 3, "dog": 2})
    (src / "stray.jpg").write_bytes((src / "cat" / "cat_0.jpg").read_bytes())
    summary = index.build(data_params(source=src), files_in("download", tmp_path / "data"))
    idx = pd.read_csv(tmp_path / "data" / "index.csv")
    assert list(idx.columns) == ["path", "label", "width", "height", "bytes", "sha256"]
    assert summary["counts"] == {"cat": 3, "dog": 2} and summary["classes"] == ["cat", "dog"]
    assert set(idx["path"]) == {f"cat/cat_{i}.jpg" for i in range(3)} | {f"dog/dog_{i}.jpg" for i in range(2)}
    assert (idx["width"] == 40).all() and (idx["bytes"] > 0).all()
    rejected = pd.read_csv(tmp_path / "data" / "rejected.csv")
    assert rejected["path"].tolist() == ["stray.jpg"]
    assert rejected["reason"].tolist() == ["not inside a class folder"]


def broken_files(folder: Path) -> dict[str, str]:
    """One file of every broken kind; name → expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good_jpeg(folder / "ok.jpg", (200, 150))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not an image")
    (folder / "noise.png").write_bytes(np.random.default_rng(1).integers(0, 255, 500, dtype=np.uint8).tobytes())
    return {"empty.jpg": "empty file", "truncated.jpg": "truncated", "text.jpg": "not an image",
            "noise.png": "not an image"}


def test_every_broken_kind_is_left_out_and_counted(tmp_path):
    expected = broken_files(tmp_path / "src" / "cat")
    good_jpeg(tmp_path / "src" / "dog" / "ok.jpg")
    summary = index.build(data_params(source=tmp_path / "src"), files_in("download", tmp_path / "data"))
    rejected = pd.read_csv(tmp_path / "data" / "rejected.csv")
    assert dict(zip(rejected["path"].str.replace("cat/", ""), rejected["reason"])) == expected
    assert summary["images"] == 2 and summary["left_out"] == 4
    assert summary["left_out_reasons"] == {"empty file": 1, "not an image": 2, "truncated": 1}


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_odd_modes_kept_and_read_as_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    image = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    image.save(path)
    assert inspect(path)[:2] == (30, 20)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (30, 20)


def test_inspect_raises_reason(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="empty"):
        inspect(tmp_path / "e.jpg")


def test_zip_and_tar_sources(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2})
    zpath, tpath = tmp_path / "set.zip", tmp_path / "set.tar.gz"
    with zipfile.ZipFile(zpath, "w") as zf, tarfile.open(tpath, "w:gz") as tf:
        for p in sorted(src.rglob("*.jpg")):
            zf.write(p, Path("set") / p.relative_to(src))
            tf.add(p, str(Path("set") / p.relative_to(src)))
    for archive in (zpath, tpath):
        out = tmp_path / f"data-{archive.name}"
        summary = index.build(data_params(source=fetch.extract(archive, out / "x") / "set"), files_in("download", out))
        assert summary["counts"] == {"a": 2, "b": 2}
    # An archive given as data.source is extracted under data/raw/<dataset>/.
    summary = index.build(data_params(source=zpath), files_in("download", tmp_path / "data-direct"))
    assert summary["images"] == 4 and summary["counts"] == {"set": 4}


def test_zip_path_traversal_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr("../../escaped.txt", "pwned")
    with pytest.raises(fetch.UnsafeArchiveError, match="escaped"):
        fetch.extract(evil, tmp_path / "out" / "x")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "out" / "x" / "ok").exists()


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/escaped-abs.txt", "link"])
def test_tar_traversal_refused(tmp_path, member):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        else:
            info.size = 5
            tf.addfile(info, io.BytesIO(b"pwned"))
    with pytest.raises(fetch.UnsafeArchiveError):
        fetch.extract(evil, tmp_path / "out" / "x")
    assert not list(tmp_path.rglob("escaped*"))


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files and honours 'Range: bytes=N-' like real download servers."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.server.served.append(start)  # before the body: the client may finish reading before a later append
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=str(root)))
    httpd.served = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.served
    httpd.shutdown()


def test_download_resumes_and_verifies(tmp_path, server):
    root, url, served = server
    payload = bytes(range(256)) * 400
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(payload[:1000])  # left by an interrupted run
    checksum = "sha256:" + __import__("hashlib").sha256(payload).hexdigest()
    fetch.download(f"{url}/blob.bin", dest, checksum)
    assert dest.read_bytes() == payload and served == [1000]
    assert not (dest.parent / "blob.bin.part").exists()


def test_download_checksum_mismatch_leaves_nothing(tmp_path, server):
    root, url, _ = server
    (root / "blob.bin").write_bytes(b"x" * 100)
    dest = tmp_path / "blob.bin"
    with pytest.raises(fetch.DownloadError, match="expected"):
        fetch.download(f"{url}/blob.bin", dest, "md5:" + "0" * 32)
    assert not dest.exists() and not (tmp_path / "blob.bin.part").exists()


def test_url_source_for_folder_dataset(tmp_path, server):
    root, url, _ = server
    src = make_tree(tmp_path / "src", {"a": 2, "b": 3})
    with zipfile.ZipFile(root / "tree.zip", "w") as zf:
        for p in sorted(src.rglob("*.jpg")):
            zf.write(p, p.relative_to(src))
    summary = index.build(data_params(source=f"{url}/tree.zip"), files_in("download", tmp_path / "data"))
    assert summary["counts"] == {"a": 2, "b": 3}


def test_official_archives_have_checksums():
    for name, archives in datasets.ARCHIVES.items():
        for archive in archives:
            assert archive.url.startswith("https://") and ":" in archive.checksum, name


def pets_layout(root: Path) -> Path:
    make_tree(root / "tmp", {"Abyssinian": 3, "beagle": 3})
    (root / "images").mkdir(parents=True)
    for p in (root / "tmp").rglob("*.jpg"):
        p.rename(root / "images" / p.name)
    (root / "images" / "README.mat").write_bytes(b"MATLAB 5.0")
    (root / "annotations").mkdir()
    (root / "annotations" / "trainval.txt").write_text("Abyssinian_0 1 1 1\nAbyssinian_1 1 1 1\nbeagle_0 2 2 1\nbeagle_1 2 2 1\n")
    (root / "annotations" / "test.txt").write_text("Abyssinian_2 1 1 1\nbeagle_2 2 2 1\n")
    return root


@pytest.mark.parametrize("label, counts", [("breed", {"Abyssinian": 3, "beagle": 3}), ("species", {"cat": 3, "dog": 3})])
def test_oxford_pets_labels(tmp_path, label, counts):
    root = pets_layout(tmp_path / "pets")
    summary = index.build(data_params("oxford_pets", root, label), files_in("download", tmp_path / "data"))
    assert summary["counts"] == counts
    assert summary["left_out_reasons"] == {"not an image": 1}


def test_oxford_pets_archives_offline(tmp_path):
    root = pets_layout(tmp_path / "pets")
    tars = []
    for part in ("images", "annotations"):
        tars.append(tmp_path / f"{part}.tar.gz")
        with tarfile.open(tars[-1], "w:gz") as tf:
            tf.add(root / part, part)
    raw = tmp_path / "raw"
    (raw / "downloads").mkdir(parents=True)
    for t in tars:  # as if fetched earlier: verified against the real checksums, so patch them
        (raw / "downloads" / t.name).write_bytes(t.read_bytes())
    archives = tuple(datasets.Archive(a.url, f"sha256:{fetch.file_digest(raw / 'downloads' / a.filename)}")
                     for a in datasets.ARCHIVES["oxford_pets"])
    old = datasets.ARCHIVES["oxford_pets"]
    datasets.ARCHIVES["oxford_pets"] = archives
    try:
        found = datasets.materialise("oxford_pets", None, raw)
    finally:
        datasets.ARCHIVES["oxford_pets"] = old
    assert (found / "images" / "beagle_0.jpg").exists() and (found / "annotations" / "test.txt").exists()


def test_cats_vs_dogs_zip_with_broken_files(tmp_path):
    zpath = tmp_path / "kagglecatsanddogs.zip"
    img = tmp_path / "x.jpg"
    data = good_jpeg(img)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("PetImages/Cat/0.jpg", data)
        zf.writestr("PetImages/Cat/666.jpg", b"")
        zf.writestr("PetImages/Dog/0.jpg", data)
        zf.writestr("PetImages/Dog/11702.jpg", data[:300])
        zf.writestr("PetImages/Dog/Thumbs.db", b"\x00" * 64)
        zf.writestr("readme[1].txt", "license")
    summary = index.build(data_params("cats_vs_dogs", zpath), files_in("download", tmp_path / "data"))
    assert summary["counts"] == {"cat": 1, "dog": 1}
    assert summary["left_out_reasons"] == {"empty file": 1, "not an image": 1, "truncated": 1,
                                           "not inside a class folder": 1}


def test_shared_pets_subset():
    root = need(PETS)
    files, left_out = datasets.candidates("oxford_pets", root, "breed")
    assert len(files) == 1459 and not left_out
    assert len({label for _, label in files}) == 37
    for name in ("Abyssinian_34.jpg", "Abyssinian_5.jpg"):  # a GIF and an RGBA PNG named .jpg
        assert load_rgb(root / "images" / name).mode == "RGB"


def test_shared_cats_vs_dogs_subset(tmp_path):
    root = need(CATS_DOGS)
    files, left_out = datasets.candidates("cats_vs_dogs", root)
    assert len(files) == 3000 and not left_out
    assert {label for _, label in files} == {"cat", "dog"}
