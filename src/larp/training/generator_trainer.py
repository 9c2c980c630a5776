"""Training LARP AR generators on the tokens of a frozen tokenizer (LARP.md D.2 class-conditional, D.3 frame
prediction).

One step: take a batch of token rows (from the token cache) or of clips (encoded on the fly by the frozen
tokenizer in deterministic mode, the official way); teacher-forced logits of the generator under autocast;
mean token cross-entropy; AdamW with weight decay on ``nn.Linear`` weights only; warmup + cosine. Class
dropout for classifier-free guidance happens inside the model in training mode. All state is checkpointed,
so a killed run resumes where it stopped; under torchrun the generator is DDP-wrapped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from larp.data.video_io import make_grid, write_video
from larp.models.generator import LARPGenerator, check_matches_tokenizer
from larp.models.tokenizer import LARPTokenizer
from larp.training import checkpoint as ckpt
from larp.training import distributed as dist
from larp.training.data import TrainStream, build_datasets
from larp.training.optim import lr_multiplier, set_lr
from larp.training.recipe import GeneratorTrainConfig
from larp.training.run_dir import MetricsWriter, prepare_run_dir, restore_rng, save_run_checkpoint, truncate_metrics
from larp.training.token_cache import TokenRows, build_token_cache, encode_clips, tokenizer_precision

logger = logging.getLogger(__name__)

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class GeneratorTrainState:
    """Everything a generator run needs besides its recipe and the frozen tokenizer; checkpointed whole."""

    model: nn.Module  # LARPGenerator, DDP-wrapped when distributed (and compiled when asked)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    stream: TrainStream
    step: int = 0

    @property
    def core(self) -> LARPGenerator:
        return dist.unwrap(self.model)


# ------------------------------------------------------------------------------------------ building
def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as the released trainer: decay on the weights of ``nn.Linear`` modules only; none on
    embeddings, norms, the position table or the class table (LARP.md D.2)."""
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay = [], []
    for _, param in sorted(model.named_parameters()):
        if param.requires_grad:
            (decay if id(param) in decay_ids else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def load_frozen_tokenizer(recipe: GeneratorTrainConfig, device: torch.device) -> LARPTokenizer:
    """The tokenizer whose tokens the generator models, frozen, and checked against the generator config."""
    tokenizer = LARPTokenizer.from_pretrained(recipe.tokens.tokenizer, device=device)
    tokenizer.eval().requires_grad_(False)
    check_matches_tokenizer(recipe.model, tokenizer.config)
    return tokenizer


def _check_data(recipe: GeneratorTrainConfig) -> None:
    data = recipe.data
    if recipe.model.frame_prediction or data.manifest is not None:
        return
    if data.synthetic_classes > recipe.model.num_classes:
        raise ValueError(f"the synthetic data has {data.synthetic_classes} classes but model.num_classes is "
                         f"{recipe.model.num_classes}")
    if data.random_flip and data.synthetic_classes > 4 and data.synthetic_classes != 8:
        # classes 4-5 (down-right, up-left) have no mirror class among the classes in use
        raise ValueError(f"data.random_flip with {data.synthetic_classes} synthetic classes would make clips of "
                         f"no class (a flipped down-right clip moves down-left): set data.random_flip false")


def build_state(
    recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer, info: dist.DistInfo, *, progress: bool
) -> tuple[GeneratorTrainState, dict[str, torch.Tensor]]:
    """Generator, optimizer and token stream for a fresh run, and the validation tokens."""
    _check_data(recipe)
    if recipe.tokens.cache is not None:
        cache = Path(recipe.tokens.cache)
        if info.is_main:  # one process builds (or checks) the cache, the others wait and read it
            build_token_cache(recipe, tokenizer, cache, progress=progress)
        dist.barrier(info)
        train, flip = TokenRows(cache / "train"), False
        val = TokenRows(cache / "val").all()
    else:
        config = tokenizer.config
        train, val_clips, flip = build_datasets(recipe.data, frames=config.frame_num, size=config.input_size)
        val = _encode_dataset(val_clips, tokenizer, recipe)

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    generator = LARPGenerator(recipe.model).to(info.device).train()
    opt = recipe.optim
    optimizer = torch.optim.AdamW(weight_decay_groups(generator, opt.weight_decay), lr=opt.lr, betas=opt.betas,
                                  fused=info.device.type == "cuda")
    model = dist.wrap(generator, info)
    if recipe.compile:
        model = torch.compile(model)
    stream = TrainStream(train, batch_size=recipe.batch_size, seed=recipe.seed, rank=info.rank,
                         world_size=info.world_size, num_workers=recipe.data.num_workers, flip=flip)
    scaler = torch.amp.GradScaler(info.device.type, enabled=_precision(recipe, info.device) == "fp16")
    return GeneratorTrainState(model=model, optimizer=optimizer, scaler=scaler, stream=stream), val


@torch.no_grad()
def _encode_dataset(dataset, tokenizer: LARPTokenizer, recipe: GeneratorTrainConfig) -> dict[str, torch.Tensor]:
    """Validation tokens of a (small) clip dataset, in memory."""
    cond_frames = recipe.condition_frames if recipe.model.frame_prediction else None
    precision = tokenizer_precision(recipe.tokens.precision, tokenizer.device)
    tokens, conds, labels = [], [], []
    batch_size = recipe.tokens.encode_batch_size
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        items = [item for item in items if item is not None]
        if not items:
            continue
        ids, cond = encode_clips(tokenizer, torch.stack([i["video"] for i in items]), precision=precision,
                                 condition_frames=cond_frames)
        tokens.append(ids.cpu())
        labels.append(torch.tensor([i["label"] for i in items]))
        if cond is not None:
            conds.append(cond.cpu())
    if not tokens:
        raise ValueError("no validation clip could be decoded")
    out = {"tokens": torch.cat(tokens), "label": torch.cat(labels)}
    if conds:
        out["cond"] = torch.cat(conds)
    return out


# ------------------------------------------------------------------------------------------ one step
def _precision(recipe: GeneratorTrainConfig, device: torch.device) -> str:
    return tokenizer_precision(recipe.precision, device)  # the same rule: auto = bf16 on CUDA, fp32 elsewhere


def _autocast(recipe: GeneratorTrainConfig, device: torch.device):
    precision = _precision(recipe, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP[precision])


def batch_tokens(
    batch: dict[str, Any], tokenizer: LARPTokenizer, recipe: GeneratorTrainConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (b, N), cond) of a batch of cached rows or of clips; cond is class ids (b,) or condition
    tokens (b, N)."""
    frame_prediction = recipe.model.frame_prediction
    if "tokens" in batch:
        tokens = batch["tokens"].to(device, non_blocking=True)
        cond = batch.get("cond")
    else:
        tokens, cond = encode_clips(tokenizer, batch["video"], precision=tokenizer_precision(recipe.tokens.precision, device),
                                    condition_frames=recipe.condition_frames if frame_prediction else None)
    if frame_prediction:
        return tokens, cond.to(device, non_blocking=True)
    labels = batch["label"]
    if bool((labels < 0).any()):
        raise ValueError("a class-conditional generator needs a class label for every clip: the data has clips "
                         "without one (label -1); use a manifest with labels or folders per class")
    return tokens, labels.to(device, non_blocking=True)


def token_metrics(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cross-entropy and top-1/top-5 accuracy of logits (b, N, V) against tokens (b, N)."""
    logits = logits.float()
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    hits = top5 == tokens[..., None]
    return {"loss": loss, "top1": hits[..., 0].float().mean(), "top5": hits.any(-1).float().mean()}


def train_step(state: GeneratorTrainState, recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer,
               info: dist.DistInfo) -> dict[str, float]:
    state.step += 1
    mult = lr_multiplier(state.step, recipe.optim.warmup_steps, recipe.steps, recipe.optim.min_lr_mult)
    set_lr(state.optimizer, recipe.optim.lr, mult)
    state.optimizer.zero_grad(set_to_none=True)
    accumulation = recipe.optim.accumulation
    totals: dict[str, torch.Tensor] = {}
    for micro in range(accumulation):
        tokens, cond = batch_tokens(next(state.stream), tokenizer, recipe, info.device)
        # DDP averages gradients on the last micro-batch only
        ddp = getattr(state.model, "_orig_mod", state.model)
        quiet = micro < accumulation - 1 and hasattr(ddp, "no_sync")
        with (ddp.no_sync() if quiet else contextlib.nullcontext()), _autocast(recipe, info.device):
            logits = state.model(tokens, cond)
        terms = token_metrics(logits, tokens)
        state.scaler.scale(terms["loss"] / accumulation).backward()
        for name, value in terms.items():
            totals[name] = totals.get(name, 0) + value.detach() / accumulation
    if recipe.optim.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(state.model.parameters(), recipe.optim.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    names = sorted(totals)
    reduced = dist.all_reduce_mean(torch.stack([totals[k].float() for k in names]), info)
    metrics = dict(zip(names, reduced.tolist()))  # one host sync per step
    metrics["lr"] = recipe.optim.lr * mult
    return metrics


# ------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def evaluate(state: GeneratorTrainState, recipe: GeneratorTrainConfig, val: dict[str, torch.Tensor],
             device: torch.device) -> dict[str, float]:
    """Teacher-forced loss and top-1/top-5 accuracy on the validation tokens (class dropout off)."""
    model = state.core
    was_training = model.training
    model.eval()
    sums, count = {"loss": 0.0, "top1": 0.0, "top5": 0.0}, 0
    for first in range(0, val["tokens"].shape[0], recipe.batch_size):
        tokens = val["tokens"][first : first + recipe.batch_size].to(device)
        cond = (val["cond"] if recipe.model.frame_prediction else val["label"])[first : first + recipe.batch_size].to(device)
        with _autocast(recipe, device):
            terms = token_metrics(model(tokens, cond), tokens)
        for name in sums:
            sums[name] += terms[name].item() * tokens.shape[0]
        count += tokens.shape[0]
    model.train(was_training)
    return {f"val_{name}": value / count for name, value in sums.items()}


@torch.no_grad()
def write_samples(state: GeneratorTrainState, recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer,
                  val: dict[str, torch.Tensor], run_dir: Path, device: torch.device) -> Path:
    """Decoded samples as a gif/mp4 grid. Class-conditional: one row per class. Frame prediction: the
    tokenizer's reconstruction of validation clips (top row) and the predictions from their first frames."""
    model, s = state.core, recipe.sampling
    was_training = model.training
    model.eval()
    rng = torch.Generator(device).manual_seed(recipe.seed)  # the same draws at every step: comparable grids
    options = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=rng)
    with _autocast(recipe, device):
        if recipe.model.frame_prediction:
            count = min(s.classes * s.per_class, val["tokens"].shape[0])
            ids = model.generate(val["cond"][:count].to(device), **options)
            ids, per_row = torch.cat([val["tokens"][:count].to(device), ids]), count
        else:
            classes = min(recipe.model.num_classes, s.classes)
            cond = torch.arange(classes, device=device).repeat_interleave(s.per_class)
            cfg = s.cfg_scale if recipe.model.has_null_class else 1.0
            ids, per_row = model.generate(cond, cfg_scale=cfg, **options), s.per_class
        videos = tokenizer.decode(ids, clamp=True).float().cpu()
    model.train(was_training)
    folder = run_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state.step:08d}.gif"
    grid = make_grid(videos, nrow=per_row)
    write_video(path, grid, fps=8)
    write_video(path.with_suffix(".mp4"), grid, fps=8)
    np.save(path.with_suffix(".npy"), ids.cpu().numpy())
    return path


# ------------------------------------------------------------------------------------------ checkpoints
def save_state(run_dir: Path, state: GeneratorTrainState, recipe: GeneratorTrainConfig, info: dist.DistInfo) -> None:
    extra = {"optimizer": state.optimizer.state_dict(), "scaler": state.scaler.state_dict(),
             "stream": state.stream.state_dict()}
    weights = {"generator": state.core.state_dict()} if info.is_main else {}
    save_run_checkpoint(run_dir, state.step, weights, extra, info, recipe.keep_checkpoints)


def restore_state(folder: Path, state: GeneratorTrainState, info: dist.DistInfo) -> None:
    weights, extra = ckpt.load_checkpoint(folder)
    state.core.load_state_dict(weights["generator"])
    state.optimizer.load_state_dict(extra["optimizer"])
    state.scaler.load_state_dict(extra["scaler"])
    state.stream.load_state_dict(extra["stream"])
    state.step = int(extra["step"])
    restore_rng(extra, info)


# ------------------------------------------------------------------------------------------ the run
def train_generator(
    recipe: GeneratorTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train (or resume) a generator run and export the final model with ``save_pretrained``.

    Args:
        run_dir: the run's folder: recipe.yaml, metrics.jsonl, checkpoints/, samples/, generator/.
        resume: continue from the newest checkpoint in ``run_dir``.
        stop_after: stop (with a checkpoint) after this global step, as if killed; for tests.

    Returns:
        The folder of the exported generator (``run_dir/generator``), in the official layout.
    """
    run_dir = Path(run_dir)
    info = dist.init_distributed(device)
    try:
        prepare_run_dir(run_dir, recipe, resume, info)
        dist.barrier(info)
        tokenizer = load_frozen_tokenizer(recipe, info.device)
        state, val = build_state(recipe, tokenizer, info, progress=progress and info.is_main)
        latest = ckpt.latest_checkpoint(run_dir) if resume else None
        if latest is not None:
            restore_state(latest, state, info)
            if info.is_main:
                truncate_metrics(run_dir / "metrics.jsonl", state.step)
            logger.info("resumed %s at step %d", run_dir, state.step)
        else:
            torch.manual_seed(recipe.seed + info.rank)  # per-rank streams of randomness from here on
        if info.is_main:
            logger.info("generator %s parameters; %d steps of %d sequences x %d process(es) on %s, %s; tokens %s",
                        f"{state.core.num_parameters():,}", recipe.steps, recipe.batch_size * recipe.optim.accumulation,
                        info.world_size, info.device, _precision(recipe, info.device),
                        f"from the cache {recipe.tokens.cache}" if recipe.tokens.cache else "encoded on the fly")
        _loop(state, recipe, tokenizer, val, run_dir, info, progress=progress, stop_after=stop_after)
        folder = run_dir / "generator"
        if state.step >= recipe.steps and info.is_main:
            state.core.save_pretrained(folder, official_format=True)
            logger.info("exported the generator to %s", folder)
        dist.barrier(info)
        return folder
    finally:
        dist.cleanup(info)


def _loop(state: GeneratorTrainState, recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer, val: dict,
          run_dir: Path, info: dist.DistInfo, *, progress: bool, stop_after: int | None) -> None:
    writer = MetricsWriter(run_dir, recipe.tensorboard) if info.is_main else None
    bar = tqdm(total=recipe.steps, initial=state.step, desc="train-generator", unit="step",
               disable=not (progress and info.is_main), dynamic_ncols=True)
    sequences_per_step = recipe.batch_size * recipe.optim.accumulation * info.world_size
    started, first_step = time.perf_counter(), state.step
    while state.step < recipe.steps:
        metrics = train_step(state, recipe, tokenizer, info)
        bar.update(1)
        metrics["sequences_per_s"] = sequences_per_step * (state.step - first_step) / max(time.perf_counter() - started, 1e-9)
        last = state.step == recipe.steps
        if info.is_main and (state.step % recipe.eval_every == 0 or last):
            metrics.update(evaluate(state, recipe, val, info.device))
        if info.is_main and (state.step % recipe.sample_every == 0 or last):
            write_samples(state, recipe, tokenizer, val, run_dir, info.device)
        if info.is_main and (state.step % recipe.log_every == 0 or last or "val_loss" in metrics):
            writer.write(state.step, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{metrics['top1']:.2f}",
                            seq_s=f"{metrics['sequences_per_s']:.0f}")
        done = last or (stop_after is not None and state.step >= stop_after)
        if state.step % recipe.checkpoint_every == 0 or done:
            save_state(run_dir, state, recipe, info)
            dist.barrier(info)
        if done:
            break
    bar.close()
    if writer is not None:
        writer.close()
