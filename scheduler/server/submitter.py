"""One submit for `labq server`, in a short-lived process of its own.

A submit checks the spec by importing the job's module (as a local `labq
submit` does, to find the callable and run its ``check_params``).  That is
the user's code: it must not run inside the server, which holds every
caller's token and serves them all, nor stay cached there (``sys.modules``)
for the next upload of a module of the same name.  The server writes the
request as JSON on this process's stdin; the answer is one JSON line on the
stdout it was given (what the user's code prints goes to stderr).

    python -m scheduler.server.submitter < request.json
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from scheduler.errors import LabqError, PermissionDenied, SpecError, UnknownIdError, UserError

# Error classes an answer may name, and how to raise them again in the server.
ERRORS = {cls.__name__: cls for cls in (UserError, UnknownIdError, PermissionDenied, LabqError)}


def answer_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SpecError):
        return {"error": "SpecError", "source": exc.source, "problems": exc.problems}
    name = type(exc).__name__ if type(exc).__name__ in ERRORS else (
        "UserError" if isinstance(exc, UserError) else "LabqError")
    return {"error": name, "message": str(exc)}


def raise_from(answer: dict[str, Any]) -> None:
    """Raise in the server what the submit raised here."""
    if answer.get("error") == "SpecError":
        raise SpecError(answer["source"], [tuple(p) for p in answer["problems"]])
    raise ERRORS.get(answer.get("error"), LabqError)(answer.get("message", "the submit failed"))


def main() -> int:
    answer_to = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the user's prints must not garble the answer
    request = json.loads(sys.stdin.read())
    from scheduler import api
    from scheduler.config import load_settings

    try:
        settings = load_settings(request.get("cluster"))
        submitted = api.submit(request["spec_path"], request["overrides"], settings, user=request["user"],
                               shown_as=request["shown_as"], shown_dir=request.get("shown_dir"))
        answer: dict[str, Any] = {"submitted": submitted.to_json()}
    except LabqError as exc:
        answer = answer_of(exc)
    answer_to.write(json.dumps(answer) + "\n")
    answer_to.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
