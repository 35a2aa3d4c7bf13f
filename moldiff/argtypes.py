"""``argparse`` value types shared by the CLI and the subcommand modules it wires in (a leaf module).

Each converter raises ``argparse.ArgumentTypeError`` with one line naming the value, so a bad value
gives the usual one-line ``moldiff: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """A converter accepting integers ``>= minimum``; ``what`` names them in the error.

    >>> int_at_least(1, "a positive integer")("3")
    3
    """

    def convert(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return convert


positive_int = int_at_least(1, "a positive integer")
nonneg_int = int_at_least(0, "a non-negative integer")
