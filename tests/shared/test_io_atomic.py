"""The one atomic-write helper: a target is replaced whole or not at all, and no temporary stays.

Every cache, checkpoint and prepared clip is written through `shared.io_atomic`, so a failure in
the middle of a write (an exception, Ctrl-C) must leave the old target exactly as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.io_atomic import (
    atomic_path,
    replace_whole,
    write_atomic,
    write_bytes_atomic,
    write_text_atomic,
)


class Boom(Exception):
    pass


def test_the_target_appears_complete_and_no_temporary_stays(tmp_path: Path):
    target = tmp_path / "entry.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".entry.bin.")
        tmp.write_bytes(b"first half ")
        assert not target.exists()  # nothing is seen until the block ends
        with open(tmp, "ab") as f:
            f.write(b"second half")
    assert target.read_bytes() == b"first half second half"
    assert os.listdir(tmp_path) == ["entry.bin"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_a_failed_write_leaves_the_old_target_untouched(tmp_path: Path, error: type):
    target = tmp_path / "latest"
    target.write_text("step_0000001\n")
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_text("step_00")  # cut short
        raise error
    assert target.read_text() == "step_0000001\n"
    assert os.listdir(tmp_path) == ["latest"]


def test_a_failed_first_write_leaves_no_target(tmp_path: Path):
    def write(f):
        f.write(b"partial")
        raise Boom

    with pytest.raises(Boom):
        write_atomic(tmp_path / "x.npy", write)
    assert os.listdir(tmp_path) == []


def test_a_failed_rename_removes_the_temporary(tmp_path: Path):
    def refuse(tmp: Path, target: Path) -> None:
        raise OSError("no rename today")

    with pytest.raises(OSError, match="no rename"), \
            atomic_path(tmp_path / "out.safetensors", replace=refuse) as tmp:
        tmp.write_bytes(b"data")
    assert os.listdir(tmp_path) == []


def test_the_temporary_is_named_as_the_caller_asks(tmp_path: Path):
    with atomic_path(tmp_path / "clip.gif", prefix=".clip.", suffix=".gif") as tmp:
        assert tmp.name.startswith(".clip.") and tmp.suffix == ".gif"
        tmp.write_bytes(b"GIF89a")
    assert (tmp_path / "clip.gif").read_bytes() == b"GIF89a"


def test_the_writers_replace_an_existing_target(tmp_path: Path):
    target = tmp_path / "caption.txt"
    target.write_text("old, and longer than the new text\n")
    write_bytes_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    write_text_atomic(target, "n\u00e9w\n")
    assert target.read_bytes() == "n\u00e9w\n".encode()
    assert os.listdir(tmp_path) == ["caption.txt"]


def test_replace_whole_puts_a_folder_over_a_folder_and_leaves_nothing_beside(tmp_path: Path):
    target, new = tmp_path / "step_0000010", tmp_path / ".step_0000010.tmp"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"old")
    (target / "stale.json").write_text("{}")
    new.mkdir()
    (new / "model.safetensors").write_bytes(b"new")
    replace_whole(new, target)
    assert sorted(os.listdir(target)) == ["model.safetensors"]
    assert (target / "model.safetensors").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["step_0000010"]
    again = tmp_path / ".again"
    again.write_bytes(b"a file where no target is")
    replace_whole(again, tmp_path / "weights.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["step_0000010", "weights.safetensors"]
