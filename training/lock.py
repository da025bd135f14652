"""One program at a time per output folder: an OS-level lock file holding the owner's pid.

    with lock.hold(output):      # raises FolderLocked (a ConfigError: exit status 2) when busy
        ...                      # train, pretrain, export into ``output``

The lock is ``flock`` on ``<folder>/.lock``. The kernel drops it when its process ends, however
it ends (SIGKILL included), so a lock left by a dead process is taken over by the next program
without any pid guessing; the file only tells who holds it. On release the file is removed.
Taking the lock and checking that the locked file is still the one at the path makes the
removal safe against a program that opened the old file just before it went away.
"""

import contextlib
import errno
import fcntl
import os

from training.config import ConfigError

LOCK_NAME = ".lock"


class FolderLocked(ConfigError):
    """Another live process holds the folder's lock; the message names its pid."""


def _holder(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def acquire(folder):
    """Locks ``folder`` (created if needed) for this process; returns the open lock file, to
    pass to ``release``. Raises ``FolderLocked`` naming the pid that holds it."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderLocked(
                f"{folder} is in use by process {_holder(path)} (lock file {path}); wait for "
                "it to finish, or use another --output") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed that file as we opened it: try again
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    return fd, path


def release(handle):
    """Removes the lock file and drops the lock taken by ``acquire``."""
    fd, path = handle
    with contextlib.suppress(OSError):
        os.remove(path)
    os.close(fd)


@contextlib.contextmanager
def hold(folder):
    """``acquire(folder)`` for the duration of the ``with`` block."""
    handle = acquire(folder)
    try:
        yield path_of(folder)
    finally:
        release(handle)


def path_of(folder):
    """The lock file of ``folder``."""
    return os.path.join(folder, LOCK_NAME)
