"""gpusim knobs: flag > GPUSIM_* variable > default, and --help lists them all."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from tools.gpusim.config import Config, env_name, parse_config


def test_defaults() -> None:
    c = parse_config([], env={})
    assert (c.host, c.port, c.models) == ("127.0.0.1", 8081, ("local-model",))
    assert (c.max_num_seqs, c.max_waiting, c.embedding_dim) == (64, 256, 384)
    assert c.fail_rate == 0.0 and c.fail_types == ("429", "503", "500", "reset")


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"GPUSIM_MAX_NUM_SEQS": "3", "GPUSIM_MODELS": "a, b,*", "GPUSIM_ACCESS_LOG": "true"}
    c = parse_config([], env=env)
    assert c.max_num_seqs == 3 and c.models == ("a", "b", "*") and c.access_log is True
    assert c.served_models == ("a", "b") and c.accepts_any_model
    c = parse_config(["--max-num-seqs", "5", "--no-access-log", "--itl-ms", "2.5"], env=env)
    assert c.max_num_seqs == 5 and c.access_log is False and c.itl_ms == 2.5


def test_bad_values_are_rejected() -> None:
    with pytest.raises(SystemExit):
        parse_config([], env={"GPUSIM_PORT": "eighty"})
    with pytest.raises(ValueError, match="max_num_seqs"):
        parse_config(["--max-num-seqs", "0"], env={})
    with pytest.raises(ValueError, match="unknown fail_types"):
        parse_config(["--fail-types", "429,teapot"], env={})


def test_help_lists_every_knob_with_its_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools.gpusim", "--help"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    flat = " ".join(out.split())
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in flat
        assert env_name(f.name) in flat
