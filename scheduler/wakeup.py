"""A nudge from the CLI to the scheduler: "the queue changed, look now".

An idle scheduler sleeps up to ``poll_interval`` between passes, so without a
nudge a job submitted at a random moment waits half of that on average before
it is even looked at.  ``labq submit`` sends one datagram after its transaction
commits; the scheduler's listener thread sets an event that ends the sleep.

Best effort by design: the database is the truth and the poll still finds every
change, so a lost nudge (no scheduler, a full socket buffer) only costs latency.
The socket lives in Linux's abstract namespace, named after ``LABQ_HOME``: no
file to clean up after a ``kill -9``, no path-length limit, and two homes on one
machine never hear each other.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from pathlib import Path

log = logging.getLogger("labq.wakeup")


def address(home: Path) -> str:
    digest = hashlib.sha1(str(Path(home).expanduser().resolve()).encode()).hexdigest()[:20]
    return f"\0labq-{digest}"


def notify(home: Path) -> bool:
    """Tell a scheduler serving ``home`` to look at the queue now; False if none listens."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"!", address(home))
        return True
    except OSError:  # nobody bound (ECONNREFUSED), or the buffer is full: the poll will see it
        return False


class Listener:
    """Binds the nudge socket and sets ``event`` on every datagram, from a daemon thread."""

    def __init__(self, home: Path, event: threading.Event):
        self.event = event
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(address(home))  # OSError if another scheduler of this home listens
        self._thread = threading.Thread(target=self._serve, name="labq-wakeup", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except OSError:  # closed
                return
            self.event.set()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
