"""Every file reslab writes goes through here: written whole beside its destination, then renamed over it.

    write_bytes(path, data)              # bytes already in memory (a serialised checkpoint, a PNG, a JSON text)
    with atomic_path(path) as tmp: ...   # writers that only take a file name (onnx, torch.export): write to `tmp`

The temporary file lives in the destination's folder (os.replace is atomic only within one filesystem) and is named
`.NAME.tmpPID.SUFFIX` (the suffix kept: torch.export and onnx check it); it is fsynced before the rename and the
folder after it. A crash, a kill or Ctrl-C at any instant leaves the previous file or the new one, never a truncated
mix; a full disk or an unwritable folder is a ReslabError naming the path (the previous file intact), and the
temporary file is removed (a failure to remove it never hides the error that matters). Temporary files of writers that
were killed (their process is gone) are removed by the next write of the same file.

Run folders are claimed here too (`claim_folder`): an exclusive lock that the kernel releases when its process ends,
so two runs never write into one folder and a killed run never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reslab.errors import ReslabError

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked there
    fcntl = None

_TMP_PID = re.compile(r"\.tmp(\d+)")
_WRITING: dict[Path, Path] = {}  # temporary path -> the file it becomes, for the writes in progress


def describe_os_error(e: OSError) -> str:
    """What an OSError means for the user, in a few words (a full disk is said as such)."""
    if e.errno == errno.ENOSPC:
        return "no space left on the device (the previous file, if any, is intact; free some space and resume)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded (the previous file, if any, is intact)"
    if e.errno == errno.EROFS:
        return "the filesystem is read-only"
    return e.strerror or str(e)


def cannot_write(path: str | Path, e: OSError) -> ReslabError:
    return ReslabError(f"cannot write {str(path)!r}: {describe_os_error(e)}")


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is another user's
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of earlier writes of `path` whose process is gone (killed mid-write); returns them."""
    removed = []
    for tmp in Path(path).parent.glob(f"{glob.escape('.' + Path(path).name)}.tmp*"):
        found = _TMP_PID.match(tmp.name[len(Path(path).name) + 1 :])
        if found and int(found.group(1)) != os.getpid() and not _alive(int(found.group(1))):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _fsync(path: Path, *, folder: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)
    except OSError:
        if folder:  # a folder cannot be opened everywhere (Windows): the rename is then as durable as the OS makes it
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, sync: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write the whole file to; renamed over `path` when the block ends without an
    error (after an fsync), removed otherwise. An OSError (full disk, read-only folder) becomes a ReslabError naming
    `path`. `sync=False` skips the fsyncs (~10 ms a file on a disk): still whole or absent after a crash of the
    process, not necessarily after one of the machine; for thousands of files that can be written again (a dataset
    exported as PNGs)."""
    path = Path(path)
    tmp = temporary_path(path)
    _WRITING[tmp] = _WRITING.get(path, path)  # a writer nested in another (export's) names the file the user named
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if sync:  # a listing of the folder per file: skipped for bulk writes, as the fsyncs are
            remove_stale_temporaries(path)
        yield tmp
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        # never let the clean-up's own failure (a read-only folder refuses even an unlink) replace the real error
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise cannot_write(_WRITING[tmp], e) from None
        raise
    finally:
        _WRITING.pop(tmp, None)
    if sync:
        _fsync(path.parent, folder=True)


def write_with(path: str | Path, write: Callable[[BinaryIO], object], *, sync: bool = True) -> Path:
    """Run `write(file)` on a temporary file beside `path`, then rename it over `path` (see atomic_path)."""
    with atomic_path(path, sync=sync) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview, *, sync: bool = True) -> Path:
    return write_with(path, lambda f: f.write(data), sync=sync)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def ensure_folder(folder: str | Path, *, flag: str) -> Path:
    """Create `folder` (and its parents) and check that files can be written in it; a ReslabError naming `flag`
    otherwise (a file in the way, no permission, a read-only or full filesystem)."""
    folder = Path(folder)
    for f in (*reversed(folder.parents), folder):
        if f.exists() and not f.is_dir():
            raise ReslabError(f"{flag}: {str(f)!r} is a file, not a folder; choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ReslabError(f"{flag}: cannot write in {str(folder)!r}: {describe_os_error(e)}") from None
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# claiming a folder

LOCK_NAME = ".reslab.lock"


class FolderInUse(ReslabError):
    """Another live process holds the folder."""


@dataclass
class FolderClaim:
    """An exclusive claim on a folder: an flock on its lock file, held until `release()` or the process's end."""

    folder: Path
    fd: int
    created: bool  # the folder did not exist before the claim: removed on release if it is left empty

    def release(self) -> None:
        if self.fd < 0:
            return
        # unlinked while still locked, so that no other process can lock this file's inode after we let go
        with contextlib.suppress(OSError):
            (self.folder / LOCK_NAME).unlink()
        os.close(self.fd)
        self.fd = -1
        if self.created:
            with contextlib.suppress(OSError):  # not empty (the run wrote files): kept
                self.folder.rmdir()


def claim_folder(folder: str | Path, *, flag: str, in_use_flag: str | None = None, what: str = "run") -> FolderClaim:
    """Claim `folder` for this process (creating it if needed): ReslabError naming `in_use_flag` (default `flag`) if
    another live process holds it, naming `flag` if the folder cannot be used. The kernel drops the lock when its
    holder exits, however it exits: a killed run never blocks the next one."""
    folder = Path(folder)
    created = not folder.exists()
    ensure_folder(folder, flag=flag)
    lock = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ReslabError(f"{flag}: cannot write in {str(folder)!r}: {describe_os_error(e)}") from None
        if fcntl is None:
            return FolderClaim(folder, fd, created)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            busy = in_use_flag or flag
            other = f", or choose another {busy}" if busy in ("--name", "--output") else ""
            raise FolderInUse(
                f"{busy}: {str(folder)!r} is in use by another {what}{holder}; wait for it to finish{other}"
            ) from None
        except OSError:  # a filesystem without locks (some network mounts): go on unclaimed, as before locks
            return FolderClaim(folder, fd, created)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder unlinked this file as we opened it: lock the new one
    with contextlib.suppress(OSError):  # who holds it, for the message of a run refused (a full disk: not said)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return FolderClaim(folder, fd, created)


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (process {pid})"
    return ""
