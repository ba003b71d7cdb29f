"""The `--memory`-style size option: the shared size parser, in whole units, bounded."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from servergroup.cli.common import Size
from servergroup.common.units import MIB


@click.command()
@click.option("--memory", type=Size(MIB, 64, 1024))
def show(memory: int) -> None:
    click.echo(memory)


@pytest.mark.parametrize(("text", "mib"), [("256", 256), ("256MiB", 256), ("1g", 1024)])
def test_sizes_come_out_in_the_unit(text: str, mib: int) -> None:
    result = CliRunner().invoke(show, ["--memory", text])
    assert result.exit_code == 0, result.output
    assert result.output == f"{mib}\n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("lots", "Invalid value for '--memory': 'lots' is not a size"),
        ("32", "Invalid value for '--memory': '32' is out of range: give 64MiB to 1GiB."),
        ("1.5MiB", "Invalid value for '--memory': '1.5MiB' is not a whole number of MiB."),
    ],
)
def test_bad_sizes_are_one_sentence(text: str, says: str) -> None:
    result = CliRunner().invoke(show, ["--memory", text])
    assert result.exit_code == 2
    assert says in result.output
    assert result.output.count("--memory") == 1  # named once, by click
