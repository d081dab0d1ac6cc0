"""Files that appear whole or not at all: write beside the target, then rename over it.

Caches, checkpoints, prepared clips and pointer files are read by other processes (a resumed run,
a second worker, a results page) and survive crashes, so none of them may ever be seen half
written. Every writer in the project does it one way, here: a temporary file in the target's own
folder (so the rename stays on one filesystem and `os.replace` is atomic), filled, then renamed
over the target; on any failure the temporary is removed and the target keeps its old contents.
A whole folder (a checkpoint, a converted run) is filled under a temporary name the same way and
put in place by `replace_whole`.

The bottom of `shared/`'s layers, beside `config.py` (it imports nothing of the project), so the
data, model and evaluation layers and both backends can all use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_path(target: str | Path, *, prefix: str | None = None, suffix: str = "",
                replace: Callable[[Path, Path], object] = os.replace) -> Iterator[Path]:
    """A fresh empty temporary beside `target` to fill; renamed over `target` when the block ends.

    If the block (or the rename) raises, the temporary is removed and `target` is untouched.
    `prefix` (default `.<target name>.`, hidden from folder scans that skip dot files) and
    `suffix` name the temporary: a writer that picks its format by suffix (video) needs the
    target's. `replace(tmp, target)` does the rename; a caller that must first move a folder out
    of the way (`convert --force` over a directory) passes its own. The temporary is created with
    mode 0600, as `tempfile.mkstemp` makes it; a caller that wants other modes sets them.
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}." if prefix is None else prefix,
                                suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        replace(tmp, target)
    except BaseException:  # Ctrl-C included: never leave the temporary behind
        tmp.unlink(missing_ok=True)
        raise


def replace_whole(tmp: str | Path, target: str | Path) -> None:
    """Rename `tmp` over `target`, which may be a folder (a checkpoint, a converted run) or a
    file: `os.replace` alone cannot put a folder over a non-empty one, so an existing `target` is
    first renamed into a fresh hidden folder beside it and deleted after. Either way `target`
    holds the old whole or the new whole, never a mix."""
    tmp, target = Path(tmp), Path(target)
    if target.exists() or target.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, trash / target.name)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], *,
                 prefix: str | None = None, suffix: str = "") -> None:
    """Call `write(f)` on a binary file that replaces `path` only once `write` has returned."""
    with atomic_path(path, prefix=prefix, suffix=suffix) as tmp, open(tmp, "wb") as f:
        write(f)


def write_bytes_atomic(path: str | Path, data: bytes, *, prefix: str | None = None,
                       suffix: str = "") -> None:
    """Replace `path` with `data`, atomically (see `atomic_path`)."""
    write_atomic(path, lambda f: f.write(data), prefix=prefix, suffix=suffix)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8), atomically: a `latest` pointer, a config.json."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
