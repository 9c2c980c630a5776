"""The real ``train_step`` of both trainers under 2-process gloo DDP equals one process on the global batch.

Each rank is a plain subprocess (``python -c``, env:// rendezvous) that joins the group through
``larp.training.distributed``, runs its task's ``train_step`` on its shard of fixed batches, reduces the
metrics like the loop does, leaves the group with a barrier and ``destroy_process_group``, and saves what
it saw. The test process computes the one-process reference on the whole batches and compares.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from larp.models.generator import LARPGenerator
from larp.training import distributed as dist
from larp.training.generator_trainer import GeneratorTask, make_optimizer
from larp.training.loop import reduce_metrics
from larp.training.recipe import GeneratorTrainConfig, apply_overrides, recipe_from_dict
from larp.training.tokenizer_trainer import TokenizerTask
from tests.conftest import REPO
from tests.test_training import TINY

WORLD = 2
# Same codes and no dropout in every process: SVQ, dropout and scheduled sampling draw differently per process.
TOKENIZER = ("prior_model.dropout=0.0", "model.quantizer.stochastic=false", "prior.scheduled_sampling=false",
             "batch_size=2", "optim.accumulation=2", "optim.grad_clip=1000", "steps=4",
             # step 1 runs unquantized (no codebook care); step 2 initialises the codebook from data, then
             # restarts dead codes: both draw latents on each rank, and rank 0's draws must reach every rank
             "codebook.continuous_warmup=1", "codebook.init_from_data=true", "codebook.dead_code_restart=true",
             "codebook.restart_every=2", "codebook.dead_threshold=0.9")
GENERATOR = {
    "model_preset": "ar-tiny",
    "model": {"dim": 32, "n_layer": 1, "n_head": 2, "vocab_size": 64, "max_seq_len": 16, "num_classes": 4,
              "class_dropout_prob": 0.0, "token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0},
    "tokens": {"tokenizer": "unused: the stream holds token rows"},
    "optim": {"lr": 3e-3, "accumulation": 2, "grad_clip": 1000.0},
    "steps": 4,
    "batch_size": 2,
}
# per-process code histograms: their usage and perplexity are means over processes, not of the global batch
PER_PROCESS = {"batch_usage", "perplexity"}


def _tokenizer_recipe():
    return recipe_from_dict(apply_overrides(TINY, list(TOKENIZER)))


def _generator_recipe() -> GeneratorTrainConfig:
    return recipe_from_dict(GENERATOR, GeneratorTrainConfig)


def _global_batches() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two steps x two micro-batches of 4 clips, and of 4 token rows: the global batch of both ranks."""
    g = torch.Generator().manual_seed(5)
    videos = [torch.rand(4, 3, 16, 32, 32, generator=g) for _ in range(4)]
    rows = [{"tokens": torch.randint(0, 64, (4, 16), generator=g), "label": torch.randint(0, 4, (4,), generator=g)}
            for _ in range(4)]
    return videos, rows


def _shard(batch, rank: int, world: int):
    if isinstance(batch, dict):
        return {k: v.chunk(world)[rank] for k, v in batch.items()}
    return {"video": batch.chunk(world)[rank]}


class _Stream:
    """Fixed batches; records how many gradient all-reduces had run when each batch was taken."""

    def __init__(self, batches: list, allreduces: list[int]):
        self.batches, self.allreduces, self.seen = iter(batches), allreduces, []

    def __next__(self):
        self.seen.append(len(self.allreduces))
        return next(self.batches)


def _count_allreduces(model: torch.nn.Module, calls: list[int]) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(state, bucket):
        calls.append(1)
        return default_hooks.allreduce_hook(state, bucket)

    model.register_comm_hook(None, hook)


def _run(info: dist.DistInfo, rank: int, world: int) -> dict:
    """Both trainers' first steps on this rank's shard; what the test compares."""
    videos, rows = _global_batches()
    tokenizer_task = TokenizerTask(_tokenizer_recipe(), info)
    calls: list[int] = []
    if info.enabled:
        _count_allreduces(tokenizer_task.model, calls)
    tokenizer_task.stream = _Stream([_shard(v, rank, world) for v in videos], calls)
    first = reduce_metrics(tokenizer_task.train_step(1), info)
    after_first = {k: v.clone() for k, v in tokenizer_task.core.state_dict().items()}
    second = reduce_metrics(tokenizer_task.train_step(2), info)

    recipe = _generator_recipe()
    torch.manual_seed(recipe.seed)
    generator = LARPGenerator(recipe.model).train()
    model = dist.wrap(generator, info)
    generator_calls: list[int] = []
    if info.enabled:
        _count_allreduces(model, generator_calls)
    generator_task = GeneratorTask(recipe, info, model=model, optimizer=make_optimizer(generator, recipe, info.device),
                                   scaler=torch.amp.GradScaler("cpu", enabled=False),
                                   stream=_Stream([_shard(r, rank, world) for r in rows], generator_calls))
    generator_metrics = reduce_metrics(generator_task.train_step(1), info)
    return {
        "tokenizer_step1": after_first, "tokenizer_metrics1": first, "tokenizer_metrics2": second,
        "tokenizer_step2": tokenizer_task.core.state_dict(),
        "adam_rows": tokenizer_task.g_opt.state[tokenizer_task.tokenizer.bottleneck.regularizer.embedding.weight]["exp_avg"],
        "allreduces_seen": tokenizer_task.stream.seen, "allreduces": len(calls),
        "generator": generator.state_dict(), "generator_metrics": generator_metrics,
        "generator_allreduces_seen": generator_task.stream.seen, "generator_allreduces": len(generator_calls),
    }


def worker(out_dir: str) -> None:
    """One rank (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment)."""
    torch.set_num_threads(1)
    info = dist.init_distributed("cpu")
    try:
        result = _run(info, info.rank, info.world_size)
        torch.save(result, Path(out_dir) / f"rank{info.rank}.pt")
        dist.barrier(info)  # nobody leaves while another rank still communicates
    finally:
        dist.cleanup(info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_train_steps_equal_one_process_on_the_global_batch(tmp_path):
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        code = f"from tests.test_train_step_ddp import worker; worker({str(tmp_path)!r})"
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {rank} failed:\n{outputs[rank][-3000:]}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = _run(dist.DistInfo(0, 0, 1, torch.device("cpu")), 0, 1)

    for r in ranks:
        # accumulation 2: no gradient all-reduce after the first micro-batch (no_sync), some after the second
        assert r["allreduces_seen"][1] == 0 and r["allreduces"] > 0
        assert r["generator_allreduces_seen"][1] == 0 and r["generator_allreduces"] > 0
        for name, value in single["tokenizer_step1"].items():
            if name.endswith("key.bias"):
                # a key bias shifts all logits of a query alike: its gradient is 0 up to rounding, and Adam's
                # first step (lr * g / |g|) turns the rounding into +-lr
                continue
            torch.testing.assert_close(r["tokenizer_step1"][name], value, atol=1e-6, rtol=1e-5, msg=name)
        for name, value in single["generator"].items():
            torch.testing.assert_close(r["generator"][name], value, atol=1e-6, rtol=1e-5, msg=name)
        metrics = r["tokenizer_metrics1"]
        assert {"loss", "l1", "vq", "prior_ce", "psnr", "grad_norm", "prior_top1"} <= metrics.keys()
        for name in metrics.keys() - PER_PROCESS:
            assert abs(metrics[name] - single["tokenizer_metrics1"][name]) <= 1e-5 * max(1.0, abs(metrics[name])), name
        for name, value in r["generator_metrics"].items():
            assert abs(value - single["generator_metrics"][name]) <= 1e-5 * max(1.0, abs(value)), name
    # step 2 drew new codes from each rank's own latents (data init, then a restart): all ranks hold rank 0's
    assert ranks[0]["tokenizer_metrics2"]["codes_restarted"] > 0
    for name, value in ranks[0]["tokenizer_step2"].items():
        assert torch.equal(ranks[1]["tokenizer_step2"][name], value), name
    assert torch.equal(ranks[0]["adam_rows"], ranks[1]["adam_rows"])
