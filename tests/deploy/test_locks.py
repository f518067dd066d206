"""The artifacts' hash-locked requirements (``make lock``: uv, resolved for manylinux2014
x86_64 / CPython 3.11) match the ranges they were compiled from, pin every package with its
hashes, install for the artifacts' platform, and a file whose hash differs is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.fixtures.procs import ROOT
from tools.package import deps
from tools.package.artifacts import SPECS

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile lock."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            name = canonicalize_name(m.group(1))
            found[name] = (m.group(2), [])
        elif "--hash=sha256:" in line and name:
            found[name][1].append(line.split("--hash=sha256:")[1].split()[0])
    return found


def ranges(path: Path) -> list[Requirement]:
    out = []
    for f in deps.requirement_files(path):
        for line in f.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                out.append(Requirement(line))
    return out


@pytest.mark.parametrize("artifact", sorted(SPECS))
def test_each_lock_pins_every_requirement_within_its_range_with_hashes(artifact: str) -> None:
    lock = ROOT / SPECS[artifact].requirements
    assert lock.suffix == ".lock", "the artifact installs from its lock"
    source = lock.with_suffix(".txt")
    text = lock.read_text()
    assert "#    make lock" in text and f"-r {source.name}" in text, "written by make lock"
    pinned = pins(lock)
    for req in ranges(source):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is in {source.name} but not in {lock.name}: make lock"
        assert req.specifier.contains(pinned[name][0], prereleases=True), (
            f"{lock.name} pins {req.name}=={pinned[name][0]} outside {req.specifier}: make lock"
        )
    for name, (version, hashes) in pinned.items():
        assert hashes and all(len(h) == 64 for h in hashes), f"{name}=={version} has no hash"


def test_the_lambda_lock_agrees_with_the_runtime_lock() -> None:
    """The Lambda zip adds to the runtime's packages; it never runs other versions of them."""
    runtime, lam = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-lambda.lock")
    for name, (version, _) in runtime.items():
        assert lam.get(name, (version,))[0] == version, name


def test_a_file_whose_hash_differs_from_the_lock_is_refused(tmp_path: Path) -> None:
    name, (version, _) = next(iter(pins(ROOT / "requirements.lock").items()))
    lock = tmp_path / "tampered.lock"
    lock.write_text(f"{name}=={version} \\\n    --hash=sha256:{'0' * 64}\n")
    with pytest.raises(deps.DependencyError, match=r"(?i)hash"):
        deps.installed_tree(lock, tmp_path / "cache")
