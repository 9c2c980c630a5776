"""Run folders under faults: torn metrics lines, two trainers on one folder, damaged checkpoints, a full disk,
a garbled recipe.yaml; resuming with settings that do not change results; recipes as package data."""

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from larp.files import FolderLockedError
from larp.seeding import derive_seed
from larp.training import checkpoint as ckpt
from larp.training.distributed import DistInfo
from larp.training.recipe import (
    GeneratorTrainConfig,
    TokenizerTrainConfig,
    apply_overrides,
    available_recipes,
    load_recipe,
    recipe_from_dict,
    resolve_recipe,
)
from larp.training.run_dir import (
    RESUME_IGNORED,
    MetricsWriter,
    prepare_run_dir,
    restore_rng,
    save_run_checkpoint,
    truncate_metrics,
)

MAIN = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
OTHER = DistInfo(rank=1, local_rank=1, world_size=2, device=torch.device("cpu"))


def recipe(*overrides: str) -> TokenizerTrainConfig:
    return recipe_from_dict(apply_overrides({"steps": 10}, list(overrides)))


def save(run_dir: Path, step: int, keep: int = 5) -> Path:
    weights = {"tokenizer": {"w": torch.full((3,), float(step))}}
    return ckpt.save_checkpoint(run_dir, step, weights, {"step": step}, keep=keep)


def steps_on_disk(run_dir: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in ckpt.checkpoint_folders(run_dir)]


# ------------------------------------------------------------------------------------------ metrics.jsonl
def test_a_torn_metrics_line_neither_corrupts_the_next_record_nor_blocks_resume(tmp_path, caplog):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step})
    with writer.path.open("a") as f:
        f.write('{"step": 4, "loss": 0.2')  # the disk filled up (or the process was killed) mid-line
    writer.write(5, {"loss": 0.125})
    with caplog.at_level(logging.WARNING):
        truncate_metrics(writer.path, 3)
    assert [json.loads(line)["step"] for line in writer.path.read_text().splitlines()] == [1, 2, 3]
    assert json.loads(writer.path.read_text().splitlines()[1]) == {"step": 2, "loss": 0.5}
    assert f"{writer.path}:4" in caplog.text


def test_truncate_metrics_failing_midway_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    before = path.read_text()

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="metrics.jsonl") as raised:
        truncate_metrics(path, 2)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


# ------------------------------------------------------------------------------------------ the lock
def test_a_second_trainer_on_the_same_folder_fails_at_once(tmp_path):
    run = tmp_path / "run"
    lock = prepare_run_dir(run, recipe(), resume=False, info=MAIN)
    with pytest.raises(FolderLockedError, match=f"{run}.*training run"):
        prepare_run_dir(run, recipe("seed=1"), resume=False, info=MAIN)
    assert yaml.safe_load((run / "recipe.yaml").read_text())["seed"] == 0  # the loser wrote nothing
    assert prepare_run_dir(run, recipe(), resume=True, info=OTHER) is None  # other ranks do not lock
    lock.release()
    prepare_run_dir(run, recipe("seed=1"), resume=False, info=MAIN).release()
    assert yaml.safe_load((run / "recipe.yaml").read_text())["seed"] == 1


def test_a_killed_trainer_leaves_its_folder_usable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # holds the folder's lock the way FolderLock does, then is killed
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)", str(run / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError):
            prepare_run_dir(run, recipe(), resume=False, info=MAIN)
    finally:
        holder.kill()
        holder.wait()
    prepare_run_dir(run, recipe(), resume=False, info=MAIN).release()


def test_an_error_in_prepare_run_dir_releases_the_lock(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, recipe(), resume=False, info=MAIN).release()
    save(run, 1)
    with pytest.raises(ValueError, match="already holds a run"):
        prepare_run_dir(run, recipe(), resume=False, info=MAIN)
    prepare_run_dir(run, recipe(), resume=True, info=MAIN).release()  # not locked by the failed call


# ------------------------------------------------------------------------------------------ recipe.yaml
@pytest.mark.parametrize(("text", "problem"), [("", "is empty"), ("steps: [1\n", "cannot be read"),
                                                ("- 1\n", "not a recipe mapping"), ("stepz: 3\n", "unknown key")])
def test_an_unreadable_run_recipe_is_named_with_the_fix(tmp_path, text, problem):
    run = tmp_path / "run"
    prepare_run_dir(run, recipe(), resume=False, info=MAIN).release()
    (run / "recipe.yaml").write_text(text)
    with pytest.raises(ValueError, match="recipe.yaml") as raised:
        prepare_run_dir(run, recipe(), resume=True, info=MAIN)
    message = str(raised.value)
    assert problem in message and "delete it" in message and "\n" not in message


def test_resume_ignores_settings_that_do_not_change_results_and_refuses_the_others(tmp_path, caplog):
    run = tmp_path / "run"
    prepare_run_dir(run, recipe("data.num_workers=2"), resume=False, info=MAIN).release()
    save(run, 1)
    with caplog.at_level(logging.INFO):
        prepare_run_dir(run, recipe("data.num_workers=0", "log_every=3", "tensorboard=false"),
                        resume=True, info=MAIN).release()
    assert "data.num_workers: 2 -> 0" in caplog.text
    assert yaml.safe_load((run / "recipe.yaml").read_text())["data"]["num_workers"] == 0
    with pytest.raises(ValueError, match=r"recipe differs.*optim\.lr: 0\.0001 -> 0\.001") as raised:
        prepare_run_dir(run, recipe("optim.lr=1e-3", "data.num_workers=1"), resume=True, info=MAIN)
    assert "num_workers" not in str(raised.value)
    with pytest.raises(ValueError, match="steps"):  # the schedules are functions of the run's length
        prepare_run_dir(run, recipe("steps=7"), resume=True, info=MAIN)
    assert {"data.num_workers", "tensorboard", "log_every", "eval_every", "sample_every"} <= RESUME_IGNORED
    assert not {"steps", "seed", "precision", "data.val_videos"} & RESUME_IGNORED


def test_a_fresh_start_drops_the_metrics_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, recipe(), resume=False, info=MAIN).release()
    MetricsWriter(run, tensorboard=False).write(1, {"loss": 1.0})
    prepare_run_dir(run, recipe(), resume=False, info=MAIN).release()
    assert not (run / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------ checkpoints
def test_resume_point_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, caplog):
    for step in (2, 4, 6):
        save(tmp_path, step)
    (tmp_path / "checkpoints/step-00000006/state.pt").write_bytes(b"PK\x03\x04 cut")  # a copy cut short
    (tmp_path / "checkpoints/step-00000004/tokenizer.safetensors").write_bytes(b"\x01")
    with caplog.at_level(logging.WARNING):
        folder, weights, state = ckpt.resume_point(tmp_path)
    assert folder.name == "step-00000002" and state["step"] == 2
    assert torch.equal(weights["tokenizer"]["w"], torch.full((3,), 2.0))
    assert "step-00000006/state.pt" in caplog.text and "step-00000004/tokenizer.safetensors" in caplog.text
    # the run continues from step 2: its next checkpoint replaces the abandoned, damaged ones
    save(tmp_path, 3, keep=2)
    assert steps_on_disk(tmp_path) == [2, 3]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"


def test_resume_point_names_every_checkpoint_when_none_loads(tmp_path):
    assert ckpt.resume_point(tmp_path) is None
    for step in (1, 2):
        save(tmp_path, step)
    (tmp_path / "checkpoints/step-00000001/state.pt").write_bytes(b"")
    (tmp_path / "checkpoints/step-00000002/state.pt").unlink()
    with pytest.raises(ckpt.CheckpointError) as raised:
        ckpt.resume_point(tmp_path)
    message = str(raised.value)
    assert "step-00000001/state.pt" in message and "EOFError" in message
    assert "step-00000002 is not a complete checkpoint" in message
    with pytest.raises(ckpt.CheckpointError, match="step-00000001/state.pt"):
        ckpt.load_checkpoint(tmp_path / "checkpoints/step-00000001")


def test_keep_checkpoints_keeps_the_newest(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, keep=1)
    assert steps_on_disk(tmp_path) == [3]
    with pytest.raises(ValueError, match="keep_checkpoints >= 1"):
        save(tmp_path, 4, keep=0)
    assert steps_on_disk(tmp_path) == [3]


@pytest.mark.parametrize("target", ["torch.save", "save_file", "latest"])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target):
    save(tmp_path, 1)

    def fail(*args, **kwargs):
        if target == "torch.save":  # what torch reports when a write comes up short
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 320 vs 214")
        raise OSError(errno.ENOSPC, "No space left on device")

    if target == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", fail)
    elif target == "save_file":
        monkeypatch.setattr(ckpt, "save_file", fail)
    else:
        monkeypatch.setattr(ckpt, "write_text_atomic", fail)
    with pytest.raises(OSError, match="no space left.*step-00000002") as raised:
        save(tmp_path, 2)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000001"]
    assert (tmp_path / "checkpoints/latest").read_text().strip() == "step-00000001"
    assert ckpt.resume_point(tmp_path)[2]["step"] == 1


def test_a_save_failing_for_another_reason_is_not_called_a_full_disk(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise TypeError("cannot pickle 'generator' object")

    monkeypatch.setattr(ckpt.torch, "save", fail)
    with pytest.raises(TypeError, match="pickle"):
        save(tmp_path, 1)
    assert ckpt.checkpoint_folders(tmp_path) == []


def test_rng_restarts_from_derived_seeds_when_the_process_count_changes(tmp_path):
    torch.manual_seed(123)
    save_run_checkpoint(tmp_path, 7, {}, {}, MAIN, keep=1)
    expected = torch.rand(4)
    _, _, state = ckpt.resume_point(tmp_path)
    torch.manual_seed(0)
    restore_rng(state, MAIN)  # same process count: the saved stream continues
    assert torch.equal(torch.rand(4), expected)
    restore_rng(state, OTHER)  # saved with 1 process, resumed with 2: rank 1's own stream
    drawn = torch.rand(4)
    torch.manual_seed(derive_seed(7, 1))
    assert torch.equal(drawn, torch.rand(4))


# ------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize(("key", "value"), [("keep_checkpoints", -1), ("eval_every", 0), ("sample_every", 0),
                                            ("log_every", 0), ("checkpoint_every", 0), ("steps", 0),
                                            ("batch_size", 0), ("data.num_workers", -1)])
def test_recipe_fields_out_of_range_are_named(key, value):
    with pytest.raises(ValueError, match=rf"^{key} must be at least"):
        recipe(f"{key}={value}")
    with pytest.raises(ValueError, match=rf"^{key} must be at least"):
        load_recipe(None, ["tokens.tokenizer=t", f"{key}={value}"], GeneratorTrainConfig)


def test_recipe_fractions_and_restart_cadence_are_checked():
    with pytest.raises(ValueError, match=r"^prior\.ss_max_ratio must be between 0 and 1, got 1\.5"):
        recipe("prior.ss_max_ratio=1.5")
    with pytest.raises(ValueError, match=r"^codebook\.restart_every must be at least 1"):
        recipe("codebook.restart_every=0")


def test_packaged_recipes_are_found_by_name(tmp_path, monkeypatch):
    assert available_recipes() == ["ar-tiny-cpu", "k600-ar-fp", "larp-l-long", "tiny-cpu", "ucf-ar"]
    packaged = resolve_recipe("tiny-cpu")
    assert resolve_recipe("tiny-cpu.yaml") == packaged and packaged.parent.name == "recipes"
    assert load_recipe(packaged).model.num_tokens == load_recipe(resolve_recipe("tiny-cpu.yaml")).model.num_tokens
    monkeypatch.chdir(tmp_path)
    Path("tiny-cpu").write_text("steps: 3\n")  # a file that exists wins over the packaged name
    assert resolve_recipe("tiny-cpu") == Path("tiny-cpu") and load_recipe(resolve_recipe("tiny-cpu")).steps == 3
    with pytest.raises(FileNotFoundError, match="'tiny-gpu'.*packaged recipes: ar-tiny-cpu, k600-ar-fp"):
        resolve_recipe("tiny-gpu")
    with pytest.raises(FileNotFoundError, match="no recipe file"):
        resolve_recipe("sub/tiny-cpu.yaml")  # a path, not a name: never looked up in the package
