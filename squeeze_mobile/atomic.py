"""Atomic writes: build under a temporary name next to the destination, rename into place on success.

Rules every writer in the project follows through this module:
- a failure, Ctrl-C or SIGTERM at any point leaves the destination untouched and removes the temporary;
- nothing the project did not write is ever deleted: a directory at a file's destination is refused, and a
  directory artifact (e.g. a .mlpackage) replaces an existing directory only when the caller's ``replaceable``
  check recognises it as one of ours;
- temporaries carry the writer's pid and a tag of its host, boot and PID namespace
  (``.NAME.partial-hTAG-PID-XXXX.SUFFIX``), so a later write into the same folder removes the leftovers of a process
  that was killed outright (SIGKILL, power loss) and only those: never a live writer's on another machine.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Optional

# A write that failed for want of room: the disk or the user's quota is full, or a file-size limit (ulimit -f) hit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

from .errors import SqueezeError

PARTIAL_MARK = ".partial-"
# ".NAME.partial-hTTTTTTT-PID-XXXXXXXX[.SUFFIX]": TTTTTTT names the machine, boot and PID namespace of the writer
# (_writer_tag), XXXXXXXX is tempfile's 8-character random part. Only names of exactly this shape are ever swept, so
# a user's file that merely contains ".partial-" is left alone; names without the tag are those of older versions.
_PARTIAL_RE = re.compile(r"^\.[^/]*\.partial-(?:(h[0-9a-f]{7})-)?(\d+)-[a-z0-9_]{8}(\.[^/]*)?$")


@functools.lru_cache(maxsize=1)
def _writer_tag() -> str:
    """'h' + 7 hex digits for this host name, boot and PID namespace: a pid names a process only within them, so a
    leftover is judged dead only by a process that shares them (a folder on a network mount or a volume shared by
    containers holds temporaries of writers whose pids mean nothing here)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    return "h" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:7]


def _partial_prefix(dest: Path) -> str:
    return f".{dest.stem}{PARTIAL_MARK}{_writer_tag()}-{os.getpid()}-"

Replaceable = Callable[[Path], bool]


def check_destination(dest, kind: str = "file", replaceable: Optional[Replaceable] = None) -> Path:
    """Refuse, before any work is done, a destination that cannot or must not be written.

    ``kind`` is what will be written there ('file' or 'dir'). Creates missing parent folders. Returns the path.
    """
    dest = Path(dest)
    if kind == "file":
        dest = _through_link(dest)
    _refuse_special(dest)
    if dest.is_dir() and not dest.is_symlink():
        if kind == "file":
            raise SqueezeError(f"{dest} is a directory; give the path of a file to write (nothing was changed)")
        if not (replaceable and replaceable(dest)):
            raise SqueezeError(f"{dest} already exists and was not written by squeeze-mobile; "
                               "remove it yourself or choose another path (nothing was changed)")
    elif dest.exists() and kind == "dir" and not dest.is_symlink():
        raise SqueezeError(f"{dest} exists and is not a directory; remove it or choose another path")
    ensure_writable_dir(dest.parent)
    return dest


def _through_link(dest: Path) -> Path:
    """A symbolic link to a file: the file it points to (written there, as cp does; the link stays a link)."""
    return dest.resolve() if dest.is_symlink() and dest.exists() and not dest.is_dir() else dest


def _refuse_special(dest: Path) -> None:
    """A FIFO, device or socket at ``dest`` is refused: replacing it would turn it into a plain file (as root, a
    checkpoint 'saved' to /dev/null would replace the device)."""
    from .file_kinds import special_kind

    what = special_kind(dest)
    if what is not None:
        raise SqueezeError(f"{dest} is {what}, not a file this command can write; choose another path "
                           "(nothing was changed)")


def ensure_writable_dir(folder) -> Path:
    """Create ``folder`` if needed and prove a file can be created in it; one-line error otherwise."""
    folder = Path(folder)
    _refuse_a_file_on_the_way(folder, _nearest_existing(folder))
    _probe_writable(folder, folder, create=True)
    return folder


def _nearest_existing(folder: Path) -> Path:
    for parent in (folder, *folder.parents):
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def _refuse_a_file_on_the_way(folder: Path, existing: Path) -> None:
    """One line when the nearest existing path of ``folder`` is a file (it cannot be or hold a directory)."""
    if not existing.is_dir():
        if existing.is_symlink() and not existing.exists():
            raise SqueezeError(f"{folder} is not writable: {existing} is a symbolic link to {os.readlink(existing)}, "
                               "which does not exist; create that folder or give another path")
        if existing == folder:
            raise SqueezeError(f"{folder} is a file, not a directory; give a directory to write into")
        raise SqueezeError(f"{folder} is not writable: {existing} is a file, not a directory")


def _probe_writable(folder: Path, where: Path, create: bool) -> None:
    """Prove a file can be created in ``where`` (made first with ``create``); one line naming ``folder`` if not."""
    try:
        if create:
            where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=str(where))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SqueezeError(f"{folder} is not writable ({exc.strerror or exc}); choose a writable location") from None


def check_creatable_dir(folder) -> Path:
    """Refuse, without creating anything, a folder that could not be created (or written into); one-line error.

    For checks made before a command's inputs are known to be good: the folder itself is made only when the
    command writes its first file (``ensure_writable_dir``), so a command that fails first leaves nothing behind."""
    folder = Path(folder)
    existing = _nearest_existing(folder)
    _refuse_a_file_on_the_way(folder, existing)
    # a file in the folder, or (the folder missing) in the folder it would be created in
    _probe_writable(folder, existing, create=False)
    return folder


@contextlib.contextmanager
def removed_if_left_empty(folder):
    """The folders this block creates for ``folder`` (it and missing parents) are removed again, deepest first, when
    the block fails (an error, Ctrl-C) and leaves them empty: a failed command leaves no new empty folder behind.
    Only empty folders that did not exist before are removed (``rmdir``); anything with content stays."""
    folder = Path(folder)
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    try:
        yield folder
    except BaseException:
        for created in missing:
            try:
                created.rmdir()
            except OSError:  # not empty (something was written), or never created
                break
        raise


@contextlib.contextmanager
def folder_lock(folder, what: str = "--out"):
    """Hold ``folder`` for one writer (an advisory lock on the folder itself, released when the block ends or the
    process dies): a second export into the same folder at the same time would rewrite the manifest from its own
    reading of it and drop the first one's records. A second writer is refused in one line at once."""
    import fcntl

    folder = Path(folder)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SqueezeError(f"another squeeze command is writing into {folder} right now; wait for it to end, or "
                               f"choose another {what} (nothing was changed)") from None
        except OSError:   # a filesystem without locks (some network mounts): go on unlocked
            pass
        yield folder
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):  # no process can have this id: not a name we wrote, leave it alone
        return True
    return True


def sweep_partials(folder) -> int:
    """Remove temporaries of our own naming left in ``folder`` by processes that no longer run; returns the count."""
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        m = _PARTIAL_RE.match(entry.name)
        # a tagged name of another host, boot or PID namespace: its pid cannot be checked from here, so it stays
        if m and m.group(1) in (None, _writer_tag()) and not _pid_alive(int(m.group(2))):
            try:
                _remove_strict(entry)
            except OSError:  # another user's leftover, or gone meanwhile: not ours to fight over
                continue
            removed += 1
    return removed


def _remove_strict(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def atomic_path(dest, replaceable: Optional[Replaceable] = None):
    """Yield a temporary path next to ``dest`` (same filesystem); rename it onto ``dest`` on success.

    Works for files and for directory artifacts: whatever the body creates at the temporary path (a file or a
    folder) is moved into place. An existing directory at ``dest`` is replaced only if ``replaceable(dest)``; a
    FIFO, device or socket is refused; a symbolic link to a file is written through (the link stays).
    """
    dest = Path(dest)
    if not (dest.is_symlink() and dest.is_dir()):
        dest = _through_link(dest)
    _refuse_special(dest)
    ensure_writable_dir(dest.parent)
    if dest.is_dir() and not dest.is_symlink() and not (replaceable and replaceable(dest)):
        # refused before the body runs: nothing of the user's is touched, no work is wasted
        raise SqueezeError(f"{dest} is a directory that squeeze-mobile did not write; it was left alone: "
                           "remove it yourself or choose another path")
    sweep_partials(dest.parent)
    # keep the real suffix last: some writers (coremltools) insist on it
    fd, tmp_name = tempfile.mkstemp(prefix=_partial_prefix(dest), suffix=dest.suffix,
                                    dir=str(dest.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the body creates it (as a file or as a directory)
    old = None
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if dest.is_dir() and not dest.is_symlink():
            if not (replaceable and replaceable(dest)):  # appeared while we worked: still not ours to delete
                raise SqueezeError(f"{dest} appeared as a directory while writing; it was left alone and nothing was written")
            # move our old artifact aside under a partial name (swept if we die now), then swap in the new one
            old = _free_partial_name(dest)
            os.replace(dest, old)
        elif tmp.is_dir() and (dest.exists() or dest.is_symlink()):
            dest.unlink()  # a file (or link) at a folder artifact's name: os.replace cannot swap kinds
        os.replace(tmp, dest)
        if old is not None:
            remove(old)
    except BaseException:
        if old is not None and old.exists() and not (dest.exists() or dest.is_symlink()):
            os.replace(old, dest)  # interrupted between the two renames: put our old artifact back
        remove(tmp)
        raise


def _free_partial_name(dest: Path) -> Path:
    """An unused name of our partial shape next to ``dest`` (nothing is created there)."""
    fd, name = tempfile.mkstemp(prefix=_partial_prefix(dest), suffix=dest.suffix, dir=str(dest.parent))
    os.close(fd)
    os.unlink(name)
    return Path(name)


def write_bytes_atomic(dest, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove(path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


__all__ = ["atomic_path", "check_creatable_dir", "check_destination", "ensure_writable_dir", "remove",
           "removed_if_left_empty", "sweep_partials",
           "write_bytes_atomic", "write_text_atomic"]
