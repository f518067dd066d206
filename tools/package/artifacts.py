"""What goes into each artifact, and the build that puts it there."""

from __future__ import annotations

import os
import py_compile
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.package.deps import installed_tree
from tools.package.zipper import Entry, sha256_file, write_zip

SKIP_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests"})
SKIP_SUFFIXES = (".pyc", ".pyo")
SKIP_FILES = frozenset({".DS_Store", "local.settings.json"})
#: The Python of both targets (Lambda runtime python3.11, Azure Functions Python 3.11).
TARGET_PYTHON = (3, 11)
# Console scripts pip writes next to --target carry this machine's interpreter path.
SKIP_DEP_TOP = frozenset({"bin"})


@dataclass(frozen=True)
class ArtifactSpec:
    name: str
    filename: str
    root_files: tuple[str, ...]
    source_dirs: tuple[str, ...]
    #: The hash-locked requirements its dependencies are installed from (``make lock``).
    requirements: str
    deps_prefix: str
    executables: frozenset[str]


AZURE = ArtifactSpec(
    name="azure",
    filename="azure-functionapp.zip",
    root_files=("function_app.py", "host.json", "requirements.txt"),
    source_dirs=("functions", "shared"),
    requirements="requirements.lock",
    deps_prefix=".python_packages/lib/site-packages",
    executables=frozenset(),
)

LAMBDA = ArtifactSpec(
    name="lambda",
    filename="lambda.zip",
    root_files=(),
    source_dirs=("functions", "shared"),
    requirements="requirements-lambda.lock",
    deps_prefix="",
    executables=frozenset({"functions/chat/lambda_stream.sh"}),
)

SPECS = {s.name: s for s in (AZURE, LAMBDA)}


@dataclass(frozen=True)
class BuildResult:
    spec: ArtifactSpec
    path: Path
    sha256: str
    size: int
    files: int
    unpacked_size: int

    def summary(self) -> str:
        mib = 1024 * 1024
        return (
            f"{self.path}: {self.size / mib:.1f} MiB zipped, {self.unpacked_size / mib:.1f} MiB "
            f"unpacked, {self.files} files, sha256 {self.sha256}"
        )


def _walk(base: Path, *, skip_dirs: frozenset[str]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            if name in SKIP_FILES or name.endswith(SKIP_SUFFIXES):
                continue
            path = Path(dirpath) / name
            if path.is_file():
                yield path


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def source_entries(spec: ArtifactSpec, root: Path) -> list[Entry]:
    """The project's own files: root files, then functions/ and shared/ without tests/caches."""
    entries: list[Entry] = []
    for name in spec.root_files:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{spec.filename} needs {name} at the project root ({root})")
        entries.append(Entry(name, path))
    for d in spec.source_dirs:
        base = root / d
        if not base.is_dir():
            raise FileNotFoundError(f"{spec.filename} needs the folder {d}/ ({base})")
        for path in _walk(base, skip_dirs=SKIP_DIRS):
            arc = path.relative_to(root).as_posix()
            entries.append(Entry(arc, path, executable=arc in spec.executables))
    missing = spec.executables - {e.arcname for e in entries}
    if missing:
        raise FileNotFoundError(f"{spec.filename} needs {sorted(missing)}")
    return entries


def dependency_entries(spec: ArtifactSpec, tree: Path) -> list[Entry]:
    entries: list[Entry] = []
    for path in _walk(tree, skip_dirs=frozenset({"__pycache__"})):
        rel = path.relative_to(tree)
        if rel.parts[0] in SKIP_DEP_TOP:
            continue
        entries.append(Entry(_join(spec.deps_prefix, rel.as_posix()), path))
    return entries


def bytecode_entries(entries: list[Entry]) -> list[Entry]:
    """Compiled ``__pycache__`` entries for every module, so a cold start skips compiling.

    Lambda's /var/task is read-only, so without them every cold start compiles every module
    it imports (about 0.35 s for the chat handler). Unchecked-hash pycs carry no timestamp:
    the bytes depend only on the source, keeping the zip reproducible. Only built when this
    interpreter is the targets' version (the magic number must match).
    """
    if sys.version_info[:2] != TARGET_PYTHON:
        return []
    tag = sys.implementation.cache_tag
    out: list[Entry] = []
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "x.pyc"
        for entry in entries:
            if not entry.arcname.endswith(".py"):
                continue
            folder, _, name = entry.arcname.rpartition("/")
            try:
                py_compile.compile(
                    str(entry.source),
                    cfile=str(target),
                    dfile=entry.arcname,
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
            except py_compile.PyCompileError:
                continue  # e.g. a py2-only file some wheels still ship: Python skips it too
            arc = _join(_join(folder, "__pycache__"), f"{name[:-3]}.{tag}.pyc")
            out.append(Entry(arc, entry.source, data=target.read_bytes()))
    return out


def build_artifact(
    spec: ArtifactSpec,
    *,
    root: Path,
    out_dir: Path,
    cache_root: Path,
    refresh_deps: bool = False,
) -> BuildResult:
    """Build ``out_dir/spec.filename`` from the project at ``root``."""
    tree = installed_tree(root / spec.requirements, cache_root, refresh=refresh_deps)
    own = source_entries(spec, root)
    deps = dependency_entries(spec, tree)
    own_tops = {e.arcname.split("/")[0] for e in own}
    clash = sorted({e.arcname.split("/")[0] for e in deps} & own_tops)
    if clash:
        raise ValueError(f"a dependency ships a top-level name the project uses: {clash}")
    path = out_dir / spec.filename
    write_zip(path, [*own, *deps, *bytecode_entries([*own, *deps])])
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    return BuildResult(
        spec=spec,
        path=path,
        sha256=sha256_file(path),
        size=path.stat().st_size,
        files=len(infos),
        unpacked_size=sum(i.file_size for i in infos),
    )
