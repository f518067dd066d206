"""A zip writer whose output depends only on the files' paths and contents.

Entries are sorted, every timestamp is the same (``SOURCE_DATE_EPOCH`` or 1980-01-01) and
permissions are fixed (0644, 0755 for the few files that must stay executable), so two
builds of the same tree give identical bytes whatever the checkout's mtimes or umask.
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
EXEC_MODE = 0o755


@dataclass(frozen=True)
class Entry:
    """One file of an artifact: where it lands in the zip and where it is read from."""

    arcname: str
    source: Path
    executable: bool = False
    data: bytes | None = None  # generated content (bytecode); ``source`` is then its origin

    def read(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()


def fixed_date_time() -> tuple[int, int, int, int, int, int]:
    """The timestamp of every entry: ``SOURCE_DATE_EPOCH`` when set, else 1980-01-01."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return ZIP_EPOCH
    try:
        epoch = int(raw)
    except ValueError as exc:
        raise ValueError(f"SOURCE_DATE_EPOCH must be an integer, got {raw!r}") from exc
    t = time.gmtime(max(epoch, 315532800))  # zip cannot store dates before 1980
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec - t.tm_sec % 2)


def write_zip(path: Path, entries: Iterable[Entry]) -> None:
    """Write ``entries`` to ``path`` (atomically: a half-written zip never has the name)."""
    ordered = sorted(entries, key=lambda e: e.arcname)
    names = [e.arcname for e in ordered]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two files would land at the same zip path: {duplicates[:5]}")
    date_time = fixed_date_time()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for entry in ordered:
            info = zipfile.ZipInfo(entry.arcname, date_time=date_time)
            info.create_system = 3  # Unix, so external_attr carries the mode
            mode = EXEC_MODE if entry.executable else FILE_MODE
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entry.read(), compresslevel=6)
    tmp.replace(path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_zip(path: Path, dest: Path) -> None:
    """Unpack ``path`` into ``dest`` restoring the unix modes (zipfile alone drops them)."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            target = zf.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode)
