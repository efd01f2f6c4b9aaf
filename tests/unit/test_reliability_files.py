"""Reading, writing and deleting files without hanging, following links or ignoring the umask
(files.py, run/rundir.py, run/checkpoint.py, analysis/load.py).

Each test names the probe it guards: a FIFO or device at a name lbfl reads (a read would block for
ever: every read runs under a 10 s alarm here), checkpoint pruning through a symlinked directory,
``run.overwrite`` deleting the user's own ``*.tmp`` files, files created 0600 whatever the umask, a
full disk reported as torch's RuntimeError, text of a lock file printed raw.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import stat

import pytest
import torch

from lbfl_mpi.analysis.load import AnalysisError, read_config, read_summary
from lbfl_mpi.config import ConfigError, load_config
from lbfl_mpi.files import (
    NotRegularFile,
    os_error_line,
    owned,
    printable,
    read_text,
    real_dir,
    remove_owned,
    save_torch,
    temp_path,
    write_json_atomic,
)
from lbfl_mpi.run import checkpoint, rundir


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if the body blocks for 10 s."""
    def alarm(signum, frame):
        raise TimeoutError("blocked: a read of a non-regular file hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def odd_files(tmp_path):
    """name -> a FIFO, a directory, a character device (/dev/null) and a listening socket."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    yield {"fifo": (tmp_path / "fifo", "a FIFO"), "dir": (tmp_path / "dir", "a directory"),
           "dev": ("/dev/null", "a character device"), "sock": (tmp_path / "sock", "a socket")}
    sock.close()


def test_read_text_refuses_every_non_regular_file_by_name(odd_files, no_hang):
    for path, what in odd_files.values():
        with pytest.raises(NotRegularFile) as e:
            read_text(path)
        assert e.value.strerror == f"is {what}{' (named pipe)' if what == 'a FIFO' else ''}, not a regular file"
        assert e.value.filename == str(path)
    with pytest.raises(NotRegularFile, match="NUL"):
        read_text("a\0b")


def test_every_reader_of_a_run_directory_refuses_a_fifo_at_once(tmp_path, no_hang):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    for name in ("config.toml", "summary.json", "checkpoints/latest.json", "checkpoints/step_00000004/meta.json",
                 "checkpoints/step_00000004/rank0000.pt"):
        os.mkfifo(run / name)
    assert rundir.saved_config(run) is None  # "not lbfl's": overwrite refuses, nothing hangs
    assert checkpoint.checkpoint_metas(run) == [] and checkpoint.latest_checkpoint(run) is None
    payload, err = checkpoint._load(run / "checkpoints" / "step_00000004" / "rank0000.pt")
    assert payload is None and "a FIFO" in err
    with pytest.raises(AnalysisError, match="summary.json: cannot read .is a FIFO"):
        read_summary(run / "summary.json")
    with pytest.raises(AnalysisError, match="config.toml: cannot read .is a FIFO"):
        read_config(run / "config.toml")
    with pytest.raises(ConfigError, match="is a FIFO"):
        load_config(run / "config.toml")
    for path in ("/dev/null", tmp_path):
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert "not a regular file" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_files_lbfl_creates_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        tmp = temp_path(tmp_path / "x.h5")
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
        save_torch({"w": torch.ones(2)}, tmp_path / "model.pt")
        d = real_dir(tmp_path / "checkpoints" / "step_00000001")
    finally:
        os.umask(old)
    for f in (tmp, tmp_path / "summary.json", tmp_path / "model.pt"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f  # mkstemp alone gives 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask


def test_real_dir_refuses_a_link_or_a_file_in_place_of_a_directory(tmp_path):
    elsewhere = tmp_path / "other_run_checkpoints"
    elsewhere.mkdir()
    (tmp_path / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(NotRegularFile, match="is a symbolic link, not a directory"):
        real_dir(tmp_path / "checkpoints")
    (tmp_path / "plots").write_text("x")
    with pytest.raises(NotRegularFile, match="is a regular file, not a directory"):
        real_dir(tmp_path / "plots")
    assert real_dir(tmp_path / "a" / "b").is_dir()


def _checkpoint(root, step, extra=()):
    d = root / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "rank0000.pt").write_bytes(b"x")
    (d / "meta.json").write_text(json.dumps({"step": step, "world_size": 1}))
    for name in extra:
        (d / name).write_text("mine")
    return d


def test_pruning_never_follows_a_symlinked_checkpoints_dir_or_step_dir(tmp_path):
    other = tmp_path / "other" / "checkpoints"
    victims = [_checkpoint(other, s) for s in (4, 8)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(other)
    assert checkpoint.prune(run, 4) == [] and checkpoint.checkpoint_metas(run) == []
    own = run.parent / "own"
    (own / "checkpoints").mkdir(parents=True)
    (own / "checkpoints" / "step_00000004").symlink_to(victims[0])
    assert checkpoint.prune(own, 4) == []
    assert all((v / "rank0000.pt").exists() and (v / "meta.json").exists() for v in victims)
    mine = _checkpoint(own / "checkpoints", 8, extra=["notes.txt"])
    assert sorted(checkpoint.prune(own, 8)) == ["meta.json", "rank0000.pt"]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # the user's file and its directory stay


def test_overwrite_deletes_only_the_temporary_names_lbfl_creates(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    ours = [".summary.json.k2j_9xq1.tmp", ".rank0003.h5.abcdefgh.tmp", "checkpoints/.latest.json.a1b2c3d4.tmp",
            "checkpoints/step_00000004/.rank0000.pt.zz99yy88.tmp", "summary.json"]
    theirs = [".notes.tmp", "data.tmp", "summary.json.tmp", "checkpoints/.mine.tmp", ".config.toml.tmp",
              "checkpoints/step_00000004/scratch.tmp"]
    for name in ours + theirs:
        (run / name).write_text("x")
    assert all(owned(n) for n in ours) and not any(owned(n) for n in theirs)
    assert sorted(remove_owned(run)) == sorted(ours)
    assert all((run / n).read_text() == "x" for n in theirs)


def test_a_full_disk_is_an_oserror_naming_the_file_not_a_runtime_error(tmp_path, monkeypatch):
    real_write = os.write

    def full(fd, data):
        if len(data) > 64:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as e:
        save_torch({"w": torch.zeros(1000)}, tmp_path / "model.pt")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "model.pt")
    assert os_error_line(e.value) == f"No space left on device: {tmp_path / 'model.pt'}"
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, nothing half-written stays
    hdf5 = OSError(28, "Driver write request failed (file write failed: time = Mon\n, filename = '/r/rank0000.h5', "
                       "file descriptor = 3, errno = 28, error message = 'No space left on device', buf = 0x1)")
    assert os_error_line(hdf5) == "No space left on device: /r/rank0000.h5"


def test_printable_escapes_what_could_drive_a_terminal_or_forge_a_line():
    assert printable("plain ü 😀 text") == "plain ü 😀 text"
    assert printable("a\x1b[2J\nlbfl: error: forged\r\u202e\x7f") == "a\\x1b[2J\\nlbfl: error: forged\\r\\u202e\\x7f"
    assert printable("bad\udcffbytes") == "bad\\udcffbytes"


def test_a_hostile_lock_holder_line_is_printed_escaped(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lbfl.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 1\x1b]0;owned\x07\nlbfl: error: forged line")
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.setattr(rundir, "_lock_fd", None)
    try:
        msg = rundir._lock(run)
    finally:
        os.close(fd)
    assert msg is not None and "\n" not in msg and "\x1b" not in msg and "\x07" not in msg
    assert "(pid 1\\x1b]0;owned\\x07\\nlbfl: error: forged line)" in msg
    os.unlink(run / ".lbfl.lock")
    os.mkfifo(run / ".lbfl.lock")  # a FIFO at the lock's name: refused, never a blocked open
    assert "is a FIFO" in rundir._lock(run)
