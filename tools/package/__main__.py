"""``python -m tools.package``: build dist/azure-functionapp.zip and dist/lambda.zip, then
check that each handler imports and answers from the unpacked artifact alone."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from tools.package.artifacts import SPECS, BuildResult, build_artifact
from tools.package.deps import DependencyError
from tools.package.verify import VerifyError, gpusim, verify_artifact

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.package", description=__doc__)
    p.add_argument("--target", choices=[*SPECS, "all"], default="all")
    p.add_argument("--root", type=Path, default=ROOT, help="project root to package")
    p.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder")
    p.add_argument(
        "--cache",
        type=Path,
        default=ROOT / ".local" / "package-deps",
        help="where the pip-installed dependency trees are cached",
    )
    p.add_argument("--refresh-deps", action="store_true", help="reinstall dependencies")
    p.add_argument("--no-verify", action="store_true", help="build only")
    p.add_argument(
        "--backend-url",
        help="OpenAI-compatible base URL for the answer check "
        "(default: start tools.gpusim on a free port)",
    )
    return p.parse_args(argv)


@contextlib.contextmanager
def backend(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with gpusim() as started:
            yield started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(SPECS) if args.target == "all" else [args.target]
    results: list[BuildResult] = []
    try:
        for name in names:
            result = build_artifact(
                SPECS[name],
                root=args.root.resolve(),
                out_dir=args.out,
                cache_root=args.cache,
                refresh_deps=args.refresh_deps,
            )
            print(result.summary(), flush=True)
            results.append(result)
        if args.no_verify:
            return 0
        with backend(args.backend_url) as url:
            for result in results:
                report = verify_artifact(result.spec, result.path, url)
                print(f"{result.path.name}: imports and answers from the unpacked zip alone")
                print("\n".join(report.lines()), flush=True)
    except (DependencyError, VerifyError, FileNotFoundError, ValueError) as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
