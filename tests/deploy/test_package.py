"""The two deployable zips: layout, reproducibility, and that they work from the zip alone."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.fixtures.package import DEPS_CACHE
from tests.fixtures.procs import ROOT
from tools.package import deps
from tools.package.artifacts import AZURE, LAMBDA, SPECS, BuildResult, build_artifact
from tools.package.verify import (
    VerifyError,
    _check_chat_json,
    _check_sse,
    handler_modules,
    import_paths,
    lambda_stream_server,
    probe_env,
    run_probe,
    stream_chat,
)
from tools.package.zipper import Entry, write_zip

SITE = ".python_packages/lib/site-packages"
FUNCTIONS = sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "aws.py").is_file())


# Builds each zip once per session (pip install on a cold cache): allow for it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def names(result: BuildResult) -> list[str]:
    with zipfile.ZipFile(result.path) as zf:
        return zf.namelist()


def test_azure_zip_is_an_app_root_with_python_packages(
    package_artifacts: dict[str, BuildResult],
) -> None:
    entries = set(names(package_artifacts["azure"]))
    for required in ("function_app.py", "host.json", "requirements.txt", "shared/__init__.py"):
        assert required in entries
    for fn in FUNCTIONS:
        assert f"functions/{fn}/azure.py" in entries
    for pkg in ("azure/functions/__init__.py", "fastapi/__init__.py", "pydantic/__init__.py"):
        assert f"{SITE}/{pkg}" in entries
    assert not any(e.startswith(("mangum/", "fastapi/")) for e in entries), "deps at zip root"


def test_lambda_zip_has_dependencies_at_the_root(
    package_artifacts: dict[str, BuildResult],
) -> None:
    entries = set(names(package_artifacts["lambda"]))
    for fn in FUNCTIONS:
        assert f"functions/{fn}/aws.py" in entries
    for pkg in ("mangum/__init__.py", "uvicorn/__init__.py", "fastapi/__init__.py"):
        assert pkg in entries
    assert not any(
        e.startswith((".python_packages/", "function_app.py", "host.json")) for e in entries
    )


@pytest.mark.parametrize("artifact", sorted(SPECS))
def test_compiled_dependencies_are_linux_x86_64_cpython_311(
    package_artifacts: dict[str, BuildResult], artifact: str
) -> None:
    binaries = [e for e in names(package_artifacts[artifact]) if e.endswith(".so")]
    core = [e for e in binaries if "/pydantic_core/" in f"/{e}"]
    assert core and all("cpython-311-x86_64-linux-gnu" in e for e in core), core
    assert not [e for e in binaries if "darwin" in e or "win_amd64" in e or "aarch64" in e]
    wheels = [e for e in names(package_artifacts[artifact]) if e.endswith(".dist-info/WHEEL")]
    with zipfile.ZipFile(package_artifacts[artifact].path) as zf:
        tags = [zf.read(w).decode() for w in wheels]
    platform_tags = [t for t in tags if "Root-Is-Purelib: false" in t]
    assert platform_tags and all("manylinux" in t and "x86_64" in t for t in platform_tags)


@pytest.mark.parametrize("artifact", sorted(SPECS))
def test_artifacts_leave_out_tests_tools_caches_and_local_settings(
    package_artifacts: dict[str, BuildResult], artifact: str
) -> None:
    entries = names(package_artifacts[artifact])
    banned_tops = ("tests/", "tools/", "bench/", "docs/", ".github/", "dist/", ".local/", "bin/")
    assert not [e for e in entries if e.startswith(banned_tops)]
    assert "local.settings.json" not in entries
    assert not [e for e in entries if e.endswith("/")], "no directory entries"


@pytest.mark.parametrize("artifact", sorted(SPECS))
def test_bytecode_is_unchecked_hash_and_matches_a_shipped_module(
    package_artifacts: dict[str, BuildResult], artifact: str
) -> None:
    """Cold starts skip compiling: every module ships a pyc that needs no source stat."""
    entries = set(names(package_artifacts[artifact]))
    pycs = [e for e in entries if e.endswith(".pyc")]
    assert not [e for e in entries if e.endswith(".pyo")]
    assert "functions/chat/__pycache__/aws.cpython-311.pyc" in pycs
    orphans = []
    for pyc in pycs:
        path = PurePosixPath(pyc)
        source = path.parent.parent / (path.name.split(".")[0] + ".py")
        if path.parent.name != "__pycache__" or source.as_posix() not in entries:
            orphans.append(pyc)
    assert not orphans
    with zipfile.ZipFile(package_artifacts[artifact].path) as zf:
        header = zf.read("functions/chat/__pycache__/aws.cpython-311.pyc")[:8]
    assert int.from_bytes(header[4:8], "little") == 0b01  # hash-based, unchecked


@pytest.mark.parametrize("artifact", sorted(SPECS))
def test_entries_are_sorted_with_fixed_time_and_modes(
    package_artifacts: dict[str, BuildResult], artifact: str
) -> None:
    with zipfile.ZipFile(package_artifacts[artifact].path) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in infos}
    script = "functions/chat/lambda_stream.sh"
    expected_exec = {script} if artifact == "lambda" else set()
    assert {n for n, m in modes.items() if m == 0o755} == expected_exec
    assert {m for n, m in modes.items() if n not in expected_exec} == {0o644}


def _snapshot(dest: Path) -> Path:
    """Copy the packaged inputs, so edits in the shared checkout cannot race the builds."""
    for d in ("functions", "shared"):
        shutil.copytree(ROOT / d, dest / d, copy_function=shutil.copy)
    for f in ("function_app.py", "host.json", "requirements.txt", "requirements-lambda.txt",
              "requirements.lock", "requirements-lambda.lock"):  # fmt: skip
        shutil.copy(ROOT / f, dest / f)
    return dest


def test_two_builds_of_the_same_sources_give_identical_bytes(tmp_path: Path) -> None:
    first = _snapshot(tmp_path / "first")
    # The second copy gets new mtimes and other permissions: neither may reach the zip.
    second = tmp_path / "second"
    shutil.copytree(first, second, copy_function=shutil.copy)
    for path in second.rglob("*"):
        if path.is_file() and path.suffix == ".py":
            path.chmod(0o600)
            os.utime(path, (2_000_000_000, 2_000_000_000))
    builds = {}
    for label, root in (("first", first), ("second", second)):
        builds[label] = {
            name: build_artifact(
                spec, root=root, out_dir=tmp_path / f"dist-{label}", cache_root=DEPS_CACHE
            )
            for name, spec in SPECS.items()
        }
    for name in SPECS:
        assert builds["first"][name].sha256 == builds["second"][name].sha256, name
        assert builds["first"][name].path.read_bytes() == builds["second"][name].path.read_bytes()


def test_zip_bytes_ignore_mtimes_and_permissions_but_honour_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "b.py").write_text("B = 1\n")
    (src / "a.sh").write_text("#!/bin/sh\n")
    entries = [Entry("pkg/b.py", src / "b.py"), Entry("run.sh", src / "a.sh", executable=True)]
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    write_zip(tmp_path / "one.zip", entries)
    os.utime(src / "b.py", (1_700_000_000, 1_700_000_000))
    (src / "b.py").chmod(0o600)
    write_zip(tmp_path / "two.zip", list(reversed(entries)))
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_zip(tmp_path / "epoch.zip", entries)
    with zipfile.ZipFile(tmp_path / "epoch.zip") as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    (src / "b.py").write_text("B = 2\n")
    write_zip(tmp_path / "changed.zip", entries)
    assert (tmp_path / "changed.zip").read_bytes() != (tmp_path / "epoch.zip").read_bytes()


def test_two_files_at_one_zip_path_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("")
    with pytest.raises(ValueError, match="same zip path"):
        write_zip(tmp_path / "dup.zip", [Entry("x.py", f), Entry("x.py", f)])


def test_dependency_tree_is_reused_from_cache_without_pip(
    package_artifacts: dict[str, BuildResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip ran although the tree is cached")

    monkeypatch.setattr(deps.subprocess, "run", no_pip)
    for spec in (AZURE, LAMBDA):
        tree = deps.installed_tree(ROOT / spec.requirements, DEPS_CACHE)
        assert (
            tree.name
            == f"{Path(spec.requirements).stem}-{deps.cache_key(ROOT / spec.requirements)}"
        )
        assert (tree / "fastapi" / "__init__.py").is_file()


def test_cache_key_follows_included_requirement_files(tmp_path: Path) -> None:
    base = tmp_path / "requirements.txt"
    extra = tmp_path / "requirements-lambda.txt"
    base.write_text("httpx>=0.27\n")
    extra.write_text("-r requirements.txt\nuvicorn>=0.30\n")
    assert deps.requirement_files(extra) == [extra.resolve(), base.resolve()]
    before = deps.cache_key(extra)
    assert deps.cache_key(extra) == before
    base.write_text("httpx>=0.28\n")
    assert deps.cache_key(extra) != before


def test_missing_requirements_include_is_a_clear_error(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("-r missing.txt\n")
    with pytest.raises(deps.DependencyError, match=r"missing\.txt"):
        deps.cache_key(req)


# ---------------------------------------------------------------- from the unpacked zip alone


def _modules() -> list[tuple[str, str]]:
    pairs = [("azure", "function_app")]
    pairs += [("azure", f"functions.{fn}.azure") for fn in FUNCTIONS]
    pairs += [("lambda", f"functions.{fn}.aws") for fn in FUNCTIONS]
    return [*pairs, ("lambda", "functions.chat.app")]


@pytest.mark.parametrize(("artifact", "module"), _modules())
def test_handler_imports_from_the_unpacked_artifact_alone(
    package_unpacked: dict[str, Path], package_backend_url: str, artifact: str, module: str
) -> None:
    spec, unpacked = SPECS[artifact], package_unpacked[artifact]
    assert module in handler_modules(spec, unpacked)
    result = run_probe(
        import_paths(spec, unpacked), ["import", module], probe_env(package_backend_url)
    )
    assert result["module"] == module
    assert result["foreign_modules"] == []
    assert 0 < result["seconds"] < 20


def test_probe_interpreter_sees_nothing_outside_the_artifact(
    package_unpacked: dict[str, Path], package_backend_url: str
) -> None:
    # Without the artifact's site-packages, azure.functions must not be found, although the
    # test's own virtualenv has it: the probe is really isolated.
    with pytest.raises(VerifyError, match="No module named 'azure'"):
        run_probe(
            [package_unpacked["azure"]], ["import", "function_app"], probe_env(package_backend_url)
        )


def test_azure_chat_function_answers_from_the_unpacked_zip(
    package_unpacked: dict[str, Path], package_backend_url: str
) -> None:
    paths = import_paths(AZURE, package_unpacked["azure"])
    answer = run_probe(paths, ["azure-chat"], probe_env(package_backend_url))
    _check_chat_json("azure chat", answer)
    assert answer["headers"]["content-type"].startswith("application/json")
    body = json.loads(answer["body"])
    assert body["model"] == "local-model"
    assert body["usage"]["completion_tokens"] > 0


def test_azure_chat_function_streams_from_the_unpacked_zip(
    package_unpacked: dict[str, Path], package_backend_url: str
) -> None:
    paths = import_paths(AZURE, package_unpacked["azure"])
    answer = run_probe(paths, ["azure-chat", "--stream"], probe_env(package_backend_url))
    _check_sse("azure chat stream", answer["status"], answer["body"])
    assert answer["headers"]["content-type"].startswith("text/event-stream")


def test_lambda_chat_handler_answers_an_http_api_v2_event(
    package_unpacked: dict[str, Path], package_backend_url: str
) -> None:
    answer = run_probe([package_unpacked["lambda"]], ["aws-chat"], probe_env(package_backend_url))
    _check_chat_json("aws chat", answer)
    assert answer["isBase64Encoded"] is False


def test_lambda_stream_script_serves_sse_from_the_unpacked_zip(
    package_unpacked: dict[str, Path], package_backend_url: str
) -> None:
    script = package_unpacked["lambda"] / "functions" / "chat" / "lambda_stream.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    with lambda_stream_server(package_unpacked["lambda"], package_backend_url) as url:
        status, text = stream_chat(url)
    _check_sse("lambda_stream.sh", status, text)
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


def test_lambda_stream_script_is_valid_bash() -> None:
    script = ROOT / "functions" / "chat" / "lambda_stream.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_failing_answer_is_reported() -> None:
    with pytest.raises(VerifyError, match="HTTP 502"):
        _check_chat_json("x", {"status": 502, "body": '{"error": {}}'})
    with pytest.raises(VerifyError, match="not an SSE chat stream"):
        _check_sse("x", 200, '{"object": "chat.completion"}')
