"""Settings: validated once at first use, errors name the setting and field."""

from __future__ import annotations

import json

import pytest

from shared.errors import ConfigError
from shared.settings import get_settings, load_settings


def test_defaults_point_at_the_local_simulator(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert len(s.backends) == 1
    backend = s.backends[0]
    assert backend.kind == "openai"
    assert backend.base_url == "http://127.0.0.1:8081/v1"
    assert backend.serves("local-model")
    assert s.log_prompts is False


def test_backends_parse_each_kind(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(
        "INFER_BACKENDS",
        json.dumps(
            [
                {"name": "a", "kind": "openai", "base_url": "http://x/v1", "models": ["m"]},
                {"name": "b", "kind": "azure_openai", "endpoint": "https://e", "deployment": "d"},
                {"name": "c", "kind": "azureml", "scoring_url": "https://s/score"},
                {"name": "d", "kind": "sagemaker", "endpoint_name": "ep", "region": "us-east-1"},
            ]
        ),
    )
    kinds = [(b.name, b.kind, b.auth) for b in load_settings().backends]
    assert kinds == [
        ("a", "openai", "none"),
        ("b", "azure_openai", "managed_identity"),
        ("c", "azureml", "managed_identity"),
        ("d", "sagemaker", "aws_iam"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            '[{"name": "x", "kind": "sagemaker", "region": "r"}]',
            "INFER_BACKENDS[0] (kind sagemaker): field 'endpoint_name'",
        ),
        ('[{"name": "x", "kind": "vertex"}]', "INFER_BACKENDS[0]: unknown 'kind'"),
        ('[{"name": "x", "base_url": "http://x"}]', "INFER_BACKENDS[0]: missing 'kind'"),
        ('[{"name": "x", "kind": "openai", "base_url": "ftp://x"}]', "field 'base_url'"),
        (
            '[{"name": "x", "kind": "openai", "base_url": "http://x", "colour": 1}]',
            "field 'colour'",
        ),
        ("not json", "INFER_BACKENDS"),
    ],
)
def test_bad_backend_entry_names_the_field(
    clean_env: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    clean_env.setenv("INFER_BACKENDS", value)
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert expected in info.value.message


def test_bad_scalar_setting_is_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INFER_MAX_TOKENS_CAP", "lots")
    with pytest.raises(ConfigError, match="INFER_MAX_TOKENS_CAP"):
        get_settings()


def test_api_keys_accept_comma_list_or_json(clean_env: pytest.MonkeyPatch) -> None:
    from shared.callers import get_caller_settings, key_id
    from shared.lifecycle import reset_all

    clean_env.setenv("INFER_API_KEYS", "k1, k2")
    reset_all()
    keys = get_caller_settings().api_keys
    assert [k.id for k in keys] == [key_id("k1"), key_id("k2")]
    assert all(k.key is not None and k.key.get_secret_value() in ("k1", "k2") for k in keys)
    assert "k1" not in repr(keys)  # held as SecretStr
    clean_env.setenv("INFER_API_KEYS", '["k3"]')
    reset_all()
    assert [k.id for k in get_caller_settings().api_keys] == [key_id("k3")]


def test_key_auth_reads_the_named_setting_never_the_value(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(
        "INFER_BACKENDS",
        '[{"name": "v", "kind": "openai", "base_url": "http://x/v1", "auth": "key",'
        ' "api_key_setting": "VLLM_KEY"}]',
    )
    backend = load_settings().backends[0]
    with pytest.raises(ConfigError, match="VLLM_KEY"):
        backend.api_key()
    clean_env.setenv("VLLM_KEY", "s3cret")
    assert backend.api_key() == "s3cret"


def test_duplicate_backend_names_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    entry = {"name": "x", "kind": "openai", "base_url": "http://x/v1"}
    clean_env.setenv("INFER_BACKENDS", json.dumps([entry, entry]))
    with pytest.raises(ConfigError, match="repeated: x"):
        get_settings()


def test_duplicate_key_ids_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    from shared.callers import CallerSettings
    from shared.settings import build_settings

    keys = [{"id": "ci", "key_setting": "KEY_A"}, {"id": "ci", "key_setting": "KEY_B"}]
    clean_env.setenv("INFER_API_KEYS", json.dumps(keys))
    with pytest.raises(ConfigError, match="key ids must be unique; repeated: ci"):
        build_settings(CallerSettings)


@pytest.mark.parametrize("value", [" , ", "[ ]", "[]", ",", '[""]'])
def test_api_keys_set_but_empty_is_a_configuration_error_not_an_open_api(
    clean_env: pytest.MonkeyPatch, value: str
) -> None:
    """The host's key check is off once INFER_API_KEYS is set (functions/http_auth.py), so
    a value holding no key must fail closed, not leave both checks off."""
    from shared.callers import CallerSettings
    from shared.settings import build_settings

    clean_env.setenv("INFER_API_KEYS", value)
    with pytest.raises(ConfigError, match=r"INFER_API_KEYS.*holds no key"):
        build_settings(CallerSettings)


def test_an_unresolved_key_vault_reference_is_a_configuration_error(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from shared.callers import CallerSettings
    from shared.settings import build_settings

    clean_env.setenv("INFER_API_KEYS", "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/k)")
    with pytest.raises(ConfigError, match="unresolved Key Vault reference"):
        build_settings(CallerSettings)


def test_env_settings_read_prefixed_variables_in_any_case_and_decode_json_fields() -> None:
    """The loader that replaced pydantic-settings keeps its reading rules: prefix + name in
    any case, JSON for lists, dicts and models (not for ``NoDecode`` fields, nor for a field
    that may also be a plain string, when the text is not JSON), unknown names ignored."""
    from typing import Annotated, ClassVar

    from pydantic import BaseModel

    from shared.settings import EnvSettings, NoDecode

    class Inner(BaseModel):
        a: int

    class Demo(EnvSettings):
        env_prefix: ClassVar[str] = "DEMO_"
        count: int = 1
        flag: bool = False
        names: list[str] = []
        inner: Inner | None = None
        raw: Annotated[list[str], NoDecode] = []
        either: list[str] | str = "x"

    env = {
        "demo_count": "3",
        "DEMO_FLAG": "true",
        "DEMO_NAMES": '["a", "b"]',
        "DEMO_INNER": '{"a": 2}',
        "DEMO_EITHER": "plain",
        "DEMO_UNKNOWN": "ignored",
        "OTHER_COUNT": "9",
    }
    demo = Demo.from_env(env)
    assert (demo.count, demo.flag, demo.names, demo.either) == (3, True, ["a", "b"], "plain")
    assert demo.inner == Inner(a=2)
    with pytest.raises(Exception, match="list"):  # NoDecode: the raw text reaches validation
        Demo.from_env({"DEMO_RAW": '["a"]'})
    with pytest.raises(ConfigError, match="DEMO_NAMES: not valid JSON"):
        Demo.from_env({"DEMO_NAMES": "a,b"})
    assert Demo.from_env({}) == Demo()


def test_invalid_json_in_infer_backends_names_the_setting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INFER_BACKENDS", "[{not json")
    with pytest.raises(ConfigError, match="INFER_BACKENDS: not valid JSON"):
        load_settings()
