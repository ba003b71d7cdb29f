"""`FileSink`: part files carry their writer's identity; dead writers' parts are removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from blake3 import blake3

from servergroup.common.process import ProcessIdentity, alive, process_start_time
from servergroup.multicast.transport import FileSink, remove_stale_parts


def _exited_process() -> tuple[int, int]:
    """PID and start time of a process that ran and has exited (and was reaped)."""
    child = subprocess.Popen(["sleep", "30"])
    start = process_start_time(child.pid)
    assert start is not None
    child.kill()
    child.wait()
    return child.pid, start


def test_a_part_file_names_its_writer_and_is_renamed_when_verified(tmp_path: Path) -> None:
    out = tmp_path / "image.img"
    sink = FileSink(out)
    (part,) = tmp_path.glob(".image.img.*.part")
    pid, start = part.name.split(".")[3].split("-")
    assert int(pid) == os.getpid()
    assert int(start) == process_start_time(os.getpid())
    sink.write(b"abc")
    assert sink.check(3, blake3(b"abc").digest()) == ""
    sink.commit()
    assert out.read_bytes() == b"abc"
    assert not list(tmp_path.glob(".*.part"))


def test_parts_of_exited_writers_go_and_the_rest_stay(tmp_path: Path) -> None:
    out = tmp_path / "image.img"
    dead_pid, dead_start = _exited_process()
    me, my_start = os.getpid(), process_start_time(os.getpid())
    dead = tmp_path / f".image.img.{dead_pid}-{dead_start}.k2x9_abc.part"
    reused = tmp_path / f".image.img.{me}-{my_start + 1 if my_start else 1}.q1w2e3r4.part"
    alive = tmp_path / f".image.img.{me}-{my_start}.zz99aa11.part"
    other_name = tmp_path / f".other.img.{dead_pid}-{dead_start}.k2x9_abc.part"
    old_style = tmp_path / ".image.img.abcd1234.part"
    for path in (dead, reused, alive, other_name, old_style):
        path.write_bytes(b"partial")

    sink = FileSink(out)
    try:
        assert not dead.exists()
        assert not reused.exists()  # the PID runs, but it is another process now
        assert alive.exists()
        assert other_name.exists()
        assert old_style.exists()
    finally:
        sink.discard()
    assert remove_stale_parts(out) == []


def test_names_with_glob_characters_are_matched_literally(tmp_path: Path) -> None:
    dead_pid, dead_start = _exited_process()
    out = tmp_path / "disk[1]*.img"
    lookalike = tmp_path / f".disk1x.img.{dead_pid}-{dead_start}.abcdefgh.part"
    own = tmp_path / f".disk[1]*.img.{dead_pid}-{dead_start}.abcdefgh.part"
    lookalike.write_bytes(b"")
    own.write_bytes(b"")
    assert remove_stale_parts(out) == [own]
    assert lookalike.exists()


def test_a_writer_is_told_apart_from_a_reused_pid() -> None:
    me = ProcessIdentity.me()
    assert alive(me)
    assert not alive(ProcessIdentity(pid=me.pid, start_time=me.start_time + 1))
    dead_pid, dead_start = _exited_process()
    if process_start_time(dead_pid) is None:  # unless the PID was reused already
        assert not alive(ProcessIdentity(pid=dead_pid, start_time=dead_start))
