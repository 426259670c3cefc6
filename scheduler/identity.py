"""Who is asking: the OS account of this process, never an environment variable.

labq keeps one queue per OS account.  Its state directory (``LABQ_HOME``) and
everything in it belong to one user, jobs run as that user, and labq refuses a
state directory that another account owns or that other accounts can write:
opening one up would let a second user's jobs run as the first (the daemon's
account) and read whatever it can.  Users who share a cluster each run their
own labq.  `labq server` shares one queue between people without sharing the
account: each token is a labq user (scheduler.server.tokens), whose name goes
on their jobs; the jobs still run as the server's account.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from scheduler.errors import StoreError


def current_user() -> str:
    """The name of this process's effective OS account (``$LOGNAME`` and
    ``$USER`` are whatever the caller says, so they are not asked)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (some containers)
        return f"uid{uid}"


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_private(path: Path, what: str) -> None:
    """Refuse ``path`` unless this account owns it and no other account may
    write it; take away read access from others (labq's state is private)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{path}: the {what} is a symbolic link; labq keeps its state in a real directory "
                         "of its own. Point LABQ_HOME at the target instead.")
    if st.st_uid != os.geteuid():
        raise StoreError(f"{path}: the {what} belongs to {_owner(st.st_uid)}, not to you ({current_user()}); "
                         "labq keeps one queue per OS account and runs jobs as its owner. Use a LABQ_HOME of "
                         "your own.")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreError(f"{path}: the {what} is writable by other accounts (mode {stat.S_IMODE(st.st_mode):o}); "
                         "labq keeps one queue per OS account and will not run in a shared directory: "
                         f"chmod 700 {path}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
