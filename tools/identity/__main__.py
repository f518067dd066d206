"""``python -m tools.identity``: serve the local managed-identity endpoint (see ``--help``).

Point the functions at it with ``IDENTITY_ENDPOINT=http://127.0.0.1:8082/msi/token`` and
``IDENTITY_HEADER=<--identity-header>``; azure-identity's ``ManagedIdentityCredential`` then
obtains tokens here. gpusim verifies them with the same ``--signing-key``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from . import tokens
from .server import IdentityConfig, build_app


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    d = IdentityConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tools.identity",
        description="Local managed-identity endpoint (App Service protocol: IDENTITY_ENDPOINT "
        "+ IDENTITY_HEADER) issuing HS256 tokens that gpusim verifies.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=d.host, help="interface to bind")
    parser.add_argument(
        "--port", type=int, default=int(env.get("IDENTITY_PORT", d.port)), help="TCP port"
    )
    parser.add_argument(
        "--identity-header",
        default=env.get("IDENTITY_HEADER", d.identity_header),
        help="secret expected in X-IDENTITY-HEADER [env IDENTITY_HEADER]",
    )
    parser.add_argument(
        "--signing-key",
        default=env.get("IDENTITY_SIGNING_KEY", tokens.DEFAULT_SIGNING_KEY),
        help="HS256 key that signs tokens (a dev key by default) [env IDENTITY_SIGNING_KEY]",
    )
    parser.add_argument(
        "--lifetime-s",
        type=float,
        default=float(env.get("IDENTITY_LIFETIME_S", d.lifetime_s)),
        help="token lifetime in seconds [env IDENTITY_LIFETIME_S]",
    )
    parser.add_argument("--log-level", default=d.log_level, help="uvicorn log level")
    return parser


def token_command(argv: Sequence[str]) -> None:
    """``python -m tools.identity token --aud api://infer --client-id my-app``: print a token."""
    from .oidc import fetch_token

    parser = argparse.ArgumentParser(
        prog="python -m tools.identity token",
        description="Print an RS256 app token from a running identity server's OIDC issuer "
        "(for INFER_JWT callers).",
    )
    parser.add_argument("--aud", required=True, help="audience (app id URI), e.g. api://infer")
    parser.add_argument("--client-id", default="local-app", help="the calling app's client id")
    parser.add_argument("--tenant", default="local", help="tenant path segment of the issuer")
    port = os.environ.get("IDENTITY_PORT", "8082")
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}", help="identity server")
    args = parser.parse_args(argv)
    print(fetch_token(args.url, args.tenant, args.client_id, args.aud))


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["token"]:
        token_command(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.lifetime_s <= 0:
        sys.exit("identity: --lifetime-s must be positive")
    config = IdentityConfig(
        host=args.host,
        port=args.port,
        identity_header=args.identity_header,
        signing_key=args.signing_key,
        lifetime_s=args.lifetime_s,
        log_level=args.log_level,
    )
    print(
        f"identity: IDENTITY_ENDPOINT=http://{config.host}:{config.port}/msi/token", file=sys.stderr
    )
    uvicorn.run(
        build_app(config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
