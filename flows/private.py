"""Files and folders only this user may read: auth strings, logins, secrets, server state.

A file that is not this user's private file (another owner, readable or writable by
others, a symlink) is never read: callers treat it as absent and write a new one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_private(path: Path) -> str | None:
    """The text of `path` if it is this user's file, not a symlink, with no group/other access."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as handle:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        return handle.read()


def write_private(path: Path, text: str) -> None:
    """Write `path` atomically, readable by this user only (created 0600, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def private_folder(folder: Path) -> Path:
    """`folder`, created 0700; an existing one is made 0700 if it is this user's, refused otherwise."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{folder} is not a folder of this user's; remove it")
    os.chmod(folder, 0o700)
    return folder
