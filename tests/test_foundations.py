"""The library-wide helpers with one owner each: precision rule, seeding, safe file writes."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import time

import pytest
import torch

from larp.files import (
    FolderLock,
    FolderLockedError,
    append_jsonl,
    atomic_path,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from larp.precision import autocast, needs_grad_scaler, resolve_precision
from larp.seeding import derive_seed


# ------------------------------------------------------------------------------------------ precision
def test_the_precision_table():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp16", "cuda:1") == "fp16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="expected one of auto, fp32, bf16, fp16"):
        resolve_precision("half", "cpu")
    assert needs_grad_scaler("fp16", "cuda") and not needs_grad_scaler("bf16", "cuda")


def test_autocast_changes_the_matmul_dtype_only_in_reduced_precision():
    a = torch.randn(4, 4)
    with autocast("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("auto", "cpu"):
        assert (a @ a).dtype == torch.float32


# ------------------------------------------------------------------------------------------ seeding
def test_derived_seeds_are_stable_distinct_and_not_additive():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert derive_seed(1, 0) != derive_seed(0, 1)  # seed 1 rank 0 is not seed 0 rank 1
    assert len({derive_seed(s, k) for s in range(20) for k in range(20)}) == 400
    assert all(0 <= derive_seed(s, 3) < 2**63 for s in range(5))
    assert derive_seed(7) == 8460147692890830636  # pinned: changing the scheme changes every run's randomness
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(0, -1)


# ------------------------------------------------------------------------------------------ atomic writes
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "stats.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "tor')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_a_full_disk_names_the_file(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(OSError, match=r"no space left on the device while writing .*a\.txt") as info:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC and not target.exists()


def test_a_short_write_reported_by_torch_is_a_full_disk(tmp_path):
    with pytest.raises(OSError, match="no space left on the device while writing") as info:
        with atomic_path(tmp_path / "state.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032")
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through as they are
        with atomic_path(tmp_path / "state.pt"):
            raise RuntimeError("shape mismatch")


def test_the_temporary_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "clip.mp4") as tmp:
        assert tmp.suffix == ".mp4" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "clip.mp4").read_bytes() == b"x"
    assert write_text_atomic(tmp_path / "t.txt", "é").read_text(encoding="utf-8") == "é"


def test_atomic_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        assert write_text_atomic(tmp_path / "new.txt", "x").stat().st_mode & 0o777 == 0o644
        (tmp_path / "old.txt").write_text("x")
        (tmp_path / "old.txt").chmod(0o600)
        assert write_text_atomic(tmp_path / "old.txt", "y").stat().st_mode & 0o777 == 0o600  # kept
    finally:
        os.umask(umask)


# ------------------------------------------------------------------------------------------ json lines
def test_a_torn_line_is_skipped_and_does_not_swallow_the_next_record(tmp_path, caplog):
    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"step": 1})
    with log.open("a") as f:
        f.write('{"step": 2, "loss": 0.')  # a kill mid-append
    append_jsonl(log, {"step": 3})
    assert read_jsonl(log) == [{"step": 1}, {"step": 3}]
    assert "metrics.jsonl:2" in caplog.text
    assert read_jsonl(tmp_path / "absent.jsonl") == []


# ------------------------------------------------------------------------------------------ folder lock
def _hold_lock(folder: str, ready, release) -> None:
    with FolderLock(folder):
        ready.set()
        release.wait(10)


def test_a_second_holder_is_refused_and_a_dead_holder_frees_the_folder(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(FolderLockedError, match=rf"in use by pid {holder.pid}: another run"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()  # like kill -9: no clean-up code runs
        holder.join(10)
    with FolderLock(tmp_path) as lock:  # the kernel dropped the dead process's lock
        assert lock.path.read_text() == f"pid {os.getpid()}\n"


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    first = FolderLock(tmp_path, what="demo").acquire()
    with pytest.raises(FolderLockedError, match="another demo is writing there"):
        FolderLock(tmp_path, what="demo").acquire()
    first.release()
    FolderLock(tmp_path).acquire().release()


def test_a_forked_worker_does_not_keep_the_lock_of_a_killed_holder(tmp_path):
    holder = os.fork()
    if holder == 0:  # a run that holds the lock, starts a worker, then dies without clean-up (kill -9)
        lock = FolderLock(tmp_path).acquire()  # noqa: F841 - held until the process dies
        if os.fork() == 0:  # the worker outlives it
            time.sleep(3)
            os._exit(0)
        os._exit(0)
    os.waitpid(holder, 0)
    FolderLock(tmp_path).acquire().release()  # not held by the orphaned worker: it closed its copy at fork
