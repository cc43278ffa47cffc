"""The progress line on stderr while a load test runs."""

from __future__ import annotations

import sys


class Progress:
    """One line on stderr, rewritten in place: what runs now and how far it is."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def show(self, label: str, done: float, total: float, extra: str = "") -> None:
        if self.quiet:
            return
        width = 30
        filled = int(width * min(1.0, done / total)) if total else width
        print(f"\r  {label:<22} [{'#' * filled}{'.' * (width - filled)}] {extra:<40}", end="",
              file=sys.stderr, flush=True)

    def done(self) -> None:
        if not self.quiet:
            print(file=sys.stderr)
