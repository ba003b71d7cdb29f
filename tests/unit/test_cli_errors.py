"""What a command prints when it fails: one sentence, its period once."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from servergroup.cli.common import report_errors
from servergroup.cli.main import cli
from servergroup.common.errors import UsageError, sentence


@pytest.mark.parametrize(
    ("message", "printed"),
    [
        ("server 'vm-1' does not exist", "server 'vm-1' does not exist."),
        ("the disk is full writing /tmp/x.", "the disk is full writing /tmp/x."),
        ("is it running? ", "is it running?"),
        ("start one with `servergroup up`", "start one with `servergroup up`."),
    ],
)
def test_a_message_becomes_one_sentence(message: str, printed: str) -> None:
    assert sentence(message) == printed


def test_an_error_without_its_period_is_printed_with_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken() -> None:
        raise UsageError("server 'vm-1' does not exist")

    with pytest.raises(SystemExit) as ended:
        report_errors(broken)
    assert ended.value.code == 2
    assert capsys.readouterr().err == "servergroup: server 'vm-1' does not exist.\n"


def test_a_command_error_ends_with_one_period() -> None:
    result = CliRunner().invoke(cli, ["--endpoints", "http://[", "group", "list"])
    assert result.exit_code == 2
    assert result.output.startswith("servergroup: ")
    assert result.output.endswith(".\n")
    assert not result.output.endswith("..\n")
