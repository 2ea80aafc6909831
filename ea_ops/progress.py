"""A progress bar for long work: tqdm when installed, else a plain counter on stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", disable: bool = False) -> Iterator[T]:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True)
        return
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    for i, item in enumerate(items, 1):
        if not disable:
            print(f"\r{desc} {i}/{n if n is not None else '?'}", end="", file=sys.stderr, flush=True)
        yield item
    if not disable:
        print(file=sys.stderr)
