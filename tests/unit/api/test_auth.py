"""The API's access rule and its `[api]` configuration (no server, no store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from servergroup.api.auth import Access, read_token
from servergroup.common.errors import ConfigError
from servergroup.config import ApiConfig, load_config

TOKEN = "s3cret-token"


def test_on_loopback_without_a_token_reads_are_open_and_actions_refused() -> None:
    access = Access()
    assert access.check(None, action=False) is None
    refused = access.check(f"Bearer {TOKEN}", action=True)
    assert refused is not None
    assert "token_file" in refused


def test_on_loopback_with_a_token_actions_need_it() -> None:
    access = Access(token=TOKEN)
    assert access.check(None, action=False) is None
    assert access.check(f"Bearer {TOKEN}", action=True) is None
    assert access.check(f"bearer  {TOKEN} ", action=True) is None  # the scheme is case-blind
    for header in (None, "", "Bearer", f"Basic {TOKEN}", "Bearer other", f"Bearer {TOKEN}x"):
        reason = access.check(header, action=True)
        assert reason is not None, header
        assert TOKEN not in reason


def test_off_loopback_reads_need_the_token_too() -> None:
    access = Access(token=TOKEN, reads_need_token=True)
    assert access.check(None, action=False) is not None
    assert access.check(f"Bearer {TOKEN}", action=False) is None
    assert TOKEN not in repr(access)


def test_read_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}  \nsecond line ignored\n")
    assert read_token(path) == TOKEN
    path.write_text("\n  \n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(path)
    with pytest.raises(ConfigError, match="cannot read the API token file"):
        read_token(tmp_path / "missing")


def test_api_config() -> None:
    assert ApiConfig() == ApiConfig(enabled=True, bind="127.0.0.1", port=8470, token_file="")
    assert ApiConfig(bind="::1").validate().loopback
    with pytest.raises(ConfigError, match="not loopback, so it needs a bearer token"):
        ApiConfig(bind="0.0.0.0").validate()
    assert not ApiConfig(bind="0.0.0.0", token_file="/etc/t").validate().loopback
    ApiConfig(bind="0.0.0.0", enabled=False).validate()  # off: nothing to protect
    for bad, match in [
        (ApiConfig(port=70000), "not a TCP port"),
        (ApiConfig(bind="localhost"), "not an IP address"),
        (ApiConfig(token_file="rel/token"), "absolute path"),
    ]:
        with pytest.raises(ConfigError, match=match):
            bad.validate()


def test_api_section_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "sg.toml"
    path.write_text('[api]\nbind = "0.0.0.0"\ntoken_file = "/etc/sg-token"\nport = 9000\n')
    config = load_config(path, env={})
    assert config.api == ApiConfig(bind="0.0.0.0", port=9000, token_file="/etc/sg-token")
    env = {"SERVERGROUP_API": "off", "SERVERGROUP_API_PORT": "0"}
    assert load_config(env=env).api == ApiConfig(enabled=False, port=0)
    with pytest.raises(ConfigError, match=r"unknown setting api\.tokenfile"):
        load_config(env={"SERVERGROUP_CONFIG": str(_write(tmp_path, "[api]\ntokenfile = 1\n"))})


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "other.toml"
    path.write_text(text)
    return path
