"""API tokens: one or more per labq user, kept hashed in a private file.

A token is 32 random bytes (``labq_`` + URL-safe base64), so a plain SHA-256
of it cannot be reversed or guessed; the file holds only the hashes, mode 0600
in a 0700 directory under LABQ_HOME.  ``labq token create NAME`` prints a token
once.  The server re-reads the file when it changes, so a new or revoked token
takes effect at once, without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scheduler.errors import UserError

TOKEN_PREFIX = "labq_"
# What a labq user's name may be: like a POSIX account name.
log = logging.getLogger("labq.server")
USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")


def tokens_path(home: Path) -> Path:
    return home / "server" / "tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    user: str
    digest: str  # sha256 of the token, hex
    created_at: float

    @property
    def token_id(self) -> str:
        """A short name for one token (`labq token list`), not enough to use it."""
        return self.digest[:8]


class TokenBook:
    """The tokens of one LABQ_HOME: create, list, revoke, and verify a presented one."""

    def __init__(self, home: Path):
        self.path = tokens_path(home)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._by_digest: dict[str, TokenEntry] = {}

    # ------------------------------------------------------------ reading
    def entries(self) -> list[TokenEntry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.path}: cannot read the token file ({exc}); fix or remove it") from None
        return [TokenEntry(e["user"], e["digest"], float(e["created_at"])) for e in raw.get("tokens", [])]

    def verify(self, token: str | None) -> str | None:
        """The user a presented token belongs to, or None."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        self._refresh()
        entry = self._by_digest.get(_digest(token))
        return entry.user if entry is not None else None

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen == self._seen and (seen is not None or not self._by_digest):
                return
            try:
                self._by_digest = {e.digest: e for e in self.entries()} if seen is not None else {}
            except UserError as exc:  # a damaged file lets nobody in, and says so in the server's log
                log.error("%s; every request is refused until it is fixed", exc)
                self._by_digest = {}
            self._seen = seen

    # ------------------------------------------------------------ writing
    def create(self, user: str, now: float | None = None) -> str:
        """A new token for ``user``; only its hash is kept."""
        if not USER_NAME.fullmatch(user or ""):
            raise UserError(f"labq token create {user!r}: expected a user name: lower-case letters, digits, '_', '.' "
                            "or '-', starting with a letter or '_', at most 64 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._exclusive():
            entries = self.entries() + [TokenEntry(user, _digest(token), time.time() if now is None else now)]
            self._write(entries)
        return token

    def revoke(self, user: str, token_id: str | None = None) -> int:
        """Remove ``user``'s tokens (only the one named ``token_id`` when given);
        returns how many were removed."""
        with self._exclusive():
            entries = self.entries()
            kept = [e for e in entries if not (e.user == user and (token_id is None or e.token_id == token_id))]
            if len(kept) != len(entries):
                self._write(kept)
        return len(entries) - len(kept)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Two `labq token create` at once must not lose one of the tokens."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.parent / ".tokens.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, entries: list[TokenEntry]) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        data: dict[str, Any] = {"tokens": [{"user": e.user, "digest": e.digest, "created_at": e.created_at}
                                           for e in entries]}
        tmp = directory / f".tokens.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: the server never reads half a file
