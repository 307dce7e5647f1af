"""Resumable, verified downloads and archive extraction that never writes outside its target."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from transferlab.core.errors import UserError
from transferlab.core.progress import Progress

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_CHUNK = 1 << 20


class DownloadError(UserError):
    """A download failed or did not match its checksum."""


class UnsafeArchiveError(UserError):
    """An archive member would be written outside the extraction folder."""


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def is_archive(path: Path | str) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _verify(path: Path, checksum: str | None) -> None:
    """`checksum` is 'sha256:<hex>' or 'md5:<hex>'; None skips verification."""
    if checksum is None:
        return
    algorithm, expected = checksum.split(":", 1)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DownloadError(f"{path.name}: {algorithm} is {actual}, expected {expected}")


def download(url: str, dest: Path | str, checksum: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, resuming a `.part` file left by an interrupted run, then verify it."""
    dest = Path(dest)
    if dest.exists():
        _verify(dest, checksum)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and getattr(response, "status", None) == 206
            mode = "ab" if resumed else "wb"
            start = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length else None
            with open(part, mode) as out, Progress(total=total, initial=start, unit="B", unit_scale=True,
                                                   desc=f"download {dest.name}") as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        raise DownloadError(
            f"could not download {url}: {exc}. Without a network, download it elsewhere and point "
            f"data.source at the local copy (see README)."
        ) from exc
    try:
        _verify(part, checksum)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _check_member(name: str, target: Path) -> None:
    resolved = (target / name).resolve()
    if os.path.isabs(name) or not resolved.is_relative_to(target.resolve()):
        raise UnsafeArchiveError(f"refusing archive member {name!r}: it would be written outside {target}")


def extract(archive: Path | str, target: Path | str) -> Path:
    """Extract an archive into `target`; refuse the whole archive if any member would escape it.

    Members are staged in a hidden folder and moved into place only once all are out, then a marker
    records the archive as done, so an interrupted extraction is redone, never half-used.
    """
    archive, target = Path(archive), Path(target)
    marker = target / f".extracted-{archive.name}"
    if marker.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for info in members:
                    _check_member(info.filename, staging)
                for info in Progress(members, desc=f"extract {archive.name}", unit="file"):
                    zf.extract(info, staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _check_member(member.name, staging)
                    try:
                        tarfile.data_filter(member, str(staging))
                    except tarfile.FilterError as exc:
                        raise UnsafeArchiveError(f"refusing archive member {member.name!r}: {exc}") from exc
                for member in Progress(members, desc=f"extract {archive.name}", unit="file"):
                    tf.extract(member, staging, filter="data")
        else:
            raise UserError(f"{archive} is neither a zip nor a tar archive")
        for entry in staging.iterdir():
            dest = target / entry.name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(entry, dest)
        marker.touch()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
