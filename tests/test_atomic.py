"""Crash-safe writes: data flushed before the rename and the folder after it; a folder swapped in whole, so
a kill at any moment leaves the old version or the new one; the umask read without being changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from frelon import atomic


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_a_file_is_flushed_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append(("fsync", _fd_path(fd))), real_fsync(fd)))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    atomic.write_json(tmp_path / "metrics.json", {"AP": 0.5})
    (kind0, temporary), (kind1, renamed), (kind2, folder) = events
    assert kind0 == "fsync" and Path(temporary).name.startswith(".metrics.json.") and temporary.endswith(".tmp")
    assert (kind1, renamed) == ("replace", str(tmp_path / "metrics.json"))
    assert (kind2, folder) == ("fsync", str(tmp_path))
    assert (tmp_path / "metrics.json").read_text() == '{\n  "AP": 0.5\n}\n'


def test_a_folder_is_flushed_whole_before_it_is_swapped_in(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(_fd_path(fd)), real_fsync(fd)))
    with atomic.atomic_dir(tmp_path / "prepared") as work:
        (work / "sub").mkdir()
        (work / "sub" / "a.json").write_text("1")
        (work / "b.json").write_text("2")
    names = [Path(p).name for p in synced]
    assert {"a.json", "b.json", "sub"} <= set(names) and names[-1] == tmp_path.name  # the parent's entry last


def _killed_at(point: str, target: Path, monkeypatch_calls: dict) -> int:
    """Replace `target` with a new folder in a forked child that dies (SIGKILL) at `point`; the exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            for owner, name, replacement in monkeypatch_calls[point]:
                setattr(owner, name, replacement)
            with atomic.atomic_dir(target) as work:
                for i in range(20):
                    (work / f"new{i}.txt").write_text("new")
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("point", ["before the swap", "after the swap", "while the old folder is removed"])
def test_a_kill_at_any_moment_of_a_folder_swap_leaves_the_old_folder_or_the_new_one_whole(tmp_path, point):
    target = tmp_path / "prepared"
    target.mkdir()
    for i in range(20):
        (target / f"old{i}.txt").write_text("old")
    die = lambda *a, **k: os.kill(os.getpid(), 9)  # noqa: E731
    real_swap = atomic._swap_in

    def remove_one_then_die(path, *a, **k):  # a kill half-way through a removal
        files = sorted(Path(path).rglob("*.txt"))
        if files:
            files[0].unlink()
        die()

    def swap_then_die(work, where):
        real_swap(work, where)
        die()

    calls = {"before the swap": [(atomic, "_swap_in", lambda work, where: die())],
             "after the swap": [(atomic, "_swap_in", swap_then_die)],
             "while the old folder is removed": [(atomic.shutil, "rmtree", remove_one_then_die)]}
    status = _killed_at(point, target, calls)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    names = sorted(p.name for p in target.iterdir())
    assert names in (sorted(f"old{i}.txt" for i in range(20)), sorted(f"new{i}.txt" for i in range(20))), names
    if point != "before the swap":
        assert names[0].startswith("new")


def test_without_an_atomic_exchange_the_old_folder_is_renamed_aside_and_removed_after(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic.atomic_dir(target) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # nothing left beside it


def test_the_umask_is_read_without_being_changed_and_files_get_the_usual_permissions(tmp_path, monkeypatch):
    previous = os.umask(0o077)
    try:
        def no_umask(mask):
            raise AssertionError("os.umask called: every thread of the process would see the umask change")

        monkeypatch.setattr(atomic.os, "umask", no_umask)
        assert atomic.current_umask() == 0o077
        atomic.write_text(tmp_path / "a.txt", "x")
        with atomic.atomic_dir(tmp_path / "folder") as work:
            (work / "b.txt").write_text("y")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o700


def _writer_killed_mid_write(target: Path, folder: bool) -> None:
    """A forked child that starts writing `target` (a file, or a folder) and is killed half-way (SIGKILL)."""
    pid = os.fork()
    if pid == 0:
        try:
            if folder:
                with atomic.atomic_dir(target) as work:
                    (work / "half.txt").write_text("half")
                    os.kill(os.getpid(), 9)
            with atomic.atomic_path(target) as tmp:
                tmp.write_text("half")
                os.kill(os.getpid(), 9)
        finally:
            os._exit(0)
    assert os.WTERMSIG(os.waitpid(pid, 0)[1]) == 9


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_a_killed_writers_temporary_goes_with_the_next_write_while_a_live_writers_stays(tmp_path, folder):
    target = tmp_path / ("prepared" if folder else "metrics.json")
    _writer_killed_mid_write(target, folder)
    _writer_killed_mid_write(target, folder)  # its start swept the first one's
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and all(name.startswith(f".{target.name}.") and name.endswith(".tmp") for name in left)
    write = atomic.atomic_dir if folder else atomic.atomic_path
    with write(target) as mine:  # a live writer, while another write of the same target sweeps
        assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]  # the dead ones went, not this one
        assert atomic.sweep(target) == 0 and mine.exists()
        if not folder:
            mine.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_guard_that_refuses_leaves_the_target_as_it_was_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def refuse(path):
        raise RuntimeError(f"not writing {path.name}")

    atomic.set_guard(refuse)
    try:
        with pytest.raises(RuntimeError, match="not writing metrics.json"):
            atomic.write_text(target, "new")
        with pytest.raises(RuntimeError, match="not writing prepared"):
            with atomic.atomic_dir(tmp_path / "prepared") as work:
                (work / "a.txt").write_text("a")
    finally:
        atomic.set_guard(None)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
