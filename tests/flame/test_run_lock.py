"""flame.run_lock in one process: one run per dump folder, stale locks (dead pid, reused pid) taken over, other hosts
refused with the way out, released on the way out of a run, also on an exception. Two real runs on one folder are
in test_train.py."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from flame.run_lock import LOCK_NAME, DumpFolderInUse, RunLock


def write_lock(folder, **fields) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start": None, "token": "theirs",
              "since": "2026-01-01T00:00:00Z"}
    record.update(fields)
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        json.dump(record, f)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_is_refused_until_the_first_releases(tmp_path):
    first, second = RunLock(str(tmp_path)), RunLock(str(tmp_path))
    assert first.acquire() is None
    with pytest.raises(DumpFolderInUse, match=rf"job.dump_folder '{tmp_path}' is in use by another run \(pid "
                                              rf"{os.getpid()} on host {socket.gethostname()}.*wait for it"):
        second.acquire()
    second.release()  # not its lock: leaves it alone
    assert os.path.exists(tmp_path / LOCK_NAME)
    first.release()
    assert not os.path.exists(tmp_path / LOCK_NAME)
    assert second.acquire() is None
    second.release()


@pytest.mark.parametrize("holder", ["dead pid", "reused pid"])
def test_a_stale_lock_on_this_host_is_taken_over(tmp_path, holder):
    if holder == "dead pid":
        write_lock(tmp_path, pid=dead_pid())
    else:  # a live pid whose process started at another time than the recorded one: not the run that locked
        if not os.path.exists(f"/proc/{os.getpid()}/stat"):
            pytest.skip("no /proc")
        write_lock(tmp_path, start="1")
    lock = RunLock(str(tmp_path))
    note = lock.acquire()
    assert "took over the stale lock" in note
    assert json.load(open(tmp_path / LOCK_NAME))["token"] == lock.token
    assert [n for n in os.listdir(tmp_path) if n != LOCK_NAME] == []  # the stale one is not left lying around
    lock.release()


def test_a_lock_from_another_host_is_refused_with_the_way_out(tmp_path):
    write_lock(tmp_path, host="elsewhere", pid=dead_pid())
    with pytest.raises(DumpFolderInUse, match=rf"on host elsewhere.*remove {tmp_path / LOCK_NAME} and start"):
        RunLock(str(tmp_path)).acquire()


def test_the_run_releases_its_lock_on_an_exception(tmp_path):
    from flame.train import dump_folder_lock

    class World:
        is_main, rank, world_size = True, 0, 1

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="inside"):
            with dump_folder_lock(str(tmp_path), World()):
                assert os.path.exists(tmp_path / LOCK_NAME)
                raise ValueError("inside")
        assert not os.path.exists(tmp_path / LOCK_NAME)
        write_lock(tmp_path, host="elsewhere")
        with pytest.raises(DumpFolderInUse):
            with dump_folder_lock(str(tmp_path), World()):
                pass
        assert json.load(open(tmp_path / LOCK_NAME))["host"] == "elsewhere"  # someone else's: left alone
    finally:
        dist.destroy_process_group()
