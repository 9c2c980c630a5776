"""Training LARP AR generators on the tokens of a frozen tokenizer (LARP.md D.2 class-conditional, D.3 frame
prediction).

One step: take a batch of token rows (from a token dataset or the token cache, :mod:`larp.training.token_sources`)
or of clips (encoded on the fly by the frozen
tokenizer in deterministic mode, the official way); teacher-forced logits of the generator under autocast;
mean token cross-entropy; AdamW with weight decay on ``nn.Linear`` weights only; warmup + cosine. Class
dropout for classifier-free guidance happens inside the model in training mode. :class:`GeneratorTask`
supplies these functions to the shared loop (:mod:`larp.training.loop`); under torchrun the generator is
DDP-wrapped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from larp.data.video_io import make_grid, write_video
from larp.models.generator import IGNORE, LARPGenerator, check_matches_tokenizer
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast, needs_grad_scaler, resolve_precision
from larp.training import distributed as dist
from larp.training.data import TrainStream, build_datasets
from larp.training.loop import Cadence, Metrics, Stateful, Trainer, micro_batches, optimizer_step
from larp.training.optim import lr_multiplier, set_lr
from larp.training.recipe import GeneratorTrainConfig
from larp.training.run_dir import prepare_run_dir
from larp.training.token_cache import encode_clips
from larp.training.token_sources import build_token_cache, load_token_rows

logger = logging.getLogger(__name__)


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
    if recipe.model.frame_prediction or data.manifest is not None or recipe.tokens.dataset is not None:
        return
    if data.synthetic_classes > recipe.model.num_classes:
        raise ValueError(f"the synthetic data has {data.synthetic_classes} classes but model.num_classes is "
                         f"{recipe.model.num_classes}")
    if data.random_flip and data.synthetic_classes > 4 and data.synthetic_classes != 8:
        # classes 4-5 (down-right, up-left) have no mirror class among the classes in use
        raise ValueError(f"data.random_flip with {data.synthetic_classes} synthetic classes would make clips of "
                         f"no class (a flipped down-right clip moves down-left): set data.random_flip false")


def make_optimizer(generator: LARPGenerator, recipe: GeneratorTrainConfig, device: torch.device) -> torch.optim.AdamW:
    opt = recipe.optim
    return torch.optim.AdamW(weight_decay_groups(generator, opt.weight_decay), lr=opt.lr, betas=opt.betas,
                             fused=device.type == "cuda")


def build_generator_task(
    recipe: GeneratorTrainConfig, tokenizer: LARPTokenizer, info: dist.DistInfo, run_dir: Path | None = None,
    *, progress: bool = False,
) -> GeneratorTask:
    """Generator, optimizer, token stream and validation tokens of a fresh run (weights random, step 0)."""
    _check_data(recipe)
    frame_prediction = recipe.model.frame_prediction
    if recipe.tokens.dataset is None and recipe.tokens.cache is not None:
        if info.is_main:  # one process builds (or checks) the cache, the others wait and read it
            build_token_cache(tokenizer, recipe.tokens.cache, data=recipe.data, tokens=recipe.tokens,
                              condition_frames=recipe.condition_frames if frame_prediction else None, progress=progress)
        dist.barrier(info)
    rows = load_token_rows(recipe, tokenizer)
    if rows is not None:  # token rows from disk: flips, if any, are rows of their own
        train, val, source = rows
        flip = False
    else:
        config = tokenizer.config
        train, val_clips, flip = build_datasets(recipe.data, frames=config.frame_num, size=config.input_size)
        val = _encode_dataset(val_clips, tokenizer, recipe)
        source = "encoded on the fly"

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    generator = LARPGenerator(recipe.model).to(info.device).train()
    optimizer = make_optimizer(generator, recipe, info.device)
    model = dist.wrap(generator, info)
    if recipe.compile:
        model = torch.compile(model)
    stream = TrainStream(train, batch_size=recipe.batch_size, seed=recipe.seed, rank=info.rank,
                         world_size=info.world_size, num_workers=recipe.data.num_workers, flip=flip)
    scaler = torch.amp.GradScaler(info.device.type, enabled=needs_grad_scaler(recipe.precision, info.device))
    task = GeneratorTask(recipe, info, model=model, optimizer=optimizer, scaler=scaler, stream=stream,
                         tokenizer=tokenizer, val=val, run_dir=run_dir)
    task.token_source = source
    return task


@torch.no_grad()
def _encode_dataset(dataset, tokenizer: LARPTokenizer, recipe: GeneratorTrainConfig) -> dict[str, torch.Tensor]:
    """Validation tokens of a (small) clip dataset, in memory."""
    cond_frames = recipe.condition_frames if recipe.model.frame_prediction else None
    tokens, conds, labels = [], [], []
    batch_size = recipe.tokens.encode_batch_size
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        items = [item for item in items if item is not None]
        if not items:
            continue
        ids, cond = encode_clips(tokenizer, torch.stack([i["video"] for i in items]), precision=recipe.tokens.precision,
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
def batch_tokens(
    batch: dict[str, Any], tokenizer: LARPTokenizer | None, recipe: GeneratorTrainConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (b, N), cond) of a batch of cached rows or of clips, on ``device``; cond is class ids (b,) or
    condition tokens (b, N).

    Value ranges are checked here, on the CPU copies the data arrives as (no device sync): token rows against
    the vocabulary, class ids against ``num_classes``. Tokens encoded on the fly come from the matching
    tokenizer and are in range by construction. The generator can then run without its own value check.
    """
    model = recipe.model
    frame_prediction = model.frame_prediction
    if "tokens" in batch:
        tokens, cond = batch["tokens"], batch.get("cond")
        lengths = check_window_padding(tokens, batch.get("length"), model.end_of_window)
        valid = tokens if lengths is None else tokens.clamp(min=0)
        _check_range("token rows", valid, model.vocab_size, "were the tokens made by another tokenizer?")
        if frame_prediction:
            if bool((cond < 0).any()):
                raise ValueError("the condition rows have windows of fewer than max_seq_len ids (-1 padding): the "
                                 "condition clip of frame prediction is encoded with all its tokens; only the "
                                 "predicted window may vary in length")
            _check_range("condition rows", cond, model.vocab_size, "were the tokens made by another tokenizer?")
        tokens = tokens.to(device, non_blocking=True)
    else:
        tokens, cond = encode_clips(tokenizer, batch["video"], precision=recipe.tokens.precision,
                                    condition_frames=recipe.condition_frames if frame_prediction else None)
    if frame_prediction:
        return tokens, cond.to(device, non_blocking=True)
    labels = batch["label"]
    if bool((labels < 0).any()):
        raise ValueError("a class-conditional generator needs a class label for every clip: the data has clips "
                         "without one (label -1); use a manifest with labels or folders per class")
    _check_range("class labels", labels, model.num_classes, "set model.num_classes to the data's number of classes")
    return tokens, labels.to(device, non_blocking=True)


def check_window_padding(tokens: torch.Tensor, lengths: torch.Tensor | None, end_of_window: bool) -> torch.Tensor | None:
    """Check the -1 padding of token rows (b, N) on the CPU: each row is its window's ids, then -1 to the
    end (at least one id). Returns the lengths (b,), or None when every row is full (no -1).

    Raises:
        ValueError: variable-length rows for a generator without ``end_of_window``, a -1 before an id, a row
            of no id, or a ``length`` column that disagrees with the padding.
    """
    padded = tokens < 0
    if not bool(padded.any()):
        found = None
    else:
        if not end_of_window:
            raise ValueError("the token rows hold windows of fewer than max_seq_len ids (padded with -1: an adaptive "
                             "token dataset); a generator models them with an end-of-window token: set "
                             "model.end_of_window: true")
        found = (~padded).sum(dim=1)
        positions = torch.arange(tokens.shape[1])
        if bool((tokens < -1).any()) or not torch.equal(padded, positions[None] >= found[:, None]):
            raise ValueError("token rows must be a window's ids followed by -1 up to max_seq_len (no -1 before an "
                             "id, no other negative value)")
        if bool((found == 0).any()):
            raise ValueError("a token row has no id (window length 0); every window keeps at least one id")
    if lengths is not None:
        expected = torch.full((tokens.shape[0],), tokens.shape[1]) if found is None else found
        if not torch.equal(torch.as_tensor(lengths).long().cpu(), expected):
            raise ValueError("the windows' length column disagrees with their -1 padding (a damaged token dataset?)")
    return found


def decode_padded(tokenizer: LARPTokenizer, ids: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
    """Decode token rows (b, N) padded with -1 past each window's length, each from its own length (a prefix
    of a nested-dropout tokenizer's tokens, the rest masked) -> clamped videos (b, c, t, h, w), in one
    decoder pass. Full rows (no -1): ``tokenizer.decode`` as before."""
    padded = ids < 0
    if not bool(padded.any()):
        return tokenizer.decode(ids, num_frames=num_frames, clamp=True)
    if not tokenizer.config.nested_dropout:
        raise ValueError("these token rows have windows of fewer than all their ids (-1 padding), which only a "
                         "tokenizer built with nested_dropout decodes")
    num_frames = tokenizer.check_num_frames(tokenizer.config.frame_num if num_frames is None else num_frames)
    lengths = (~padded).sum(dim=1).to(tokenizer.device)
    latents = tokenizer.ids_to_latents(ids.clamp(min=0).to(tokenizer.device))
    return tokenizer.decode_latents(latents, num_frames, keep=lengths).clamp(0, 1)


def _check_range(name: str, values: torch.Tensor, high: int, hint: str) -> None:
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= high:
        raise ValueError(f"the {name} hold values in [{lo}, {hi}], outside [0, {high}): {hint}")


def token_metrics(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cross-entropy and top-1/top-5 accuracy of logits (b, N, V) against targets (b, N); targets
    ``IGNORE`` (past a window's end-of-window token) count in none of them."""
    logits = logits.float()
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), ignore_index=IGNORE)
    top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    hits = top5 == tokens[..., None]
    valid = tokens != IGNORE
    count = valid.sum().clamp_min(1)
    return {"loss": loss, "top1": (hits[..., 0] & valid).sum() / count, "top5": (hits.any(-1) & valid).sum() / count}


# ------------------------------------------------------------------------------------------ the task
class GeneratorTask:
    """A generator run's model, optimizer and token stream (the tokenizer is frozen and not checkpointed),
    and its step, validation, samples and export."""

    name, unit = "train-generator", "sequences"
    progress_keys = ("loss", "top1")

    def __init__(
        self,
        recipe: GeneratorTrainConfig,
        info: dist.DistInfo,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        stream: TrainStream | Iterator[dict[str, Any]],
        tokenizer: LARPTokenizer | None = None,
        val: dict[str, torch.Tensor] | None = None,
        run_dir: Path | None = None,
    ):
        """
        Args:
            model: the LARPGenerator, DDP-wrapped when distributed (and compiled when asked).
            stream: batches of token rows (``tokens``, ``label`` or ``cond``) or of clips (``video``, ``label``).
            tokenizer: encodes clip batches on the fly, decodes samples; None when the stream holds tokens
                and no samples are written.
            val: validation tokens (``tokens``, ``label`` or ``cond``) for :meth:`evaluate`.
        """
        self.recipe, self.info, self.run_dir = recipe, info, run_dir
        self.model, self.optimizer, self.scaler, self.stream = model, optimizer, scaler, stream
        self.tokenizer, self.val = tokenizer, val
        self.items_per_step = recipe.batch_size * recipe.optim.accumulation
        self.token_source = "from the stream given"  # where the tokens come from, for the log
        self.export_dir = run_dir / "generator" if run_dir is not None else None

    @property
    def core(self) -> LARPGenerator:
        return dist.unwrap(self.model)

    def weights(self) -> dict[str, Stateful]:
        return {"generator": self.core}

    def training_state(self) -> dict[str, Stateful]:
        return {"optimizer": self.optimizer, "scaler": self.scaler, "stream": self.stream}

    def train_step(self, step: int) -> Metrics:
        """One optimizer step of ``optim.accumulation`` micro-batches; metrics of this process as tensors."""
        recipe, device = self.recipe, self.info.device
        mult = lr_multiplier(step, recipe.optim.warmup_steps, recipe.steps, recipe.optim.min_lr_mult)
        set_lr(self.optimizer, recipe.optim.lr, mult)
        self.optimizer.zero_grad(set_to_none=True)
        accumulation = recipe.optim.accumulation
        metrics: Metrics = {}
        for _, sync in micro_batches(self.model, accumulation):
            tokens, cond = batch_tokens(next(self.stream), self.tokenizer, recipe, device)
            with sync:
                with autocast(recipe.precision, device):
                    logits = self.model(tokens, cond, check_values=False)  # checked in batch_tokens, no sync
                terms = token_metrics(logits, self.core.targets(tokens))
                self.scaler.scale(terms["loss"] / accumulation).backward()
            for name, value in terms.items():
                metrics[name] = metrics.get(name, 0) + value.detach() / accumulation
        norm = optimizer_step(self.optimizer, self.scaler, self.model.parameters(), recipe.optim.grad_clip)
        if norm is not None:
            metrics["grad_norm"] = norm
        metrics["lr"] = recipe.optim.lr * mult
        if isinstance(self.stream, TrainStream):  # not when a benchmark or test feeds fixed batches
            metrics["skipped_videos"] = float(self.stream.skipped)
        return metrics

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Teacher-forced loss and top-1/top-5 accuracy on the validation tokens (class dropout off)."""
        recipe, device, model, val = self.recipe, self.info.device, self.core, self.val
        was_training = model.training
        model.eval()
        sums, count = {"loss": 0.0, "top1": 0.0, "top5": 0.0}, 0
        eow = recipe.model.end_of_window
        for first in range(0, val["tokens"].shape[0], recipe.batch_size):
            tokens = val["tokens"][first : first + recipe.batch_size].to(device)
            cond = (val["cond"] if recipe.model.frame_prediction else val["label"])[first : first + recipe.batch_size].to(device)
            targets = model.targets(tokens)
            with autocast(recipe.precision, device):
                terms = token_metrics(model(tokens, cond), targets)
            # variable-length windows: weighted by their targets (ids + EOW); fixed ones by row, as before
            weight = int((targets != IGNORE).sum()) if eow else tokens.shape[0]
            for name in sums:
                sums[name] = sums[name] + terms[name] * weight
            count += weight
        model.train(was_training)
        return {f"val_{name}": float(value) / count for name, value in sums.items()}

    @torch.no_grad()
    def write_samples(self, step: int) -> Path:
        """Decoded samples as a gif/mp4 grid. Class-conditional: one row per class. Frame prediction: the
        tokenizer's reconstruction of validation clips (top row) and the predictions from their first frames."""
        recipe, device, model, val, s = self.recipe, self.info.device, self.core, self.val, self.recipe.sampling
        was_training = model.training
        model.eval()
        rng = torch.Generator(device).manual_seed(recipe.seed)  # the same draws at every step: comparable grids
        options = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=rng)
        with autocast(recipe.precision, device):
            if recipe.model.frame_prediction:
                count = min(s.classes * s.per_class, val["tokens"].shape[0])
                ids = model.generate(val["cond"][:count].to(device), **options)
                ids, per_row = torch.cat([val["tokens"][:count].to(device), ids]), count
            else:
                classes = min(recipe.model.num_classes, s.classes)
                cond = torch.arange(classes, device=device).repeat_interleave(s.per_class)
                cfg = s.cfg_scale if recipe.model.has_null_class else 1.0
                ids, per_row = model.generate(cond, cfg_scale=cfg, **options), s.per_class
            videos = decode_padded(self.tokenizer, ids).float().cpu()
        model.train(was_training)
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:08d}.gif"
        grid = make_grid(videos, nrow=per_row)
        write_video(path, grid, fps=8)
        write_video(path.with_suffix(".mp4"), grid, fps=8)
        np.save(path.with_suffix(".npy"), ids.cpu().numpy())
        return path

    def export(self) -> None:
        """The final generator in the official layout (``save_pretrained(official_format=True)``; larp's own
        layout for an ``end_of_window`` generator, which the official code cannot express)."""
        # a generator with an end-of-window token has no official format: larp's own layout then
        self.core.save_pretrained(self.export_dir, official_format=not self.core.config.end_of_window)
        logger.info("exported the generator to %s", self.export_dir)


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
        resume: continue from the newest readable checkpoint in ``run_dir``.
        stop_after: stop (with a checkpoint) after this global step, as if killed; for tests.

    Returns:
        The folder of the exported generator (``run_dir/generator``), in the official layout.
    """
    run_dir = Path(run_dir)
    info = dist.init_distributed(device)
    lock = None
    try:
        lock = prepare_run_dir(run_dir, recipe, resume, info)
        dist.barrier(info)
        tokenizer = load_frozen_tokenizer(recipe, info.device)
        task = build_generator_task(recipe, tokenizer, info, run_dir, progress=progress and info.is_main)
        trainer = Trainer(task, Cadence.of(recipe), info, run_dir=run_dir, progress=progress)
        trainer.start(resume=resume, seed=recipe.seed)
        if info.is_main:
            logger.info("generator %s parameters; %d steps of %d sequences x %d process(es) on %s, %s; tokens %s",
                        f"{task.core.num_parameters():,}", recipe.steps, task.items_per_step, info.world_size,
                        info.device, resolve_precision(recipe.precision, info.device), task.token_source)
        trainer.fit(stop_after)
        return trainer.export()
    finally:
        if lock is not None:
            lock.release()
        dist.cleanup(info)
