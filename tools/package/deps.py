"""Dependencies for linux x86_64 / CPython 3.11, pip-installed once and cached.

The tree is installed with ``pip install --target`` and pip's cross-platform flags, so a
macOS laptop or an arm runner builds the same Linux wheels the cloud runtime needs. It is
installed from a lock file (``requirements.lock``, ``requirements-lambda.lock``: every
package pinned with its hashes, written by ``make lock``) with ``--require-hashes`` and
``--no-deps``: two builds a week apart install the same files, and a file whose hash differs
from the lock's is refused. It is
cached under ``.local/package-deps/<key>`` where the key hashes the requirement files (``-r``
includes followed) and the pip flags: the second build does not touch the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PLATFORM = "manylinux2014_x86_64"
PYTHON_VERSION = "3.11"
PIP_FLAGS = (
    "--platform",
    PLATFORM,
    "--implementation",
    "cp",
    "--python-version",
    PYTHON_VERSION,
    "--only-binary=:all:",
    "--require-hashes",
    "--no-deps",
    "--no-compile",
    "--no-warn-script-location",
    "--disable-pip-version-check",
    "--quiet",
)
_INCLUDE = re.compile(r"^\s*(?:-r|--requirement)[\s=]+(\S+)")


class DependencyError(RuntimeError):
    """pip could not install the requirements for the target platform."""


def requirement_files(path: Path) -> list[Path]:
    """``path`` and every file it includes with ``-r``, in include order, each once."""
    seen: list[Path] = []

    def visit(p: Path) -> None:
        p = p.resolve()
        if p in seen:
            return
        if not p.is_file():
            raise DependencyError(f"requirements file not found: {p}")
        seen.append(p)
        for line in p.read_text().splitlines():
            m = _INCLUDE.match(line)
            if m:
                visit(p.parent / m.group(1))

    visit(path)
    return seen


def cache_key(requirements: Path) -> str:
    digest = hashlib.sha256()
    digest.update("\0".join(PIP_FLAGS).encode())
    for f in requirement_files(requirements):
        digest.update(b"\0" + f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def installed_tree(requirements: Path, cache_root: Path, *, refresh: bool = False) -> Path:
    """The site-packages tree for ``requirements``: from the cache, or installed into it."""
    target = cache_root / f"{requirements.stem}-{cache_key(requirements)}"
    if target.is_dir() and not refresh:
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
    try:
        argv = [sys.executable, "-m", "pip", "install", "--target", str(staging), *PIP_FLAGS]
        argv += ["-r", str(requirements)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_TARGET")}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise DependencyError(
                f"pip install for {PLATFORM} cp{PYTHON_VERSION} failed "
                f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
            )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
