"""The datasets transferlab knows: where their archives are, and how file names map to labels."""
from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from transferlab.core.errors import UserError
from transferlab.core.fetch import download, extract, file_digest, is_archive
from transferlab.core.project import resolve
from transferlab.data import folders
from transferlab.settings.params import is_url


@dataclass(frozen=True)
class Archive:
    url: str
    checksum: str  # "<algorithm>:<hex digest>"

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


# Oxford-IIIT Pet (Parkhi et al. 2012): checksums as published with torchvision.datasets.OxfordIIITPet.
# Cats vs Dogs (Microsoft / Asirra): checksum as recorded by TensorFlow Datasets for this archive.
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "oxford_pets": (
        Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
                "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
                "md5:95a8c909bbe2e81eed6a22bccdf3f68f"),
    ),
    "cats_vs_dogs": (
        Archive("https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
                "kagglecatsanddogs_3367a.zip",
                "sha256:f9553e426bd725354ed3a27e3c6920caadb55c835d1ebd880d2e56d3f1fbb22b"),
    ),
}

_PET_CLASS_DIRS = {"cat": "cat", "cats": "cat", "dog": "dog", "dogs": "dog"}


def materialise(dataset: str, source: str | None, raw_dir: Path) -> Path:
    """Return the folder holding the dataset's files, downloading and/or extracting into raw_dir as needed."""
    if source and not is_url(source) and not is_archive(source):
        return Path(source)  # as given: `resolve` finds it, also from a DVC experiment's temporary copy
    if source:
        archives = [resolve(source)] if not is_url(source) else [
            download(source, raw_dir / "downloads" / Path(urllib.parse.urlparse(source).path).name)]
    elif dataset in ARCHIVES:
        archives = [download(a.url, raw_dir / "downloads" / a.filename, a.checksum) for a in ARCHIVES[dataset]]
    else:
        raise UserError(f"data.source: dataset {dataset!r} has no official archive; give a folder, archive or URL")
    # One folder per content: another source, or an archive replaced under the same name, never mixes with
    # (or reuses) an earlier extraction.
    content = hashlib.sha256("".join(file_digest(a) for a in archives).encode()).hexdigest()[:16]
    target = raw_dir / dataset / content
    for archive in archives:
        extract(archive, target)
    return target


def find_dir(base: Path, name: str, depth: int = 3) -> Path | None:
    """The shallowest folder called `name` at or below `base`."""
    for level in range(depth + 1):
        for candidate in sorted(base.glob("/".join(["*"] * level + [name]))):
            if candidate.is_dir():
                return candidate
    return None


def pet_label(stem: str, label: str) -> str:
    """Oxford-IIIT Pet: the breed is the name before the last '_'; capitalised breeds are cats."""
    breed = stem.rsplit("_", 1)[0]
    if label == "breed":
        return breed
    return "cat" if breed[:1].isupper() else "dog"


def candidates(dataset: str, root: Path, label: str = "breed") -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Every file that should be an image, as (path relative to root, label), and what is left out unread, as
    (path, label, reason): files outside any class, links that leave the folder, loop or lead back
    (folders.walk)."""
    found: list[tuple[str, str]] = []
    left_out: list[tuple[str, str, str]] = []
    if dataset == "oxford_pets":
        images = find_dir(root, "images")
        if images is None:
            raise UserError(f"data.source: no 'images' folder under {root} (Oxford-IIIT Pet layout expected)")
        files, refused = folders.walk(images)
        found = [(p.relative_to(root).as_posix(), pet_label(p.stem, label)) for p in files]
        return found, [(p.relative_to(root).as_posix(), pet_label(p.stem, label), why) for p, why in refused]
    files, refused = folders.walk(root)
    for path in files:
        rel = path.relative_to(root)
        if dataset == "cats_vs_dogs":
            cls = _PET_CLASS_DIRS.get(path.parent.name.lower(), "")
        else:
            cls = rel.parts[0] if len(rel.parts) > 1 else ""
        if cls:
            found.append((rel.as_posix(), cls))
        else:
            left_out.append((rel.as_posix(), "", "not inside a class folder"))
    for path, why in refused:
        rel = path.relative_to(root)
        left_out.append((rel.as_posix(), rel.parts[0] if len(rel.parts) > 1 and dataset == "folder" else "", why))
    return found, left_out


def official_split(root: Path) -> dict[str, str]:
    """Oxford-IIIT Pet's own lists: image stem → 'trainval' or 'test'."""
    annotations = find_dir(root, "annotations")
    if annotations is None:
        raise UserError(f"data.split: official needs annotations/trainval.txt and test.txt under {root}")
    out: dict[str, str] = {}
    for part in ("trainval", "test"):
        for line in (annotations / f"{part}.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                out[line.split()[0]] = part
    return out
