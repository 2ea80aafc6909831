"""A progress bar for long work: tqdm when installed, else a plain counter on stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Bar:
    """``total`` steps under ``desc``: ``update(n)`` advances, ``note(text)`` shows what runs now."""

    def __init__(self, total: int | None, desc: str = "", disable: bool = False, unit: str = "it") -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self._bar = None if tqdm is None else tqdm(total=total, desc=desc, disable=disable, file=sys.stderr,
                                                   dynamic_ncols=True, unit=unit)
        self.total, self.desc, self.disable, self.n, self._note = total, desc, disable, 0, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._print()

    def note(self, text: str) -> None:
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        else:
            self._print()

    def _print(self) -> None:
        if not self.disable:
            total = self.total if self.total is not None else "?"
            print(f"\r{self.desc} {self.n}/{total} {self._note}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.disable:
            print(file=sys.stderr)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", disable: bool = False) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Bar(total, desc, disable) as bar:
        for item in items:
            yield item
            bar.update()
