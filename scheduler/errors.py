"""labq's exceptions: one root, one class per thing that can go wrong.

The CLI maps ``UserError`` (and its subclasses) to exit code 2 with a one-line
message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def one_line(text: str) -> str:
    """``text`` with line breaks escaped, so one problem is always one line."""
    return "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in str(text))


class LabqError(Exception):
    """Root of every error labq raises on purpose."""


class UserError(LabqError):
    """Bad input from the user: a spec, an argument, an id. Exit code 2."""


class SpecError(UserError):
    """One or more problems in an experiment spec, each naming file and key."""

    SHOWN = 20  # a spec of a million bad keys must not print a million lines

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        # [(key path, what is expected)]; user text may hold line breaks: escape
        # them, and keep each to a readable length
        problems = [(one_line(key)[:300], one_line(msg)[:1000]) for key, msg in problems]
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem: ``file: key: what was expected`` (the first
        :attr:`SHOWN`, then how many more)."""
        lines = [f"{self.source}: {key}: {msg}" if key else f"{self.source}: {msg}"
                 for key, msg in self.problems[:self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"{self.source}: ... and {len(self.problems) - self.SHOWN} more problems")
        return lines


class ConfigError(UserError):
    """A problem in cluster.yaml's labq settings."""


class UnknownIdError(UserError):
    """No job or experiment with that id or name."""


class PermissionDenied(UserError):
    """The user may not do this to another user's jobs."""


class StoreError(LabqError):
    """The state database is unusable (corrupt, foreign, unwritable)."""


class IllegalTransition(LabqError):
    """A job or attempt was asked to move to a state it cannot reach from its current one."""


class SchedulerError(LabqError):
    """The scheduler daemon could not be started, stopped or reached."""


class SchedulerStartError(SchedulerError):
    """Jobs were queued, but no scheduler could be started to run them."""


def state_database_error(exc: Exception) -> str:
    """What to tell the user about an SQLite error met in the middle of a verb."""
    text = str(exc)
    home = os.environ.get("LABQ_HOME", "~/.labq")
    if "full" in text:
        return (f"the disk holding {home} is full ({text}); nothing was changed. Free some space and try again; "
                "the queue itself is intact")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (f"the state database in {home} is damaged ({text}); labq will not read or write it. "
                "Restore a backup, or move labq.db away to start a new queue (its jobs are then lost)")
    return f"could not use the state database in {home} ({text}); nothing was changed"
