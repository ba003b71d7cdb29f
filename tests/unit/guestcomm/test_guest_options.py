"""The guest agent's bound per application, as both entry points take it.

`servergroup guest` (click) and `python -m servergroup.guestcomm` (argparse,
what a qemu server's /init starts) take `--app-queue-limit` and
`--app-queue-bytes`, or the same from the environment; a bad value is one
sentence and exit status 2, before anything is bound. That the bound is
applied by a running agent is `tests/integration/guestcomm/test_guest_flow.py`
(its agents run with `--app-queue-limit` below the default).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from servergroup.cli import guest as guest_cli
from servergroup.cli.main import cli
from servergroup.guestcomm import guest as agent
from servergroup.guestcomm.guest import (
    DEFAULT_APP_QUEUE_BYTES,
    DEFAULT_APP_QUEUE_LIMIT,
    MAX_APP_QUEUE_LIMIT,
    GuestConfig,
)

LIMIT_ENV = "SERVERGROUP_GUEST_APP_QUEUE_LIMIT"
BYTES_ENV = "SERVERGROUP_GUEST_APP_QUEUE_BYTES"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[GuestConfig]:
    """The configs `run_guest` is called with (the agent itself is not started)."""
    configs: list[GuestConfig] = []

    def run_guest(config: GuestConfig, companions: object = ()) -> None:
        configs.append(config)

    monkeypatch.setattr(agent, "run_guest", run_guest)
    monkeypatch.setattr(guest_cli, "run_guest", run_guest)
    monkeypatch.setattr(agent, "setup_logging", lambda *args, **kwargs: None)
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    monkeypatch.delenv(BYTES_ENV, raising=False)
    return configs


def test_the_help_of_both_entry_points_names_the_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    shown = CliRunner().invoke(cli, ["guest", "--help"])
    assert shown.exit_code == 0
    for words in ("--app-queue-limit", "--app-queue-bytes", LIMIT_ENV, BYTES_ENV):
        assert words in shown.output
    assert str(DEFAULT_APP_QUEUE_LIMIT) in shown.output
    with pytest.raises(SystemExit) as ended:
        agent.main(["--help"])
    assert ended.value.code == 0
    out = capsys.readouterr().out
    for words in ("--app-queue-limit", "--app-queue-bytes", LIMIT_ENV, BYTES_ENV):
        assert words in out


def test_the_module_entry_point_takes_the_bounds_from_options_and_env(
    started: list[GuestConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sock = str(tmp_path / "ch.sock")
    assert agent.main(["--channel-listen", sock]) == 0
    assert started[-1].app_queue_limit == DEFAULT_APP_QUEUE_LIMIT
    assert started[-1].app_queue_bytes == DEFAULT_APP_QUEUE_BYTES
    assert agent.main(["--channel-listen", sock, "--app-queue-limit", "100"]) == 0
    assert started[-1].app_queue_limit == 100
    monkeypatch.setenv(LIMIT_ENV, "200")
    monkeypatch.setenv(BYTES_ENV, str(1 << 16))
    assert agent.main(["--channel-listen", sock]) == 0
    assert (started[-1].app_queue_limit, started[-1].app_queue_bytes) == (200, 1 << 16)
    assert agent.main(["--channel-listen", sock, "--app-queue-limit", "300"]) == 0
    assert started[-1].app_queue_limit == 300  # the option over the environment


def test_the_cli_takes_the_bounds_from_options_and_env(
    started: list[GuestConfig], tmp_path: Path
) -> None:
    base = ["guest", "--channel-listen", str(tmp_path / "ch.sock"), "--no-scale-agent"]
    done = CliRunner().invoke(cli, [*base, "--app-queue-bytes", "65536"])
    assert done.exit_code == 0, done.output
    assert started[-1].app_queue_bytes == 65536
    assert started[-1].app_queue_limit == DEFAULT_APP_QUEUE_LIMIT
    done = CliRunner().invoke(cli, base, env={LIMIT_ENV: "64"})
    assert done.exit_code == 0, done.output
    assert started[-1].app_queue_limit == 64


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--app-queue-limit", "0"], {}, "at least 1 datagram"),
        (["--app-queue-limit", str(MAX_APP_QUEUE_LIMIT + 1)], {}, "at most"),
        (["--app-queue-bytes", "100"], {}, "largest datagram"),
        ([], {LIMIT_ENV: "-5"}, "at least 1 datagram"),
    ],
)
def test_a_bad_bound_is_one_sentence_and_status_2_before_anything_starts(
    started: list[GuestConfig],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    words: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert agent.main(["--channel-listen", str(tmp_path / "ch.sock"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("servergroup guest: ")
    assert words in err
    assert err.count("\n") == 1
    assert started == []
    done = CliRunner().invoke(
        cli, ["guest", "--channel-listen", str(tmp_path / "ch.sock"), *argv], env=env
    )
    assert done.exit_code == 2
    assert "Traceback" not in done.output
    assert started == []


def test_text_in_the_environment_is_refused_by_the_module_entry_point(
    started: list[GuestConfig],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(SystemExit) as ended:
        agent.main(["--channel-listen", str(tmp_path / "ch.sock")])
    assert ended.value.code == 2
    assert "'lots' is not a whole number" in capsys.readouterr().err
    assert started == []
