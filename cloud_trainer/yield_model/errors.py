"""The yield commands' user errors, and the wrapper that prints them as one line instead of a traceback.

A user error is input the person at the terminal can fix (a path, the cube, the spec, a flag that does
not fit the cube); its message names what was wrong and the fix. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from shared.errors import ContractError

from .cube_types import CubeError
from .spec import SpecError

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """Training options that do not fit the cube or the run folder; the message says which flag to change."""


class ExportError(RuntimeError):
    """An export check failed; the message names the check and the numbers."""


# OSError: an output folder that cannot be written or a key file that is not there, named by the OS.
USER_ERRORS: tuple[type[BaseException], ...] = (CubeError, SpecError, UsageError, ExportError, ContractError, OSError)


def one_line(prog: str, exc: BaseException) -> str:
    return f"{prog}: " + " ".join(str(exc).split())


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """``body()``'s exit code, or 1 with the user error on one stderr line."""
    try:
        return body()
    except USER_ERRORS as exc:
        logger.debug("%s failed", prog, exc_info=True)
        print(one_line(prog, exc), file=sys.stderr)
        return 1
