"""squeeze_mobile.atomic: never deletes what the project did not write, refuses a directory at a file's
destination, replaces only directories its caller recognises, sweeps only dead writers' partials."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from squeeze_mobile.atomic import (atomic_path, check_destination, ensure_writable_dir, sweep_partials,
                                   write_text_atomic)
from squeeze_mobile.errors import SqueezeError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (reuse within the test is vanishingly unlikely)


def _user_dir(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("years of work")
    return path


def test_write_replaces_a_file_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "out.json"
    dest.write_text("old")
    write_text_atomic(dest, "new")
    assert dest.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_directory_at_a_file_destination_is_refused_and_kept(tmp_path):
    user = _user_dir(tmp_path / "manifest.json")
    with pytest.raises(SqueezeError, match="is a directory that squeeze-mobile did not write; it was left alone"):
        write_text_atomic(user, "{}")
    with pytest.raises(SqueezeError, match="is a directory"):
        check_destination(user, "file")
    assert (user / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_directory_artifact_replaced_only_when_recognised(tmp_path):
    ours = lambda p: (p / "Manifest.json").is_file()  # noqa: E731 - the caller's "written by us" check
    user = _user_dir(tmp_path / "model.mlpackage")
    ran = []
    with pytest.raises(SqueezeError, match="did not write"):
        with atomic_path(user, replaceable=ours) as tmp:
            ran.append(tmp)  # refused before the body: no work wasted
    assert not ran and (user / "thesis.txt").exists()
    with pytest.raises(SqueezeError, match="not written by squeeze-mobile"):
        check_destination(user, "dir", ours)

    pkg = tmp_path / "ours.mlpackage"
    pkg.mkdir()
    (pkg / "Manifest.json").write_text("v1")
    with atomic_path(pkg, replaceable=ours) as tmp:
        tmp.mkdir()
        (tmp / "Manifest.json").write_text("v2")
    assert (pkg / "Manifest.json").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage", "ours.mlpackage"]


def test_failure_or_interrupt_keeps_the_old_artifact(tmp_path):
    dest = tmp_path / "a.onnx"
    dest.write_bytes(b"old")
    for exc in (RuntimeError("converter died"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_path(dest) as tmp:
                tmp.write_bytes(b"half")
                raise exc
        assert dest.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]


def test_sweep_removes_only_dead_writers_partials_of_our_shape(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale_file = tmp_path / f".model.partial-{dead}-abcd1234.onnx"
    stale_dir = tmp_path / f".model.partial-{dead}-x_y9z0ab.mlpackage"
    live = tmp_path / f".model.partial-{alive}-abcd1234.onnx"
    other_live = tmp_path / ".model.partial-1-abcd1234.onnx"  # pid 1 always runs
    lookalikes = [tmp_path / f"notes.partial-{dead}-abcd1234.txt",  # not hidden
                  tmp_path / f".notes.partial-{dead}-draft.txt",  # not tempfile's 8-character tail
                  tmp_path / f".notes.partial-{dead}.txt",
                  tmp_path / ".notes.partial-99999999999999999999999-abcd1234.txt"]  # no such pid can exist
    stale_file.write_bytes(b"x" * 100)
    stale_dir.mkdir()
    (stale_dir / "Manifest.json").write_text("{}")
    for p in (live, other_live, *lookalikes):
        p.write_text("keep")
    assert sweep_partials(tmp_path) == 2
    assert not stale_file.exists() and not stale_dir.exists()
    assert all(p.exists() for p in (live, other_live, *lookalikes))


def test_a_write_sweeps_the_leftovers_of_a_killed_writer(tmp_path):
    stale = tmp_path / f".report.partial-{_dead_pid()}-qwertyui.json"
    stale.write_text("{")
    write_text_atomic(tmp_path / "report.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_unwritable_and_file_destinations(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SqueezeError, match="is a file, not a directory"):
        ensure_writable_dir(blocker)
    with pytest.raises(SqueezeError, match=r"is not writable: .*file is a file, not a directory"):
        ensure_writable_dir(blocker / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(SqueezeError, match="not writable"):
                write_text_atomic(ro / "x.txt", "x")
        finally:
            ro.chmod(0o700)
    with pytest.raises(SqueezeError, match="not writable"):
        write_text_atomic(Path("/proc/x.pack"), "x")
