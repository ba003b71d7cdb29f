"""Configuration: parsing, precedence (defaults < file < environment < options), validation."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest

from servergroup.common.errors import ConfigError
from servergroup.config import (
    DEFAULT_PREFIX,
    Config,
    CoordinationConfig,
    Endpoint,
    LocalEtcdConfig,
    default_state_dir,
    load_config,
    parse_endpoints,
)
from servergroup.guestcomm import relay

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("http://10.0.0.1:2379", "10.0.0.1", 2379),
        ("10.0.0.1:4001", "10.0.0.1", 4001),
        ("etcd.example", "etcd.example", 2379),
        ("  http://h:1/  ", "h", 1),
        ("http://[::1]:2379", "::1", 2379),
    ],
)
def test_endpoint_parse(text: str, host: str, port: int) -> None:
    assert Endpoint.parse(text) == Endpoint(host=host, port=port)


def test_endpoint_str_round_trips() -> None:
    for text in ("http://10.0.0.1:2379", "http://[::1]:2379", "http://h:1", "https://h:2"):
        assert str(Endpoint.parse(text)) == text


def test_https_endpoints_are_secure() -> None:
    assert Endpoint.parse("https://10.0.0.1:2379") == Endpoint("10.0.0.1", 2379, secure=True)
    assert not Endpoint.parse("10.0.0.1").secure


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("198.18.0.1", False),
        ("etcd.example", False),
    ],
)
def test_endpoint_loopback(host: str, loopback: bool) -> None:
    assert Endpoint(host, 2379).loopback is loopback


def test_plain_http_off_loopback_needs_insecure() -> None:
    remote = (Endpoint.parse("http://10.0.0.1:2379"),)
    with pytest.raises(ConfigError, match=r"http://10.0.0.1:2379 is plain http .* insecure = true"):
        CoordinationConfig(endpoints=remote).validate()
    assert CoordinationConfig(endpoints=remote, insecure=True).validate().endpoints == remote
    local = (Endpoint.parse("http://127.0.0.1:2379"), Endpoint.parse("localhost:1"))
    assert CoordinationConfig(endpoints=local).validate().endpoints == local
    secure = (Endpoint.parse("https://10.0.0.1:2379"),)
    assert CoordinationConfig(endpoints=secure).validate().tls


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"endpoints": ["https://a:1", "http://127.0.0.1:2"]}, "mix http:// and https://"),
        ({"endpoints": ["https://a:1"], "ca_file": "ca.crt"}, "ca_file 'ca.crt' must be an abs"),
        ({"endpoints": ["https://a:1"], "cert_file": "/c"}, "cert_file and key_file go together"),
        ({"endpoints": ["127.0.0.1:1"], "ca_file": "/ca"}, "ca_file is set but the endpoints"),
        ({"endpoints": ["h:1"], "insecure": "maybe"}, "insecure = 'maybe' is not a valid"),
    ],
)
def test_tls_settings_are_checked(settings: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(overrides={"coordination": settings}, env=NO_ENV)


def test_tls_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[coordination]\nendpoints = ["https://10.0.0.1:2379"]\nca_file = "/etc/sg/ca.crt"\n'
    )
    env = {"SERVERGROUP_ETCD_CERT": "/etc/sg/c.crt", "SERVERGROUP_ETCD_KEY": "/etc/sg/c.key"}
    coordination = load_config(path, env=env).coordination
    assert (coordination.ca_file, coordination.cert_file, coordination.key_file) == (
        "/etc/sg/ca.crt",
        "/etc/sg/c.crt",
        "/etc/sg/c.key",
    )
    env = {"SERVERGROUP_ETCD_ENDPOINTS": "http://10.0.0.9:1", "SERVERGROUP_ETCD_INSECURE": "1"}
    assert load_config(env=env).coordination.insecure


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("unix://h:2379", "only http:// and https://"),
        ("http://h:notaport", "invalid port"),
        ("http://h:99999", "invalid port"),
        ("http://h:0", "invalid port"),
        ("http://h:2379/v3", "not of the form"),
        ("http://:2379", "not of the form"),
    ],
)
def test_endpoint_parse_refuses(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        Endpoint.parse(text)


def test_parse_endpoints_from_string_and_list() -> None:
    both = (Endpoint(host="a", port=1), Endpoint(host="b", port=2))
    assert parse_endpoints("a:1, b:2,") == both
    assert parse_endpoints(["a:1", "b:2"]) == both
    assert parse_endpoints("") == ()


def test_defaults_are_valid_and_use_the_managed_etcd(tmp_path: Path) -> None:
    config = load_config(env={"XDG_STATE_HOME": str(tmp_path)})
    assert config.managed_etcd
    assert config.state_dir == tmp_path / "servergroup"
    assert config.coordination.prefix == DEFAULT_PREFIX
    assert config.coordination.lease_ttl == 1
    assert config.etcd == LocalEtcdConfig()
    assert (config.etcd.client_port, config.etcd.peer_port) == (12379, 12380)
    assert CoordinationConfig().validate() == config.coordination


def test_default_state_dir() -> None:
    assert default_state_dir({"XDG_STATE_HOME": "/x/state"}) == Path("/x/state/servergroup")
    expected = (
        Path("/var/lib/servergroup")
        if os.geteuid() == 0
        else Path.home() / ".local" / "state" / "servergroup"
    )
    assert default_state_dir({}) == expected
    # The XDG base directory spec says a relative value is to be ignored.
    assert default_state_dir({"XDG_STATE_HOME": "relative/dir"}) == expected


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_file_then_environment_then_options(tmp_path: Path) -> None:
    path = write(
        tmp_path / "sg.toml",
        'state_dir = "/from/file"\n'
        "[coordination]\n"
        'endpoints = ["http://f1:2379", "f2:2379"]\n'
        "insecure = true\n"
        'prefix = "/file/"\n'
        "lease_ttl = 3\n"
        "[etcd]\n"
        "client_port = 5000\n"
        "peer_port = 5001\n",
    )
    from_file = load_config(path, env=NO_ENV)
    assert from_file.state_dir == Path("/from/file")
    assert from_file.coordination.endpoints == (
        Endpoint(host="f1", port=2379),
        Endpoint(host="f2", port=2379),
    )
    assert from_file.coordination.prefix == "/file/"
    assert from_file.coordination.lease_ttl == 3
    assert (from_file.etcd.client_port, from_file.etcd.peer_port) == (5000, 5001)
    assert not from_file.managed_etcd

    env = {
        "SERVERGROUP_STATE_DIR": "/from/env",
        "SERVERGROUP_PREFIX": "/env/",
        "SERVERGROUP_ETCD_PORT": "6000",
        "SERVERGROUP_ETCD_PEER_PORT": "6001",
        "SERVERGROUP_ETCD_ENDPOINTS": "e1:1,e2:2",
        "SERVERGROUP_LEASE_TTL": "2",
    }
    from_env = load_config(path, env=env)
    assert from_env.state_dir == Path("/from/env")
    assert from_env.coordination.prefix == "/env/"
    assert from_env.coordination.endpoints == parse_endpoints("e1:1,e2:2")
    assert from_env.coordination.lease_ttl == 2
    assert (from_env.etcd.client_port, from_env.etcd.peer_port) == (6000, 6001)

    from_options = load_config(
        path,
        env=env,
        overrides={
            "": {"state_dir": "/from/options"},
            "coordination": {"prefix": "/opt/", "endpoints": None},
            "etcd": {"client_port": 7000},
        },
    )
    assert from_options.state_dir == Path("/from/options")
    assert from_options.coordination.prefix == "/opt/"
    # None means "not given": the environment's value stays.
    assert from_options.coordination.endpoints == parse_endpoints("e1:1,e2:2")
    assert from_options.etcd.client_port == 7000


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "sg.toml", "[etcd]\nclient_port = 4242\n")
    config = load_config(env={"SERVERGROUP_CONFIG": str(path)})
    assert config.etcd.client_port == 4242


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("not toml [", "not valid TOML"),
        ("colour = 1\n", "unknown setting 'colour'"),
        ("coordination = 1\n", r"\[coordination\] .* must be a table"),
        ("[coordination]\nspeed = 1\n", "unknown setting coordination.speed"),
        ("[etcd]\nclient_port = 'high'\n", "etcd.client_port"),
        ("[etcd]\nclient_port = 70000\n", "not a TCP port"),
        ("[etcd]\nclient_port = 5\npeer_port = 5\n", "must differ"),
        ("[etcd]\nstart_timeout = 0\n", "start_timeout"),
        ("[coordination]\nprefix = 'no-slash'\n", "must start and end with '/'"),
        ("[coordination]\nlease_ttl = 0\n", "smallest lease is 1 s"),
        ("[coordination]\nrenew_interval = 0.45\n", "unsafe timings"),
        ("[coordination]\nrenew_interval = -1\n", "positive"),
        ("[coordination]\nfence_margin = 0.01\n", "fence_margin"),
        ("[coordination]\nendpoints = ['ftp://h']\n", "only http:// and https://"),
        ("[coordination]\nendpoints = ['http://h']\n", "http://h:2379 is plain http"),
        # Values of the wrong kind are refused, not silently converted.
        ("[coordination]\nlease_ttl = 1.5\n", "coordination.lease_ttl"),
        ("[coordination]\nlease_ttl = true\n", "coordination.lease_ttl"),
        ("[coordination]\nrenew_interval = nan\n", "coordination.renew_interval"),
        ("[coordination]\noperation_timeout = inf\n", "coordination.operation_timeout"),
        ("state_dir = 5\n", "state_dir"),
        ("state_dir = ''\n", "state_dir is empty"),
    ],
)
def test_bad_config_file_is_one_sentence(tmp_path: Path, text: str, complaint: str) -> None:
    path = write(tmp_path / "sg.toml", text)
    with pytest.raises(ConfigError, match=complaint) as info:
        load_config(path, env=NO_ENV)
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith(".")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env=NO_ENV)


def test_bad_environment_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"etcd\.client_port"):
        load_config(env={"SERVERGROUP_ETCD_PORT": "abc"})


def test_unknown_override_section() -> None:
    with pytest.raises(ConfigError, match="unknown config section"):
        load_config(env=NO_ENV, overrides={"colour": {"x": 1}})


def test_safe_timings_boundary() -> None:
    # 2 x 0.2 + 0.25 = 0.65 <= 1 - 0.2: the defaults are safe, with room.
    CoordinationConfig().validate()
    # Raising the TTL makes a slower renewal safe again.
    slow = CoordinationConfig(lease_ttl=2, renew_interval=0.6)
    assert slow.validate() is slow
    with pytest.raises(ConfigError, match="unsafe timings"):
        CoordinationConfig(lease_ttl=1, renew_interval=0.6).validate()


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.state_dir = Path("/elsewhere")  # type: ignore[misc]
    assert math.isfinite(config.etcd.start_timeout)


def test_evacuation_grace_from_file_env_and_bounds(tmp_path: Path) -> None:
    assert load_config(env={}).servers.evacuation_grace == 5.0
    path = tmp_path / "c.toml"
    path.write_text("[servers]\nevacuation_grace = 0\n")
    assert load_config(path, env={}).servers.evacuation_grace == 0.0
    env = {"SERVERGROUP_EVACUATION_GRACE": "2.5"}
    assert load_config(path, env=env).servers.evacuation_grace == 2.5
    with pytest.raises(ConfigError, match="evacuation_grace must be between 0 and 86400"):
        load_config(env={"SERVERGROUP_EVACUATION_GRACE": "-1"})


def test_channel_queue_limit_from_file_env_and_bounds(tmp_path: Path) -> None:
    assert load_config(env={}).servers.channel_queue_limit == 4 << 20 == relay.DEFAULT_QUEUE_LIMIT
    path = tmp_path / "c.toml"
    path.write_text("[servers]\nchannel_queue_limit = 65536\n")
    assert load_config(path, env={}).servers.channel_queue_limit == 65536
    env = {"SERVERGROUP_CHANNEL_QUEUE_LIMIT": str(16 << 20)}
    assert load_config(path, env=env).servers.channel_queue_limit == 16 << 20
    for bad in ("65535", str((1 << 30) + 1)):
        with pytest.raises(ConfigError, match="channel_queue_limit must be between 65536 and"):
            load_config(env={"SERVERGROUP_CHANNEL_QUEUE_LIMIT": bad})
    with pytest.raises(ConfigError, match="channel_queue_limit"):
        load_config(env={"SERVERGROUP_CHANNEL_QUEUE_LIMIT": "4M"})


def test_the_services_section(tmp_path: Path) -> None:
    default = load_config(env=NO_ENV).services
    assert (default.enabled, default.ocf_root, default.node_ip) == (True, "/usr/lib/ocf", "")
    path = write(
        tmp_path / "sg.toml",
        '[services]\nenabled = false\nocf_root = "/opt/ocf"\nnode_ip = "10.0.0.5"\n',
    )
    services = load_config(path, env=NO_ENV).services
    assert (services.enabled, services.ocf_root, services.node_ip) == (
        False,
        "/opt/ocf",
        "10.0.0.5",
    )
    env = {"SERVERGROUP_OCF_ROOT": "/srv/ocf", "SERVERGROUP_SERVICES": "off"}
    from_env = load_config(env=env).services
    assert (from_env.enabled, from_env.ocf_root) == (False, "/srv/ocf")
    with pytest.raises(ConfigError, match="services ocf_root 'ocf' must be an absolute path"):
        load_config(env={"SERVERGROUP_OCF_ROOT": "ocf"})


def test_the_services_have_a_lease_of_their_own(tmp_path: Path) -> None:
    # The host keeps its 1 s lease renewed every 0.2 s; the node role's session has
    # timings of its own: 1 s renewed every 0.1 s (room for stops, fast failover).
    config = load_config(env=NO_ENV)
    assert (config.coordination.lease_ttl, config.services.lease_ttl) == (1, 1)
    services = config.services_coordination
    assert (
        services.lease_ttl,
        services.renew_interval,
        services.renew_timeout,
        services.fence_margin,
    ) == (1, 0.1, 0.15, 0.1)
    assert services.endpoints == config.coordination.endpoints
    assert config.coordination.renew_interval == 0.2
    assert (
        load_config(env={"SERVERGROUP_SERVICES_LEASE_TTL": "3"}).services_coordination.lease_ttl
        == 3
    )
    with pytest.raises(ConfigError, match="services lease_ttl is 0s"):
        load_config(env={"SERVERGROUP_SERVICES_LEASE_TTL": "0"})
    # The services' renewals must leave room in their lease, as the host's must in its.
    path = write(tmp_path / "sg.toml", "[services]\nlease_ttl = 1\nrenew_interval = 0.4\n")
    with pytest.raises(ConfigError, match=r"\[services\]: unsafe timings"):
        load_config(path, env=NO_ENV)
    path = write(tmp_path / "sg.toml", "[services]\nlease_ttl = 2\nrenew_interval = 0.4\n")
    assert load_config(path, env=NO_ENV).services_coordination.renew_interval == 0.4
