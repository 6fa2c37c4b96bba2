"""How cifarlab writes a file: one place for every writer (run directories, the decoded-image cache, sweep folders).

- **Readable by colleagues.** Everything ends with the mode the user's umask gives a new file (0644 under umask
  022), also what is written under a temporary name and then renamed into place (``tempfile.mkstemp`` and
  safetensors create theirs 0600, which would hide a run's weights from the other people on a shared cluster).
- **Never through a link it did not create.** A copied or shared folder may hold a symbolic link where cifarlab
  writes (``.lock -> ~/notes.txt``); writing through it would change the file it points to. Files are opened with
  ``O_NOFOLLOW``, temporary files are created with ``O_EXCL`` under names of their own (``mkstemp``: no fixed
  ``.tmp-`` name another process could plant a link at), and a link where a file is to be written or replaced is
  refused with one line naming it (:func:`link_refusal`). cifarlab itself creates no links. The folders above a
  file may be links (a run directory on a scratch disk through a link is fine).
- **Whole or not at all.** A file is replaced atomically, written under a temporary name and renamed into place, by
  one helper: :func:`write_whole` for data in hand, :func:`replacing` for a library that writes to a file name
  (safetensors, torch.save). A process killed while writing leaves the old file (and a ``.tmp-<name>.*`` file,
  removed by the next start of a run); an append-only file (:func:`append`) can be left with a torn last line, which
  its readers leave out.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Union

from cifarlab.errors import UsageError

PathLike = Union[str, "os.PathLike[str]"]

TEMPORARY = ".tmp-"
"""The prefix of every temporary file and folder cifarlab writes (then renames into place, or removes)."""


def typed(path: PathLike) -> str:
    """``path`` as the user should type it where the command ran: relative to the current directory when under it,
    else absolute; every path a command shows (a hint's path runs as printed; quote it for the shell with shlex)."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(os.getcwd()))
    except ValueError:
        return str(absolute)


def error_file(error: OSError) -> str:
    """The file an OSError names, as the user types it (its name may be absolute or relative); "a file" for none."""
    return typed(error.filename) if isinstance(error.filename, (str, os.PathLike)) else "a file"


def failed_write(error: OSError) -> str:
    """A write the filesystem refused, in a few words: why, and the file it named."""
    return f"{error.strerror} writing {error_file(error)}"


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""The errors of a write to a full (or read-only) filesystem."""

NO_SPACE_AGAIN = "free space, then run the command again"
"""The remedy for a full disk before a run started or after it ended (nothing to continue from)."""


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` sets it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~umask()


# --- links -----------------------------------------------------------------------------------------------------

def link_refusal(path: PathLike) -> UsageError:
    """The one line that refuses to write through the symbolic link at ``path``."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return UsageError(f"{typed(path)} is a symbolic link (to {target}); cifarlab does not write through links it "
                      f"did not create: remove it (or put a copy of the file it points to in its place) and run again")


def refuse_link(path: PathLike) -> None:
    """Raise :func:`link_refusal` when ``path`` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise link_refusal(path)


def open_nofollow(path: PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a link at ``path`` (``O_NOFOLLOW``: the kernel checks, no gap to race); a new file
    gets ``mode`` less the umask."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP and os.path.islink(path):
            raise link_refusal(path) from None
        raise


# --- writing -----------------------------------------------------------------------------------------------------

def _write(descriptor: int, data: bytes) -> None:
    """Every byte of ``data`` to ``descriptor`` (the one place bytes are written: tests/kill_in_write.py dies here)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def append(path: PathLike, text: str) -> None:
    """Append ``text`` (whole lines) to ``path``, created if missing, never through a link. One ``write`` call per
    record: a process killed during it leaves at most a torn last line."""
    descriptor = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        _write(descriptor, text.encode())
    finally:
        os.close(descriptor)


def open_append(path: PathLike) -> BinaryIO:
    """``open(path, "ab")`` that never writes through a link: for a log held open while a process writes to it."""
    return os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


@contextlib.contextmanager
def _replaced(path: PathLike) -> Iterator[tuple[int, Path]]:
    """The one write-then-rename every writer of a whole file goes through: a new file beside ``path`` under a name
    nobody could have planted a link at (``mkstemp``: O_EXCL), open and named for the block; when the block ends it is
    closed and published to ``path`` (:func:`publish`), and when the block fails it is removed. A link at ``path`` is
    refused."""
    path = Path(path)
    refuse_link(path)
    descriptor, name = tempfile.mkstemp(prefix=f"{TEMPORARY}{path.name}.", dir=path.parent)
    temporary = Path(name)
    try:
        try:
            yield descriptor, temporary
        finally:
            os.close(descriptor)
        publish(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def write_whole(path: PathLike, data: Union[str, bytes], durable: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically, with the umask's mode: written under a name of its own and renamed
    into place, so a reader (or a process killed meanwhile) finds the old file or the new one, never a part.
    ``durable`` (checkpoint files): the data is on disk before the rename, and the rename too when this returns. A link
    at ``path`` is refused."""
    with _replaced(path) as (descriptor, _):
        _write(descriptor, data.encode() if isinstance(data, str) else data)
        if durable:
            os.fsync(descriptor)
    if durable:
        sync(Path(path).parent)


@contextlib.contextmanager
def replacing(path: PathLike) -> Iterator[Path]:
    """A new temporary file beside ``path`` for a writer that wants a file name (safetensors): what it wrote there
    is published to ``path`` when the block ends, removed if it fails (as :func:`write_whole`). A link at ``path``
    is refused."""
    with _replaced(path) as (_, temporary):
        yield temporary


def sync(path: PathLike) -> None:
    """Flush ``path`` to disk: a file's data, or a folder's entries (the names renamed into it)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def share(path: PathLike) -> None:
    """Give ``path``, a file cifarlab wrote, the mode of a normally created file (never the mode of a link's target).
    By path, not through a descriptor opened here: closing any descriptor of a file drops the process's POSIX locks
    on it (a search's claim file is published while locked)."""
    refuse_link(path)
    os.chmod(path, normal_mode())


def publish(temporary: PathLike, path: PathLike) -> None:
    """Move a finished ``temporary`` file to ``path`` atomically, with the mode of a normally created file; a link
    at ``path`` is refused (a rename would not write through it, but a link there is not cifarlab's)."""
    share(temporary)
    refuse_link(path)
    os.replace(temporary, path)


def remove_leftovers(folder: PathLike) -> None:
    """Remove the temporary files and folders a killed process left in ``folder`` (links are left alone: they are
    not cifarlab's). Call only where no other process writes: a run directory, under its lock."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if not entry.name.startswith(TEMPORARY) or entry.is_symlink():
                continue
            if entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
