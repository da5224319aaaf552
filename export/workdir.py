"""The export's working folder, next to the output so the final ``os.replace`` is atomic.

An export writes only inside ``.rewardrt-export-XXXX/`` in the output's folder and moves the
finished, verified file to ``OUT.onnx`` with one ``os.replace``: whatever stops it (an exception,
SIGTERM, SIGKILL, a power cut), ``OUT.onnx`` is the previous file or the new one, never a part.

An exception or SIGTERM (the CLI turns it into ``SystemExit``) removes the working folder. A
SIGKILL cannot, so each working folder holds a lock file that its export keeps ``flock``-ed while
it runs (the kernel drops the lock when the process dies, however it dies); the next export to
the same folder removes every working folder whose lock it can take.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = ".rewardrt-export-"
LOCK = ".lock"
UNLOCKED_GRACE_S = 60.0  # a folder without a lock file may be one being created right now

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no stale-folder cleanup
    fcntl = None  # type: ignore[assignment]


def remove_stale_workdirs(folder: str | Path) -> list[Path]:
    """Remove the working folders of exports that died in ``folder``; returns what was removed."""
    if fcntl is None:
        return []
    removed = []
    for workdir in Path(folder).glob(PREFIX + "*"):
        if not workdir.is_dir():
            continue
        lock = workdir / LOCK
        try:
            if not lock.exists():
                if time.time() - workdir.stat().st_mtime < UNLOCKED_GRACE_S:
                    continue
                stale = True
            else:
                with open(lock, "rb") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # a live export holds it
                    stale = True
        except OSError:
            continue
        if stale:
            shutil.rmtree(workdir, ignore_errors=True)
            log.info("removed %s, left by an export that was killed", workdir)
            removed.append(workdir)
    return removed


@contextmanager
def export_workdir(folder: str | Path) -> Iterator[Path]:
    """A locked working folder in ``folder``, removed on exit (stale ones are removed first)."""
    remove_stale_workdirs(folder)
    workdir = Path(tempfile.mkdtemp(prefix=PREFIX, dir=folder))
    lock = open(workdir / LOCK, "wb")
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield workdir
    finally:
        lock.close()
        shutil.rmtree(workdir, ignore_errors=True)
