"""``python -m tools.cli`` (console script ``infer``): submit, watch and fetch batches.

    infer batch submit FILE [--name NAME] [--watch]
    infer batch status NAME
    infer batch fetch NAME [-o DIR]
    infer cost estimate --requests N [--prompt-tokens P --output-tokens O ...]

Storage: Azure by default (``--connection-string``, else ``AzureWebJobsStorage`` from the
environment, else from ./local.settings.json: Azurite under ``make run``), or
identity-based with ``--account-url https://acct.blob.core.windows.net``
(DefaultAzureCredential); S3 with ``--s3-bucket`` (and ``--endpoint-url`` for moto).
Uploads stream the file; nothing here needs more than the SDKs already required.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class Remote(Protocol):
    def upload(self, key: str, path: Path) -> None: ...

    def read(self, key: str) -> bytes | None: ...

    def download(self, key: str, dest: Path) -> bool: ...


class AzureRemote:
    def __init__(self, connection_string: str | None, account_url: str | None) -> None:
        from azure.storage.blob import BlobServiceClient

        if account_url:
            from azure.identity import DefaultAzureCredential

            self.svc = BlobServiceClient(account_url, credential=DefaultAzureCredential())
        elif connection_string:
            self.svc = BlobServiceClient.from_connection_string(connection_string)
        else:
            raise SystemExit(
                "no storage: pass --connection-string, --account-url or --s3-bucket "
                "(or set AzureWebJobsStorage)"
            )

    def _blob(self, key: str) -> Any:
        container, _, name = key.partition("/")
        return self.svc.get_blob_client(container, name)

    def upload(self, key: str, path: Path) -> None:
        from azure.core.exceptions import ResourceExistsError

        container = self.svc.get_container_client(key.partition("/")[0])
        with contextlib.suppress(ResourceExistsError):
            container.create_container()
        with path.open("rb") as fh:
            self._blob(key).upload_blob(fh, overwrite=True, max_concurrency=4)

    def read(self, key: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data: bytes = self._blob(key).download_blob().readall()
        except ResourceNotFoundError:
            return None
        return data

    def download(self, key: str, dest: Path) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stream = self._blob(key).download_blob()
            with dest.open("wb") as fh:
                for chunk in stream.chunks():
                    fh.write(chunk)
        except ResourceNotFoundError:
            return False
        return True


class S3Remote:
    def __init__(self, bucket: str, endpoint_url: str | None) -> None:
        import boto3

        self.bucket = bucket
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url)

    def upload(self, key: str, path: Path) -> None:
        self.s3.upload_file(str(path), self.bucket, key)

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            data: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError:
            return None
        return data

    def download(self, key: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.download_file(self.bucket, key, str(dest))
        except ClientError:
            return False
        return True


def local_settings_storage(path: Path = Path("local.settings.json")) -> str | None:
    """``AzureWebJobsStorage`` from local.settings.json, as the local host would use it."""
    try:
        values = json.loads(path.read_text()).get("Values", {})
    except (OSError, ValueError):
        return None
    value = values.get("AzureWebJobsStorage") if isinstance(values, dict) else None
    return value if isinstance(value, str) and value else None


def remote(args: argparse.Namespace) -> Remote:
    if args.s3_bucket:
        return S3Remote(args.s3_bucket, args.endpoint_url)
    conn = (
        args.connection_string
        or os.environ.get("AzureWebJobsStorage")  # noqa: SIM112
        or local_settings_storage()
    )
    if conn == "UseDevelopmentStorage=true":
        conn = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        )
    return AzureRemote(conn, args.account_url)


def progress_line(st: dict[str, Any], width: int = 30) -> str:
    prog = st.get("progress") or {}
    total = max(int(prog.get("bytes_total") or 0), 1)
    frac = 1.0 if st.get("status") == "completed" else min(1.0, prog.get("bytes_done", 0) / total)
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    c = st.get("request_counts", {})
    return (
        f"[{bar}] {100 * frac:5.1f}%  {st.get('status')}  "
        f"ok {c.get('completed', 0)}  failed {c.get('failed', 0)}  "
        f"tokens {st.get('usage', {}).get('total_tokens', 0)}"
    )


def read_status(r: Remote, name: str) -> dict[str, Any] | None:
    raw = r.read(f"batch-out/{name}.status.json")
    return None if raw is None else dict(json.loads(raw))


def watch(r: Remote, name: str, interval: float, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    tty = sys.stdout.isatty()
    while time.monotonic() < deadline:
        st = read_status(r, name)
        line = progress_line(st) if st else "waiting for the batch to start..."
        print(("\r" if tty else "") + line, end="" if tty else "\n", flush=True)
        if st and st.get("status") in ("completed", "failed"):
            if tty:
                print()
            return 0 if st["status"] == "completed" else 1
        time.sleep(interval)
    print(f"\nstill running after {timeout:g}s", file=sys.stderr)
    return 2


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    name = args.name or path.name.removesuffix(".jsonl")
    r = remote(args)
    r.upload(f"batch-in/{name}.jsonl", path)
    print(f"uploaded batch-in/{name}.jsonl ({path.stat().st_size} bytes)")
    return watch(r, name, args.interval, args.timeout) if args.watch else 0


def cmd_status(args: argparse.Namespace) -> int:
    st = read_status(remote(args), args.name)
    if st is None:
        print(f"no status for {args.name!r} yet", file=sys.stderr)
        return 1
    print(json.dumps(st, indent=2) if args.json else progress_line(st))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    r = remote(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    missing = 0
    for leaf in ("output.jsonl", "errors.jsonl", "status.json"):
        dest = out / f"{args.name}.{leaf}"
        if r.download(f"batch-out/{args.name}.{leaf}", dest):
            print(f"wrote {dest}")
        else:
            missing += 1
            print(f"batch-out/{args.name}.{leaf}: not there (yet)", file=sys.stderr)
    return 1 if missing else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infer", description="Serverless inference command line.")
    sub = p.add_subparsers(dest="group", required=True)
    batch = sub.add_parser("batch", help="blob-triggered batch inference (OpenAI Batch files)")
    bsub = batch.add_subparsers(dest="command", required=True)

    def storage(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--connection-string", help="Azure Storage (default: AzureWebJobsStorage)")
        sp.add_argument("--account-url", help="https://ACCOUNT.blob.core.windows.net (Entra ID)")
        sp.add_argument("--s3-bucket", help="use S3 (the bucket holding batch-in/ and batch-out/)")
        sp.add_argument("--endpoint-url", help="S3 endpoint (moto, MinIO)")

    s = bsub.add_parser("submit", help="upload FILE to batch-in/")
    s.add_argument("file")
    s.add_argument("--name", help="batch name (default: FILE without .jsonl)")
    s.add_argument("--watch", action="store_true", help="show progress until completed")
    s.add_argument("--interval", type=float, default=2.0)
    s.add_argument("--timeout", type=float, default=24 * 3600.0)
    storage(s)
    s.set_defaults(fn=cmd_submit)
    st = bsub.add_parser("status", help="show a batch's status")
    st.add_argument("name")
    st.add_argument("--json", action="store_true", help="print the whole status document")
    storage(st)
    st.set_defaults(fn=cmd_status)
    f = bsub.add_parser("fetch", help="download output, errors and status")
    f.add_argument("name")
    f.add_argument("-o", "--output", default=".", help="directory (default .)")
    storage(f)
    f.set_defaults(fn=cmd_fetch)
    from tools.cli.cost import add_parser as cost_parser

    cost_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
