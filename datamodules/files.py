"""Writing files so that a reader (or a resume after SIGKILL) sees the old file or the complete new one, never a part.

The one way the project replaces a file: write a temporary file in the same directory (its name carries TMP_MARK, so
listings such as a run's checkpoints can leave it out), flush and fsync it, rename it over the target, fsync the
directory. An exception (or a signal) before the rename removes the temporary file and leaves the target untouched.
A symlink is replaced the same way (`atomic_symlink`), and a directory that takes long to build (a pretrained
cache entry) appears complete or not at all (`build_directory_once`), as does a directory of outputs
(`write_directory`: an export, a set of samples).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

TMP_MARK = ".tmp-"  # in the name of every temporary file written here: `.NAME.tmp-PID`


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A file written under a temporary name and renamed over `path` by `commit()`; `discard()` removes it.

    As a context manager it commits on success and discards on an exception. `file` is the open file object.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
        if mode not in ("w", "wb"):
            raise ValueError(f"AtomicFile writes a whole file: mode 'w' or 'wb', got {mode!r}")
        self.path = Path(path)
        self.tmp = temporary_name(self.path)
        self.file: IO[Any] = open(self.tmp, mode, encoding=encoding if mode == "w" else None)
        self.done = False

    def commit(self) -> Path:
        if self.done:
            raise RuntimeError(f"{self.path}: already committed or discarded")
        self.done = True
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with AtomicFile(path, "wb") as f:
        f.file.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with AtomicFile(path, "w", encoding=encoding) as f:
        f.file.write(text)
    return Path(path)


def atomic_symlink(link: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Point the symlink `link` at `target` (as given: a relative target is relative to the link's folder), replacing
    the link it was in one rename, so a reader finds the old target or the new one, never no link."""
    link = Path(link)
    tmp = temporary_name(link)
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
    return link


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def new_directory_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot receive a new directory of outputs (it exists and is not an empty directory), or None."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return f"{path}: exists and is not an empty directory (choose a new one, or remove it)"
    return None


def write_directory(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh temporary sibling of `path`, then rename it to `path` (which must be absent or an
    empty directory: ValueError otherwise): a reader sees nothing or the whole directory; an exception (or a signal)
    inside `write` leaves nothing behind."""
    path = Path(path)
    problem = new_directory_problem(path)
    if problem:
        raise ValueError(problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process of the same pid
    tmp.mkdir()
    try:
        write(tmp)
        if path.exists():
            path.rmdir()  # empty, as checked
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    return path


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Temporary directories of interrupted builds of `name` on this host (their process is gone)."""
    host = socket.gethostname()
    for tmp in parent.glob(f".{name}.{host}.*.tmp"):
        try:
            pid = int(tmp.name[len(f".{name}.{host}."):].split(".", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def build_directory_once(final: str | os.PathLike, build: Callable[[Path, Path], None], marker: str) -> Path:
    """The directory `final`, built by `build(entry, work)` on the first call: `entry` is where the directory's
    content goes (it must end with the file `marker`, written last), `work` a scratch directory beside it. Both lie in
    one temporary directory next to `final`, renamed into place only when complete, so an interrupted build never
    leaves a directory that looks finished; a later call finds `final/marker` and builds nothing. Two processes
    building at once: the first rename wins and the other's result is dropped."""
    final = Path(final)
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(final.parent, final.name)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.{socket.gethostname()}.{os.getpid()}.", suffix=".tmp",
                                 dir=final.parent))
    try:
        entry = work / final.name  # the builder creates it (save_pretrained does)
        build(entry, work)
        if not (entry / marker).is_file():
            raise RuntimeError(f"building {final} wrote no {marker}")
        try:
            entry.rename(final)
        except OSError:
            if not (final / marker).is_file():  # not a concurrent build that finished first
                raise
        fsync_dir(final.parent)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)

