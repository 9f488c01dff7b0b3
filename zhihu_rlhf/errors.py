"""One kind of error for bad input, and the CLI wrapper that turns it into one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input or arguments: the message says what is wrong and where (file, row, field)."""


def first_line(err: BaseException) -> str:
    """The first line of a library's error message (or its type), to quote inside a one-line UserError."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def cli_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI entry point; a UserError becomes `error: ...` on stderr and exit code 2, no traceback."""
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
