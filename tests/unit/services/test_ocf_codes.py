"""OCF exit codes and their classes (`ocf_codes`), and meta-data parsing (`metadata`)."""

from __future__ import annotations

import pytest

from servergroup.services.metadata import MetadataError, parse_duration, parse_metadata
from servergroup.services.ocf_codes import OcfStatus, Severity, severity, status_of


@pytest.mark.parametrize(
    ("action", "code", "expected"),
    [
        ("start", 0, Severity.NONE),
        ("start", 1, Severity.SOFT),
        ("start", 2, Severity.HARD),
        ("start", 3, Severity.HARD),
        ("start", 4, Severity.HARD),
        ("start", 5, Severity.HARD),
        ("start", 6, Severity.FATAL),
        ("start", 7, Severity.SOFT),
        ("start", 8, Severity.SOFT),
        ("monitor", 9, Severity.SOFT),
        ("monitor", 7, Severity.NONE),
        ("monitor", 8, Severity.NONE),
        ("stop", 7, Severity.NONE),
        ("stop", 8, Severity.SOFT),
        ("promote", 7, Severity.SOFT),
        ("monitor", None, Severity.SOFT),
        ("monitor", 99, Severity.SOFT),
    ],
)
def test_pacemakers_classes(action: str, code: int | None, expected: Severity) -> None:
    assert severity(action, code) is expected


def test_status_of() -> None:
    assert status_of(8) is OcfStatus.RUNNING_MASTER
    assert status_of(None) is None
    assert status_of(-9) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20s", 20.0), ("20", 20.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("1.5 s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_unreadable_durations_and_hints_are_dropped() -> None:
    assert parse_duration("soon") is None
    info = parse_metadata(
        '<resource-agent name="x"><actions>'
        '<action name="start" timeout="soon"/><action name="monitor" depth="x"/><action/>'
        "</actions></resource-agent>"
    )
    assert info.timeout("start") is None
    assert [(m.name, m.depth) for m in info.monitors()] == [("monitor", None)]
    assert info.max_instances is None


@pytest.mark.parametrize(
    ("text", "message"),
    [("not xml <", "not well-formed XML"), ("<agent/>", "has <agent> where <resource-agent>")],
)
def test_not_meta_data(text: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        parse_metadata(text)
