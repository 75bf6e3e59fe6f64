"""How every `python -m helpers...` command ends on a user error: one line on stderr, exit status 2.

What: `run_cli(main)` calls a command's `main`; on a user error it prints `error: <message>` (the
message's first line) to stderr and exits 2, the status argparse already uses for a bad flag, so a
script can tell "fix your input" (2) from "the program broke" (1, with its traceback).
Why: the library raises one-line errors that name the fix (helpers.checks); a traceback around
them buries that line under frames a user cannot act on.

User errors are ValueError and its subclasses (StoreError, CorpusError, ProfileError, SAEError,
InputError, ...), a missing file or folder (FileNotFoundError, NotADirectoryError, IsADirectoryError)
and the hub being unreachable (HubUnavailableError); a command adds its own (`extra`, e.g. collect's
RemoteUnavailableError, which lives in a later stage than this module). Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from helpers.hub import HubUnavailableError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    HubUnavailableError,
)
EXIT_USER_ERROR = 2  # argparse's status for a bad command line


def one_line(err: BaseException) -> str:
    """The first non-empty line of an error's message; an OSError without one says which path and why."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}; check the path"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def run_cli(
    main: Callable[[Sequence[str] | None], object],
    argv: Sequence[str] | None = None,
    extra: tuple[type[BaseException], ...] = (),
) -> NoReturn:
    """Run `main(argv)` as a command: exit 0 when it returns, 2 with `error: <one line>` on stderr on a
    user error (USER_ERRORS + `extra`); argparse's own exits (usage errors: 2, --help: 0) pass through."""
    try:
        main(argv)
    except (*USER_ERRORS, *extra) as err:
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(0)
