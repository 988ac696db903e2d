"""What every entry point (fit, submit, evaluate, make_shards) shares: argument errors and the exit code of a usage
error.

A mistake the user can fix ends the program with one line per problem on stderr and exit code 2, never a traceback:
`datamodules.errors.UsageError` (its lines as they are), `datamodules.shards.DatasetError` (`data error: REASON`)
and the errors an entry point names as one-line usage errors (their first line, after the program's name).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from datamodules.errors import UsageError, first_line
from datamodules.shards import DatasetError

USAGE_EXIT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are usage errors: one line naming the program and --help, exit code 2 from `main`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def data_error_reason(error: DatasetError) -> str:
    """Raised in a loader worker, the message carries the worker's traceback; its last line is the reason."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    return reason.split("DatasetError: ", 1)[-1]


def main(work: Callable[[], int], prog: str, one_line: tuple[type[BaseException], ...] = ()) -> int:
    """Run an entry point's `work()`; a usage error becomes its lines on stderr and exit code 2."""
    try:
        return work()
    except UsageError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
    except DatasetError as e:
        print(f"data error: {data_error_reason(e)}", file=sys.stderr)
    except one_line as e:
        print(f"{prog}: {first_line(e)}", file=sys.stderr)
    return USAGE_EXIT
