"""The output folder of a command (``--out``), checked before any work: a bad one fails in a second, with
one line naming it, instead of with a traceback after a full run (``bench``, ``compile``, ``report``, ``tune``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class OutDirError(ValueError):
    """An output folder a command cannot write into; the message names the folder and the problem."""


def prepare_out_dir(path: str | os.PathLike, names: Iterable[str] = (), *, option: str = "--out") -> Path:
    """Create ``path`` if needed and check that it is a folder this process can write, in which none of the
    file ``names`` the command will write is an existing folder. Returns the path; OutDirError otherwise."""
    out = Path(path)
    where = f"{option} {str(out)!r}"
    if out.exists() and not out.is_dir():
        raise OutDirError(f"{where} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission, a read-only file system...
        raise OutDirError(f"{where} cannot be created: {exc.strerror or exc}") from None
    try:  # os.access can say yes where a write fails (read-only mounts seen through root, ACLs): try one
        with tempfile.TemporaryFile(dir=out, prefix=".ea-ops-write-check."):
            pass
    except OSError as exc:
        raise OutDirError(f"{where} is not writable: {exc.strerror or exc}") from None
    for name in names:
        if (out / name).is_dir():
            raise OutDirError(f"{where}: the output file {name!r} is an existing folder there")
    return out
