"""The shared training loop: cadences, checkpoints of every Stateful part, exact resume, EMA, metric reduction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from larp.models.tokenizer import LARPTokenizer
from larp.training import distributed as dist
from larp.training.loop import EMA, Cadence, Trainer, micro_batches, reduce_metrics
from larp.training.tokenizer_trainer import train_tokenizer
from tests.test_training import tiny_recipe

CPU = dist.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
CADENCE = Cadence(steps=7, log_every=2, eval_every=3, sample_every=4, checkpoint_every=3, keep_checkpoints=10)


class Offsets:
    """A Stateful data stream: the targets' offset grows with every batch."""

    def __init__(self):
        self.position = 0

    def __next__(self) -> float:
        self.position += 1
        return 0.1 * self.position

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


class Regression:
    """A toy task: a linear model fits x.sum() + offset; inputs drawn from the global RNG (restored on resume)."""

    name, unit = "toy", "rows"
    progress_keys = ("loss",)
    items_per_step = 4

    def __init__(self, run_dir: Path):
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.stream = Offsets()
        self.export_dir = run_dir / "model"
        self.events: list[tuple[str, int]] = []

    def train_step(self, step: int):
        x = torch.randn(4, 3)
        loss = F.mse_loss(self.model(x), x.sum(1, keepdim=True) + next(self.stream))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "lr": 0.1}

    def evaluate(self, step: int) -> dict[str, float]:
        self.events.append(("eval", step))
        torch.randn(5)  # validation that draws random numbers (as a DataLoader does)
        return {"val_bias": self.model.bias.item()}

    def write_samples(self, step: int) -> None:
        self.events.append(("samples", step))
        torch.rand(3)

    def export(self) -> None:
        self.events.append(("export", -1))

    def weights(self):
        return {"model": self.model}

    def training_state(self):
        return {"optimizer": self.optimizer, "stream": self.stream}


def _run(run_dir: Path, *, resume: bool = False, stop_after: int | None = None,
         cadence: Cadence = CADENCE) -> tuple[Regression, Trainer]:
    run_dir.mkdir(exist_ok=True)
    task = Regression(run_dir)
    trainer = Trainer(task, cadence, CPU, run_dir=run_dir, progress=False)
    trainer.start(resume=resume, seed=3)
    trainer.fit(stop_after)
    trainer.export()
    return task, trainer


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cadences_logging_and_checkpoints(tmp_path):
    task, trainer = _run(tmp_path / "run")
    assert trainer.step == 7
    # logged: every 2nd step, every validation (3, 6) and the last step
    lines = _lines(tmp_path / "run")
    assert [line["step"] for line in lines] == [2, 3, 4, 6, 7]
    assert [line["step"] for line in lines if "val_bias" in line] == [3, 6, 7]
    assert all(line["rows_per_s"] > 0 and line["lr"] == 0.1 for line in lines)
    assert task.events == [("eval", 3), ("samples", 4), ("eval", 6), ("eval", 7), ("samples", 7), ("export", -1)]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == [
        "step-00000003", "step-00000006", "step-00000007"]
    # every part under its own name: the model as safetensors, the rest in state.pt
    last = tmp_path / "run" / "checkpoints" / "step-00000007"
    assert torch.equal(load_file(last / "model.safetensors")["weight"], task.model.weight.detach())
    state = torch.load(last / "state.pt", weights_only=True)
    assert state["stream"] == {"position": 7} and state["step"] == 7 and "optimizer" in state and len(state["rng"]) == 1


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path):
    straight, _ = _run(tmp_path / "straight")
    cut, trainer = _run(tmp_path / "cut", stop_after=4)
    assert trainer.step == 4 and ("export", -1) not in cut.events  # a stopped run does not export
    resumed, trainer = _run(tmp_path / "cut", resume=True)
    assert trainer.step == 7 and resumed.stream.position == 7
    assert torch.equal(resumed.model.weight, straight.model.weight) and torch.equal(resumed.model.bias, straight.model.bias)
    drop = lambda lines: [{k: v for k, v in line.items() if k != "rows_per_s"} for line in lines]
    assert drop(_lines(tmp_path / "cut")) == drop(_lines(tmp_path / "straight"))


def test_validation_and_samples_do_not_move_the_training_random_stream(tmp_path):
    often, _ = _run(tmp_path / "often", cadence=Cadence(steps=7, log_every=1, eval_every=1, sample_every=1))
    rarely, _ = _run(tmp_path / "rarely", cadence=Cadence(steps=7, log_every=7, eval_every=7, sample_every=7))
    assert len(often.events) > len(rarely.events)
    assert torch.equal(often.model.weight, rarely.model.weight) and torch.equal(often.model.bias, rarely.model.bias)


def test_a_checkpoint_without_a_part_is_a_clear_error(tmp_path):
    _run(tmp_path / "run", stop_after=3)
    task = Regression(tmp_path / "run")
    task.training_state = lambda: {"optimizer": task.optimizer, "stream": task.stream, "scheduler": task.stream}
    with pytest.raises(ValueError, match="no 'scheduler'"):
        Trainer(task, CADENCE, CPU, run_dir=tmp_path / "run").start(resume=True, seed=3)


def test_without_a_run_folder_nothing_is_written_and_the_global_rng_is_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = Regression(tmp_path)
    task.train_step = lambda step: {"loss": torch.tensor(float(step))}  # draws nothing
    rng = torch.get_rng_state()
    Trainer(task, CADENCE, CPU, progress=False).fit()
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(tmp_path.iterdir()) == [] and task.events == [("eval", 3), ("eval", 6), ("eval", 7)]


def test_reduce_metrics_and_micro_batches_in_one_process():
    metrics = {"loss": torch.tensor(0.25), "psnr": torch.tensor([31.5]), "lr": 1e-3, "skipped_videos": 2.0}
    assert reduce_metrics(metrics, CPU) == {"loss": 0.25, "psnr": 31.5, "lr": 1e-3, "skipped_videos": 2.0}
    model = nn.Linear(2, 2)
    assert [index for index, _ in micro_batches(model, 3)] == [0, 1, 2]
    for _, context in micro_batches(model, 2):
        with context:  # no DDP: plain contexts
            model(torch.ones(1, 2)).sum().backward()
    torch.testing.assert_close(model.bias.grad, torch.full((2,), 2.0))  # both micro-batches accumulated


def test_ema_update_state_and_copy():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.state_dict()["weight"], torch.full((1, 2), 1.5))  # 0.75 * 1 + 0.25 * 3
    other = EMA(nn.Linear(2, 1), decay=0.75)
    other.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    target = nn.Linear(2, 1)
    other.copy_to(target)
    assert torch.equal(target.weight, torch.full((1, 2), 1.5))
    with pytest.raises(ValueError, match="EMA weights"):
        other.load_state_dict({"weight": torch.zeros(1, 2)})


def test_tokenizer_exports_its_ema_weights(tmp_path):
    recipe = tiny_recipe("steps=2", "optim.ema_decay=0.5", "eval_every=100", "checkpoint_every=100")
    folder = train_tokenizer(recipe, tmp_path / "run", progress=False)
    exported = LARPTokenizer.from_pretrained(folder).state_dict()
    last = tmp_path / "run" / "checkpoints" / "step-00000002"
    ema, raw = load_file(last / "ema.safetensors"), load_file(last / "tokenizer.safetensors")
    assert ema.keys() and all(torch.equal(exported[k], v) for k, v in ema.items())
    assert not all(torch.equal(ema[k], raw[k]) for k in ema)  # the EMA lags the trained weights
