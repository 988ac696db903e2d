"""The two errors a user can cause and fix, shared by every layer.

- `UsageError`: a config, argument, path or file the user gave cannot work. Entry points print its lines, one per
  problem, and exit with code 2, without a traceback (launch/cli.py).
- `ParamError`: a constructor refusing its arguments, each problem with the parameter it is about. Whoever built
  the object from a config puts the config key in front (`model.params.n_ctx: must be >= 1`), so the user is told
  which key to change; raised from Python, it reads `n_ctx: must be >= 1`. It is a ValueError, as a bad argument is.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, Sequence


class UsageError(Exception):
    """A mistake the user can fix; printed as one line per problem, exit code 2, no traceback."""

    def __init__(self, lines: Sequence[str] | str):
        self.lines = [lines] if isinstance(lines, str) else [str(line) for line in lines]
        super().__init__("\n".join(self.lines))


class ParamError(ValueError):
    """Constructor arguments that cannot work: `problems` is [(parameter, message)], every one found at once."""

    def __init__(self, problems: Iterable[tuple[str, str]]):
        self.problems = [(str(name), str(message)) for name, message in problems]
        super().__init__("; ".join(f"{name}: {message}" for name, message in self.problems))

    def under(self, parameter: str) -> "ParamError":
        """The same problems as those of a mapping-valued `parameter` (`pretrained` -> `clip.pretrained`)."""
        return ParamError((f"{parameter}.{name}", message) for name, message in self.problems)


def raise_param_problems(problems: Iterable[tuple[str, str]]) -> None:
    """The one way a constructor reports what is wrong with its arguments: all problems, each with its parameter."""
    problems = list(problems)
    if problems:
        raise ParamError(problems)


def count_problems(params: Mapping[str, Any], names: Iterable[str]) -> list[tuple[str, str]]:
    """(name, "must be >= 1, got V") for each of `names` whose value in `params` is an integer below 1 (an absent
    value, None or another type is left to the signature's type check)."""
    return [(name, f"must be >= 1, got {params[name]}") for name in names
            if isinstance(params.get(name), int) and not isinstance(params[name], bool) and params[name] < 1]


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (libraries' messages run to many lines), else its type."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean X?)' for the option closest to a mistyped word, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
