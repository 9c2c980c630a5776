"""Training LARP tokenizers: reconstruction + LPIPS + GAN + VQ + the autoregressive prior (LARP.md B, C).

One step (LARP.md C.5): set the learning rates; run the generator (tokenizer + prior) forward; if the step
is due, update the discriminator on the detached reconstructions; then the generator loss with the
discriminator frozen, backward, optimizer step. The run is one process by default and DDP under torchrun;
all state lives in ``TrainState`` and is checkpointed, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from larp.config import config_to_dict
from larp.data.video_io import make_grid, write_video
from larp.losses.gan import LeCam, discriminator_objective, discriminator_step_due, generator_loss
from larp.models.discriminator import DISCRIMINATOR_PRESETS, TransformerDiscriminator
from larp.models.prior import LatentPrior, PriorOutput, prior_loss, scheduled_sampling_ratio
from larp.models.tokenizer import LARPTokenizer, TokenizerOutput
from larp.training import checkpoint as ckpt
from larp.training import distributed as dist
from larp.training.data import TrainStream, build_datasets
from larp.training.optim import lr_multiplier, set_lr
from larp.training.recipe import TokenizerTrainConfig
from larp.training.run_dir import MetricsWriter, prepare_run_dir, restore_rng, save_run_checkpoint, truncate_metrics

logger = logging.getLogger(__name__)

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------ modules
class TokenizerWithPrior(nn.Module):
    """The generator side as one module, so DDP averages the tokenizer's and the prior's gradients."""

    def __init__(self, tokenizer: LARPTokenizer, prior: LatentPrior | None):
        super().__init__()
        self.tokenizer = tokenizer
        self.prior = prior

    def forward(
        self,
        video: torch.Tensor,
        *,
        keep_tokens: torch.Tensor | None,
        ss_ratio: float,
        bypass_quantization: bool,
        recipe: TokenizerTrainConfig,
        use_prior: bool = True,
    ) -> tuple[TokenizerOutput, PriorOutput | None]:
        out = self.tokenizer(video, keep_tokens=keep_tokens, bypass_quantization=bypass_quantization)
        if self.prior is None or not use_prior:  # not run at all while its loss weight is 0
            return out, None
        q = out.quantized
        prior_out = prior_loss(
            self.prior,
            q.codes,
            q.indices,
            self.tokenizer.bottleneck.regularizer.normalized_codebook(),
            ss_ratio=ss_ratio if recipe.prior.scheduled_sampling else 0.0,
            rounds=recipe.prior.rounds,
            temperature=recipe.prior.temperature,
            average_rounds=recipe.prior.average_rounds,
        )
        return out, prior_out


class EMA:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, value in module.state_dict().items():
            if name in self.shadow:
                self.shadow[name].lerp_(value.detach(), 1 - self.decay)


@dataclass
class TrainState:
    """Everything a run needs besides its recipe; checkpointed whole."""

    model: nn.Module  # TokenizerWithPrior, DDP-wrapped when distributed
    g_opt: torch.optim.Optimizer
    g_scaler: torch.amp.GradScaler
    stream: TrainStream
    discriminator: nn.Module | None = None  # DDP-wrapped when distributed
    d_opt: torch.optim.Optimizer | None = None
    d_scaler: torch.amp.GradScaler | None = None
    lecam: LeCam | None = None
    lpips: nn.Module | None = None
    ema: EMA | None = None
    step: int = 0
    code_counts: torch.Tensor | None = None  # code usage since the last dead-code restart
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def core(self) -> TokenizerWithPrior:
        return dist.unwrap(self.model)


# ------------------------------------------------------------------------------------------ building
def build_state(recipe: TokenizerTrainConfig, info: dist.DistInfo) -> tuple[TrainState, Any]:
    """Models, optimizers, scalers and data for a fresh run (weights random, step 0)."""
    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    tokenizer = LARPTokenizer(recipe.model)
    prior = LatentPrior(recipe.prior_model) if recipe.prior.enabled else None
    core = TokenizerWithPrior(tokenizer, prior).to(info.device).train()

    groups = [{"params": [], "lr_mult": 1.0, "name": "tokenizer"}]
    queries = tokenizer.encoder_latent_query_embed
    for name, param in sorted(tokenizer.named_parameters()):
        if param is not queries:
            groups[0]["params"].append(param)
    groups.append({"params": [queries], "lr_mult": recipe.optim.query_lr_mult, "name": "queries"})
    if prior is not None:
        groups.append({"params": [p for _, p in sorted(prior.named_parameters())], "lr_mult": recipe.prior.lr_mult, "name": "prior"})
    g_opt = torch.optim.Adam(groups, lr=recipe.optim.lr, betas=recipe.optim.betas, weight_decay=recipe.optim.weight_decay)
    use_scaler = recipe.precision == "fp16"
    state = TrainState(
        model=_wrap(core, recipe, info),
        g_opt=g_opt,
        g_scaler=torch.amp.GradScaler(info.device.type, enabled=use_scaler),
        stream=None,  # set below
    )
    if recipe.loss.gan.disc_weight > 0:
        base = DISCRIMINATOR_PRESETS[recipe.discriminator_preset]
        m = recipe.model
        d_config = replace(base, frame_num=m.frame_num, input_size=m.input_size, in_channels=m.in_channels,
                           temporal_patch_size=m.temporal_patch_size, patch_size=m.patch_size)
        discriminator = TransformerDiscriminator(d_config).to(info.device).train()
        state.discriminator = dist.wrap(discriminator, info)
        state.d_opt = torch.optim.Adam(discriminator.parameters(), lr=recipe.optim.disc_lr, betas=recipe.optim.betas)
        state.d_scaler = torch.amp.GradScaler(info.device.type, enabled=use_scaler)
        state.lecam = LeCam(recipe.loss.gan.lecam_decay).to(info.device)
    if recipe.loss.perceptual_weight > 0:
        from larp.losses.perceptual import load_lpips

        state.lpips = load_lpips(recipe.loss.lpips_weights, device=info.device)
    if recipe.optim.ema_decay > 0:
        state.ema = EMA(tokenizer, recipe.optim.ema_decay)

    train, val, flip_in_stream = build_datasets(recipe.data, frames=recipe.model.frame_num, size=recipe.model.input_size)
    state.stream = TrainStream(
        train,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=recipe.data.num_workers,
        flip=flip_in_stream,
    )
    state.code_counts = torch.zeros(recipe.model.quantizer.codebook_size, device=info.device)
    return state, val


def _wrap(core: TokenizerWithPrior, recipe: TokenizerTrainConfig, info: dist.DistInfo) -> nn.Module:
    # unused parameters in some steps: the nested-dropout mask embedding when no sample is truncated, the
    # prior while its loss weight is still 0
    unused = recipe.model.nested_dropout or (recipe.prior.enabled and recipe.prior.weight_delay > 0)
    model = dist.wrap(core, info, find_unused_parameters=unused)
    if recipe.compile:
        model = torch.compile(model)
    return model


# ------------------------------------------------------------------------------------------ checkpoints
def _weights(state: TrainState) -> dict[str, dict[str, torch.Tensor]]:
    core = state.core
    weights = {"tokenizer": core.tokenizer.state_dict()}
    if core.prior is not None:
        weights["prior"] = core.prior.state_dict()
    if state.discriminator is not None:
        weights["discriminator"] = dist.unwrap(state.discriminator).state_dict()
        weights["lecam"] = state.lecam.state_dict()
    if state.ema is not None:
        weights["ema"] = state.ema.shadow
    return weights


def save_state(run_dir: Path, state: TrainState, recipe: TokenizerTrainConfig, info: dist.DistInfo) -> None:
    """A checkpoint of the whole run; every rank calls it, rank 0 writes."""
    extra = {
        "g_opt": state.g_opt.state_dict(),
        "g_scaler": state.g_scaler.state_dict(),
        "stream": state.stream.state_dict(),
        "code_counts": state.code_counts.cpu(),
    }
    if state.d_opt is not None:
        extra["d_opt"] = state.d_opt.state_dict()
        extra["d_scaler"] = state.d_scaler.state_dict()
    save_run_checkpoint(run_dir, state.step, _weights(state) if info.is_main else {}, extra, info, recipe.keep_checkpoints)


def restore_state(folder: Path, state: TrainState, info: dist.DistInfo) -> None:
    weights, extra = ckpt.load_checkpoint(folder)
    core = state.core
    core.tokenizer.load_state_dict(weights["tokenizer"])
    if core.prior is not None:
        core.prior.load_state_dict(weights["prior"])
    if state.discriminator is not None:
        dist.unwrap(state.discriminator).load_state_dict(weights["discriminator"])
        state.lecam.load_state_dict(weights["lecam"])
        state.d_opt.load_state_dict(extra["d_opt"])
        state.d_scaler.load_state_dict(extra["d_scaler"])
    if state.ema is not None:
        state.ema.shadow = {k: v.to(info.device) for k, v in weights["ema"].items()}
    state.g_opt.load_state_dict(extra["g_opt"])
    state.g_scaler.load_state_dict(extra["g_scaler"])
    state.stream.load_state_dict(extra["stream"])
    state.code_counts = extra["code_counts"].to(info.device)
    state.step = int(extra["step"])
    restore_rng(extra, info)


# ------------------------------------------------------------------------------------------ one step
def _autocast(recipe: TokenizerTrainConfig, device: torch.device):
    if recipe.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP[recipe.precision])


def prior_weight(recipe: TokenizerTrainConfig, step: int) -> float:
    """The prior loss weight at ``step``: 0 during the delay, then a linear ramp to the full weight."""
    p = recipe.prior
    if step <= p.weight_delay:
        return 0.0
    if p.weight_ramp <= 0:
        return recipe.loss.prior_weight
    return recipe.loss.prior_weight * min((step - p.weight_delay) / p.weight_ramp, 1.0)


def _keep_tokens(recipe: TokenizerTrainConfig, batch: int, device: torch.device) -> torch.Tensor | None:
    """Nested dropout: each sample keeps a uniformly drawn prefix of its tokens with probability p."""
    if recipe.nested_dropout_prob <= 0:
        return None
    n = recipe.model.num_tokens
    keep = torch.randint(1, n + 1, (batch,), device=device)
    dropped = torch.rand(batch, device=device) < recipe.nested_dropout_prob
    return torch.where(dropped, keep, torch.full_like(keep, n))


def discriminator_step(state: TrainState, recipe: TokenizerTrainConfig, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    with _autocast(recipe, real.device):
        logits = state.discriminator(torch.cat([real, fake.detach()]))
    logits_real, logits_fake = logits.float().chunk(2)
    loss = discriminator_objective(logits_real, logits_fake, state.lecam, recipe.loss.gan)
    state.d_opt.zero_grad(set_to_none=True)
    state.d_scaler.scale(loss).backward()
    state.d_scaler.step(state.d_opt)
    state.d_scaler.update()
    state.lecam.update(logits_real, logits_fake)
    return {"d_loss": loss.detach(), "d_real": logits_real.mean().detach(), "d_fake": logits_fake.mean().detach()}


def generator_losses(
    state: TrainState, recipe: TokenizerTrainConfig, video: torch.Tensor, out: TokenizerOutput, prior_out: PriorOutput | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total generator loss and its named terms (LARP.md C.2)."""
    loss_cfg = recipe.loss
    recon = out.recon.float()
    terms: dict[str, torch.Tensor] = {"l1": (recon - video).abs().mean()}
    total = loss_cfg.l1_weight * terms["l1"]
    if loss_cfg.mse_weight > 0:
        terms["mse"] = F.mse_loss(recon, video)
        total = total + loss_cfg.mse_weight * terms["mse"]
    if state.lpips is not None:
        frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # (b, c, t, h, w) -> (b*t, c, h, w)
        terms["lpips"] = state.lpips(frames(recon), frames(video)).mean()
        total = total + loss_cfg.perceptual_weight * terms["lpips"]
    if state.discriminator is not None and state.step > loss_cfg.gan_start:
        discriminator = dist.unwrap(state.discriminator)
        discriminator.requires_grad_(False)  # D frozen: the G loss must not train it
        with _autocast(recipe, video.device):
            terms["g_gan"] = generator_loss(discriminator(out.recon).float())
        discriminator.requires_grad_(True)
        total = total + loss_cfg.gan.disc_weight * terms["g_gan"]
    terms["vq"] = out.quantized.loss
    total = total + loss_cfg.vq_weight * terms["vq"]
    if prior_out is not None:
        terms["prior_ce"] = prior_out.loss
        total = total + prior_weight(recipe, state.step) * prior_out.loss
    terms["loss"] = total
    return total, {k: v.detach() for k, v in terms.items()}


def train_step(state: TrainState, recipe: TokenizerTrainConfig, info: dist.DistInfo) -> dict[str, float]:
    """One optimizer step (``optim.accumulation`` micro-batches); returns rank-averaged metrics."""
    state.step += 1
    mult = lr_multiplier(state.step, recipe.optim.warmup_steps, recipe.steps, recipe.optim.min_lr_mult)
    set_lr(state.g_opt, recipe.optim.lr, mult)
    if state.d_opt is not None:
        set_lr(state.d_opt, recipe.optim.disc_lr, mult)
    ss_ratio = scheduled_sampling_ratio(state.step, recipe.steps, recipe.prior.ss_max_ratio, recipe.prior.ss_peak_fraction)
    quantize_from = recipe.codebook.continuous_warmup + 1
    bypass = state.step < quantize_from
    metrics: dict[str, torch.Tensor] = {}
    state.g_opt.zero_grad(set_to_none=True)
    accumulation = recipe.optim.accumulation
    for micro in range(accumulation):
        batch = next(state.stream)
        video = batch["video"].to(info.device, non_blocking=True)
        keep = _keep_tokens(recipe, video.shape[0], info.device)
        if state.step == quantize_from and micro == 0 and recipe.codebook.init_from_data:
            init_codebook_from_data(state, video, info)
        # DDP: only the last micro-batch all-reduces gradients
        sync = contextlib.nullcontext() if micro == accumulation - 1 or not info.enabled else state.model.no_sync()
        with sync:
            with _autocast(recipe, info.device):
                out, prior_out = state.model(
                    video, keep_tokens=keep, ss_ratio=ss_ratio, bypass_quantization=bypass, recipe=recipe,
                    use_prior=prior_weight(recipe, state.step) > 0,
                )
            if micro == 0 and state.discriminator is not None and discriminator_step_due(state.step, recipe.loss.gan.disc_update_every):
                metrics.update(discriminator_step(state, recipe, video, out.recon))
            total, terms = generator_losses(state, recipe, video, out, prior_out)
            state.g_scaler.scale(total / accumulation).backward()
        for name, value in terms.items():
            metrics[name] = metrics.get(name, 0) + value / accumulation
        _track_codes(state, out, prior_out, metrics, video)
    if recipe.optim.grad_clip > 0:
        state.g_scaler.unscale_(state.g_opt)
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(state.core.parameters(), recipe.optim.grad_clip)
    state.g_scaler.step(state.g_opt)
    state.g_scaler.update()
    if state.ema is not None:
        state.ema.update(state.core.tokenizer)
    # restarts only once the decoder reads the codes (quantization on): before, codes are not used
    if recipe.codebook.dead_code_restart and not bypass and state.step % recipe.codebook.restart_every == 0:
        metrics["codes_restarted"] = torch.tensor(float(restart_dead_codes(state, recipe, out.quantized.z.detach(), info)))
    names = sorted(metrics)
    reduced = dist.all_reduce_mean(torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32, device=info.device) for k in names]), info)
    result = dict(zip(names, reduced.tolist()))  # one host sync per step
    result.update(lr=recipe.optim.lr * mult, ss_ratio=ss_ratio, prior_weight=prior_weight(recipe, state.step))
    return result


def _track_codes(state: TrainState, out: TokenizerOutput, prior_out: PriorOutput | None, metrics: dict, video: torch.Tensor) -> None:
    indices = out.quantized.indices
    counts = torch.bincount(indices.flatten(), minlength=state.code_counts.numel()).float()
    state.code_counts += counts
    probs = counts / counts.sum()
    metrics["batch_usage"] = (counts > 0).float().mean()
    metrics["perplexity"] = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
    mse = ((out.recon.detach().float().clamp(0, 1) - video) ** 2).flatten(1).mean(1)
    metrics["psnr"] = (-10 * torch.log10(mse.clamp_min(1e-10))).mean()
    if prior_out is not None:
        metrics["prior_top1"], metrics["prior_top5"] = prior_out.top1, prior_out.top5


# ------------------------------------------------------------------------------------------ codebook remedies
@torch.no_grad()
def init_codebook_from_data(state: TrainState, video: torch.Tensor, info: dist.DistInfo) -> None:
    """Set every code to a (noisy) latent of this batch, before its forward: codes start where the data is."""
    tokenizer = state.core.tokenizer
    embedding = tokenizer.bottleneck.regularizer.embedding.weight
    z = F.normalize(tokenizer.bottleneck.in_linear(tokenizer.encode_features(video)).float(), dim=-1)
    pool = z.reshape(-1, z.shape[-1])
    picks = pool[torch.randint(0, pool.shape[0], (embedding.shape[0],), device=pool.device)]
    new = F.normalize(picks + 0.01 * torch.randn_like(picks), dim=-1)
    embedding.copy_(dist.broadcast_(new.contiguous(), info))
    logger.info("codebook initialised from %d latents of the first batch", pool.shape[0])


@torch.no_grad()
def restart_dead_codes(state: TrainState, recipe: TokenizerTrainConfig, z: torch.Tensor, info: dist.DistInfo) -> int:
    """Re-initialise codes used less than ``dead_threshold`` times per window from recent latents, and
    clear their Adam moments. Returns the number of codes restarted."""
    counts = dist.all_reduce_sum(state.code_counts, info)
    dead = counts < recipe.codebook.dead_threshold * counts.sum() / counts.numel()
    dead = dist.broadcast_(dead.to(torch.uint8), info).bool()
    state.code_counts.zero_()
    number = int(dead.sum())
    if number == 0:
        return 0
    embedding = state.core.tokenizer.bottleneck.regularizer.embedding.weight
    pool = z.reshape(-1, z.shape[-1]).float()
    picks = pool[torch.randint(0, pool.shape[0], (number,), device=pool.device)]
    new = embedding.detach().clone()
    # the quantizer normalises codes, so unit vectors near live latents are all a restart needs
    new[dead] = F.normalize(picks + 0.01 * torch.randn_like(picks), dim=-1)
    embedding.copy_(dist.broadcast_(new, info))
    adam = state.g_opt.state.get(embedding, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in adam:
            adam[key][dead] = 0
    return number


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(state: TrainState, recipe: TokenizerTrainConfig, val, info: dist.DistInfo, *, limit: int | None = None) -> dict[str, float]:
    """Validation with deterministic tokens: PSNR, codebook usage and perplexity, prior accuracy."""
    core = state.core
    tokenizer = core.tokenizer
    was_training = core.training
    core.eval()
    loader = torch.utils.data.DataLoader(val, batch_size=recipe.batch_size, num_workers=0,
                                         collate_fn=_collate_val)
    psnrs, counts, top1, top5, seen = [], torch.zeros(recipe.model.quantizer.codebook_size), [], [], 0
    for batch in loader:
        if batch is None:
            continue
        video = batch["video"].to(info.device)
        with _autocast(recipe, info.device):
            quantized = tokenizer.quantize(tokenizer.encode_features(video), stochastic=False)
            recon = tokenizer.decode_latents(tokenizer.bottleneck.codes_to_latents(quantized.codes), video.shape[2])
        mse = ((recon.float().clamp(0, 1) - video) ** 2).flatten(1).mean(1)
        psnrs.append(-10 * torch.log10(mse.clamp_min(1e-10)).cpu())
        counts += torch.bincount(quantized.indices.flatten().cpu(), minlength=counts.numel()).float()
        if core.prior is not None:
            p = prior_loss(core.prior, quantized.codes, quantized.indices, tokenizer.bottleneck.regularizer.normalized_codebook(), ss_ratio=0.0, rounds=1)
            top1.append(p.top1.item())
            top5.append(p.top5.item())
        seen += video.shape[0]
        if limit is not None and seen >= limit:
            break
    core.train(was_training)
    probs = counts / counts.sum()
    result = {
        "val_psnr": torch.cat(psnrs).mean().item(),
        "val_usage": (counts > 0).float().mean().item(),
        "val_perplexity": math.exp(-(probs * probs.clamp_min(1e-12).log()).sum().item()),
    }
    if top1:
        result.update(val_prior_top1=sum(top1) / len(top1), val_prior_top5=sum(top5) / len(top5))
    return result


def _collate_val(items):
    items = [i for i in items if i is not None]
    if not items:
        return None
    return {"video": torch.stack([i["video"] for i in items])}


@torch.no_grad()
def write_samples(state: TrainState, val, run_dir: Path, count: int = 8) -> Path:
    """A grid of real clips (top row) and their reconstructions (bottom row), as gif and mp4."""
    tokenizer = state.core.tokenizer
    was_training = tokenizer.training
    tokenizer.eval()
    items = [val[i] for i in range(min(count, len(val)))]
    real = torch.stack([item["video"] for item in items if item is not None])
    device = next(tokenizer.parameters()).device
    recon = tokenizer.decode(tokenizer.encode(real.to(device)), num_frames=real.shape[2], clamp=True).float().cpu()
    tokenizer.train(was_training)
    grid = make_grid(torch.cat([real, recon]), nrow=real.shape[0])
    folder = run_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state.step:08d}.gif"
    write_video(path, grid, fps=8)
    write_video(path.with_suffix(".mp4"), grid, fps=8)
    return path


# ------------------------------------------------------------------------------------------ the run
def train_tokenizer(
    recipe: TokenizerTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train (or resume) a tokenizer run and export the final model with ``save_pretrained``.

    Args:
        run_dir: the run's folder: recipe.yaml, metrics.jsonl, checkpoints/, samples/, tokenizer/.
        resume: continue from the newest checkpoint in ``run_dir``.
        stop_after: stop (with a checkpoint) after this global step, as if killed; for tests.

    Returns:
        The folder of the exported tokenizer (``run_dir/tokenizer``).
    """
    run_dir = Path(run_dir)
    info = dist.init_distributed(device)
    try:
        prepare_run_dir(run_dir, recipe, resume, info)
        dist.barrier(info)
        state, val = build_state(recipe, info)
        latest = ckpt.latest_checkpoint(run_dir) if resume else None
        if latest is not None:
            restore_state(latest, state, info)
            if info.is_main:
                truncate_metrics(run_dir / "metrics.jsonl", state.step)
            logger.info("resumed %s at step %d", run_dir, state.step)
        else:
            torch.manual_seed(recipe.seed + info.rank)  # per-rank streams of randomness from here on
        _log_start(recipe, state, info)
        _loop(state, recipe, val, run_dir, info, progress=progress, stop_after=stop_after)
        if state.step >= recipe.steps:
            return _export(state, run_dir, info)
        return run_dir / "tokenizer"
    finally:
        dist.cleanup(info)


def _log_start(recipe: TokenizerTrainConfig, state: TrainState, info: dist.DistInfo) -> None:
    if not info.is_main:
        return
    core = state.core
    parts = [f"tokenizer {core.tokenizer.num_parameters():,} parameters"]
    if core.prior is not None:
        parts.append(f"prior {sum(p.numel() for p in core.prior.parameters()):,}")
    if state.discriminator is not None:
        parts.append(f"discriminator {sum(p.numel() for p in state.discriminator.parameters()):,}")
    logger.info("%s; %d steps of %d clips x %d process(es) on %s, %s", ", ".join(parts), recipe.steps,
                recipe.batch_size * recipe.optim.accumulation, info.world_size, info.device, recipe.precision)


def _loop(state: TrainState, recipe: TokenizerTrainConfig, val, run_dir: Path, info: dist.DistInfo, *, progress: bool, stop_after: int | None) -> None:
    writer = MetricsWriter(run_dir, recipe.tensorboard) if info.is_main else None
    bar = tqdm(total=recipe.steps, initial=state.step, desc="train-tokenizer", unit="step",
               disable=not (progress and info.is_main), dynamic_ncols=True)
    clips_per_step = recipe.batch_size * recipe.optim.accumulation * info.world_size
    started, first_step = time.perf_counter(), state.step
    warned_usage = False
    while state.step < recipe.steps:
        metrics = train_step(state, recipe, info)
        bar.update(1)
        elapsed = time.perf_counter() - started
        metrics["clips_per_s"] = clips_per_step * (state.step - first_step) / max(elapsed, 1e-9)
        metrics["skipped_videos"] = float(state.stream.skipped)
        if state.step % recipe.eval_every == 0 or state.step == recipe.steps:
            if info.is_main:
                metrics.update(evaluate(state, recipe, val, info))
                quantizing = state.step > recipe.codebook.continuous_warmup
                if quantizing and metrics["val_usage"] < recipe.codebook.usage_warn and not warned_usage:
                    logger.warning("codebook usage %.1f%% is below %.1f%%: the codebook may be collapsing "
                                   "(see codebook.init_from_data / dead_code_restart / prior.weight_delay)",
                                   100 * metrics["val_usage"], 100 * recipe.codebook.usage_warn)
                    warned_usage = True
            dist.barrier(info)
        if info.is_main and (state.step % recipe.sample_every == 0 or state.step == recipe.steps):
            write_samples(state, val, run_dir)
        if info.is_main and (state.step % recipe.log_every == 0 or state.step == recipe.steps or "val_psnr" in metrics):
            writer.write(state.step, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", psnr=f"{metrics['psnr']:.1f}",
                            usage=f"{metrics['batch_usage']:.2f}", clips_s=f"{metrics['clips_per_s']:.1f}")
        done = state.step >= recipe.steps or (stop_after is not None and state.step >= stop_after)
        if state.step % recipe.checkpoint_every == 0 or done:
            save_state(run_dir, state, recipe, info)
            dist.barrier(info)
        if done:
            break
    bar.close()
    if writer is not None:
        writer.close()


def _export(state: TrainState, run_dir: Path, info: dist.DistInfo) -> Path:
    """The final tokenizer (EMA weights when EMA is on) as a save_pretrained folder, plus the prior."""
    folder = run_dir / "tokenizer"
    if info.is_main:
        tokenizer = state.core.tokenizer
        if state.ema is not None:
            exported = LARPTokenizer(tokenizer.config)
            exported.load_state_dict({**tokenizer.state_dict(), **{k: v.cpu() for k, v in state.ema.shadow.items()}})
            tokenizer = exported
        tokenizer.save_pretrained(folder)
        if state.core.prior is not None:
            from larp.hub import write_folder

            write_folder(run_dir / "prior", {"_class_name": "LatentPrior", **config_to_dict(state.core.prior.config)},
                         state.core.prior.state_dict())
        logger.info("exported the tokenizer to %s", folder)
    dist.barrier(info)
    return folder
