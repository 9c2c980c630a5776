"""Training LARP tokenizers: reconstruction + LPIPS + GAN + VQ + the autoregressive prior (LARP.md B, C).

One step (LARP.md C.5): set the learning rates; run the generator (tokenizer + prior) forward; if the step
is due, update the discriminator on the detached reconstructions; then the generator loss with the
discriminator frozen, backward, optimizer step. :class:`TokenizerTask` holds the models, optimizers and
data and supplies these functions to the shared loop (:mod:`larp.training.loop`), which steps, logs,
validates and checkpoints. The run is one process by default and DDP under torchrun.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from larp.data.video_io import make_grid, write_video
from larp.evaluation.image_metrics import code_statistics, psnr
from larp.losses.gan import LeCam, discriminator_objective, discriminator_step_due, generator_loss
from larp.models.discriminator import DISCRIMINATOR_PRESETS, TransformerDiscriminator
from larp.models.prior import LatentPrior, PriorOutput, prior_loss, scheduled_sampling_ratio
from larp.models.tokenizer import LARPTokenizer, TokenizerOutput
from larp.precision import autocast, needs_grad_scaler
from larp.training import distributed as dist
from larp.training.data import TrainStream, build_datasets
from larp.training.loop import EMA, Cadence, Metrics, Stateful, Trainer, micro_batches, optimizer_step
from larp.training.optim import lr_multiplier, reset_optimizer_rows, set_lr
from larp.training.recipe import NestedDropoutConfig, TokenizerTrainConfig
from larp.training.run_dir import prepare_run_dir

logger = logging.getLogger(__name__)


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
        use_prior: bool = True,
        prior_rounds: int = 2,
        prior_temperature: float = 1.0,
        average_rounds: bool = True,
    ) -> tuple[TokenizerOutput, PriorOutput | None]:
        """Reconstruct ``video`` (b, c, t, h, w) and, with ``use_prior``, score its codes with the prior.

        Args:
            keep_tokens: (b,) tokens each clip keeps (nested dropout), or None for all.
            ss_ratio: scheduled-sampling share of the prior's later rounds (0: teacher forcing only).
            bypass_quantization: the decoder reads the continuous latents (continuous warm-up).
            use_prior: run the prior (off while its loss weight is 0, so it costs nothing then).
            prior_rounds, prior_temperature, average_rounds: see :func:`larp.models.prior.prior_loss`.
        """
        out = self.tokenizer(video, keep_tokens=keep_tokens, bypass_quantization=bypass_quantization)
        if self.prior is None or not use_prior:
            return out, None
        q = out.quantized
        prior_out = prior_loss(
            self.prior, q.codes, q.indices, self.tokenizer.bottleneck.regularizer.normalized_codebook(),
            ss_ratio=ss_ratio, rounds=prior_rounds, temperature=prior_temperature, average_rounds=average_rounds,
        )
        return out, prior_out


class CodeCounts:
    """How often each code was chosen since the last dead-code restart (this process); a Stateful part
    whose checkpoint value is the (K,) tensor itself, as 0.1.0 wrote it."""

    def __init__(self, codebook_size: int, device: torch.device):
        self.counts = torch.zeros(codebook_size, device=device)

    def add(self, indices: torch.Tensor) -> torch.Tensor:
        """Count the code ids ``indices`` (any shape); returns their own (K,) histogram."""
        counts = torch.bincount(indices.flatten(), minlength=self.counts.numel()).float()
        self.counts += counts
        return counts

    def take(self) -> torch.Tensor:
        """The counts so far, and start a new window."""
        counts = self.counts.clone()
        self.counts.zero_()
        return counts

    def state_dict(self) -> torch.Tensor:
        return self.counts.cpu()

    def load_state_dict(self, counts: torch.Tensor) -> None:
        self.counts.copy_(counts)


def prior_weight(recipe: TokenizerTrainConfig, step: int) -> float:
    """The prior loss weight at ``step``: 0 during the delay, then a linear ramp to the full weight."""
    p = recipe.prior
    if step <= p.weight_delay:
        return 0.0
    if p.weight_ramp <= 0:
        return recipe.loss.prior_weight
    return recipe.loss.prior_weight * min((step - p.weight_delay) / p.weight_ramp, 1.0)


def draw_keep_tokens(
    batch: int, num_tokens: int, prob: float, lengths: NestedDropoutConfig, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """The prefix length (b,) each sample of a batch keeps under nested dropout, or None when ``prob`` is 0.

    With probability ``prob`` a sample keeps a length drawn from ``lengths`` (uniform in [min_length, N], or
    a normal of mean ``mean * N`` and deviation ``std * N`` truncated to [min_length - 0.5, N + 0.5] and
    rounded), else all N. The uniform default draws exactly as larp 0.2 did (same calls, same numbers).
    """
    if prob <= 0:
        return None
    n, low = num_tokens, lengths.min_length
    if lengths.distribution == "uniform":
        keep = torch.randint(low, n + 1, (batch,), device=device, generator=generator)
    else:
        draw = torch.empty(batch, device=device)
        torch.nn.init.trunc_normal_(draw, mean=lengths.mean * n, std=lengths.std * n, a=low - 0.5, b=n + 0.5,
                                    generator=generator)
        keep = draw.round().long().clamp_(low, n)
    dropped = torch.rand(batch, device=device, generator=generator) < prob
    return torch.where(dropped, keep, torch.full_like(keep, n))


def validation_lengths(recipe: TokenizerTrainConfig) -> list[int]:
    """The prefix lengths whose PSNR validation logs (``val_psnr@k``): none without nested dropout;
    ``nested_dropout.val_lengths``, or N/8, N/4, N/2 and N."""
    if not recipe.model.nested_dropout:
        return []
    n = recipe.model.num_tokens
    chosen = recipe.nested_dropout.val_lengths or (n // 8, n // 4, n // 2, n)
    return sorted({k for k in chosen if k >= 1})


def optimizer_groups(tokenizer: LARPTokenizer, prior: LatentPrior | None, recipe: TokenizerTrainConfig) -> list[dict]:
    """Adam groups with their learning-rate multipliers: the tokenizer (x1), its holistic queries
    (``optim.query_lr_mult``) and the prior (``prior.lr_mult``, x50 in the paper, LARP.md B.4)."""
    queries = tokenizer.encoder_latent_query_embed
    rest = [param for _, param in sorted(tokenizer.named_parameters()) if param is not queries]
    groups = [{"params": rest, "lr_mult": 1.0, "name": "tokenizer"},
              {"params": [queries], "lr_mult": recipe.optim.query_lr_mult, "name": "queries"}]
    if prior is not None:
        groups.append({"params": [p for _, p in sorted(prior.named_parameters())], "lr_mult": recipe.prior.lr_mult,
                       "name": "prior"})
    return groups


# ------------------------------------------------------------------------------------------ the task
class TokenizerTask:
    """Models, optimizers, scalers and data of a tokenizer run, and its step, validation and export."""

    name, unit = "train-tokenizer", "clips"
    progress_keys = ("loss", "psnr", "batch_usage")

    def __init__(self, recipe: TokenizerTrainConfig, info: dist.DistInfo, run_dir: Path | None = None):
        self.recipe, self.info, self.run_dir = recipe, info, run_dir
        self.items_per_step = recipe.batch_size * recipe.optim.accumulation
        self.export_dir = run_dir / "tokenizer" if run_dir is not None else None
        device = info.device
        torch.manual_seed(recipe.seed)  # identical initial weights on every rank
        tokenizer = LARPTokenizer(recipe.model)
        prior = LatentPrior(recipe.prior_model) if recipe.prior.enabled else None
        self.core = TokenizerWithPrior(tokenizer, prior).to(device).train()
        # unused parameters in some steps: the nested-dropout mask embedding when no sample is truncated,
        # the prior while its loss weight is still 0
        unused = recipe.model.nested_dropout or (recipe.prior.enabled and recipe.prior.weight_delay > 0)
        self.model = dist.wrap(self.core, info, find_unused_parameters=unused)
        if recipe.compile:
            self.model = torch.compile(self.model)
        optim = recipe.optim
        self.g_opt = torch.optim.Adam(optimizer_groups(tokenizer, prior, recipe), lr=optim.lr, betas=optim.betas,
                                      weight_decay=optim.weight_decay)
        use_scaler = needs_grad_scaler(recipe.precision, device)
        self.g_scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

        self.discriminator: nn.Module | None = None  # DDP-wrapped when distributed
        self.d_opt: torch.optim.Optimizer | None = None
        self.d_scaler: torch.amp.GradScaler | None = None
        self.lecam: LeCam | None = None
        if recipe.loss.gan.disc_weight > 0:
            m = recipe.model
            d_config = replace(DISCRIMINATOR_PRESETS[recipe.discriminator_preset], frame_num=m.frame_num,
                               input_size=m.input_size, in_channels=m.in_channels,
                               temporal_patch_size=m.temporal_patch_size, patch_size=m.patch_size)
            discriminator = TransformerDiscriminator(d_config).to(device).train()
            self.discriminator = dist.wrap(discriminator, info)
            self.d_opt = torch.optim.Adam(discriminator.parameters(), lr=optim.disc_lr, betas=optim.betas)
            self.d_scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
            self.lecam = LeCam(recipe.loss.gan.lecam_decay).to(device)
        self.lpips: nn.Module | None = None
        if recipe.loss.perceptual_weight > 0:
            from larp.losses.perceptual import load_lpips

            self.lpips = load_lpips(recipe.loss.lpips_weights, device=device)
        self.ema = EMA(tokenizer, optim.ema_decay) if optim.ema_decay > 0 else None

        train, self.val, flip_in_stream = build_datasets(recipe.data, frames=recipe.model.frame_num,
                                                         size=recipe.model.input_size)
        self.stream = TrainStream(train, batch_size=recipe.batch_size, seed=recipe.seed, rank=info.rank,
                                  world_size=info.world_size, num_workers=recipe.data.num_workers, flip=flip_in_stream)
        self.code_counts = CodeCounts(recipe.model.quantizer.codebook_size, device)
        self.warned_usage = False

    @property
    def tokenizer(self) -> LARPTokenizer:
        return self.core.tokenizer

    # -------------------------------------------------------------------- checkpointed parts
    def weights(self) -> dict[str, Stateful]:
        parts: dict[str, Stateful] = {"tokenizer": self.core.tokenizer}
        if self.core.prior is not None:
            parts["prior"] = self.core.prior
        if self.discriminator is not None:
            parts["discriminator"] = dist.unwrap(self.discriminator)
            parts["lecam"] = self.lecam
        if self.ema is not None:
            parts["ema"] = self.ema
        return parts

    def training_state(self) -> dict[str, Stateful]:
        parts: dict[str, Stateful] = {"g_opt": self.g_opt, "g_scaler": self.g_scaler, "stream": self.stream,
                                      "code_counts": self.code_counts}
        if self.discriminator is not None:
            parts.update(d_opt=self.d_opt, d_scaler=self.d_scaler)
        return parts

    # -------------------------------------------------------------------- one step
    def train_step(self, step: int) -> Metrics:
        """One optimizer step of ``optim.accumulation`` micro-batches; metrics of this process as tensors."""
        recipe, device = self.recipe, self.info.device
        mult = lr_multiplier(step, recipe.optim.warmup_steps, recipe.steps, recipe.optim.min_lr_mult)
        set_lr(self.g_opt, recipe.optim.lr, mult)
        if self.d_opt is not None:
            set_lr(self.d_opt, recipe.optim.disc_lr, mult)
        p = recipe.prior
        ss_ratio = scheduled_sampling_ratio(step, recipe.steps, p.ss_max_ratio, p.ss_peak_fraction) if p.scheduled_sampling else 0.0
        quantize_from = recipe.codebook.continuous_warmup + 1
        bypass = step < quantize_from
        weight = prior_weight(recipe, step)
        accumulation = recipe.optim.accumulation
        metrics: Metrics = {}
        self.g_opt.zero_grad(set_to_none=True)
        for micro, sync in micro_batches(self.model, accumulation):
            video = next(self.stream)["video"].to(device, non_blocking=True)
            if step == quantize_from and micro == 0 and recipe.codebook.init_from_data:
                self.init_codebook(video)
            keep = self._keep_tokens(video.shape[0])
            with sync:
                with autocast(recipe.precision, device):
                    out, prior_out = self.model(video, keep_tokens=keep, ss_ratio=ss_ratio, bypass_quantization=bypass,
                                                use_prior=weight > 0, prior_rounds=p.rounds,
                                                prior_temperature=p.temperature, average_rounds=p.average_rounds)
                if micro == 0 and self.discriminator is not None and discriminator_step_due(step, recipe.loss.gan.disc_update_every):
                    metrics.update(self.discriminator_step(video, out.recon))
                total, terms = self.generator_losses(step, video, out, prior_out)
                self.g_scaler.scale(total / accumulation).backward()
            for name, value in {**terms, **self._code_metrics(out, prior_out, video)}.items():
                metrics[name] = metrics.get(name, 0) + value / accumulation
        norm = optimizer_step(self.g_opt, self.g_scaler, self.core.parameters(), recipe.optim.grad_clip)
        if norm is not None:
            metrics["grad_norm"] = norm
        if self.ema is not None:
            self.ema.update(self.tokenizer)
        # restarts only once the decoder reads the codes (quantization on): before, codes are not used
        if recipe.codebook.dead_code_restart and not bypass and step % recipe.codebook.restart_every == 0:
            metrics["codes_restarted"] = self.restart_dead_codes(out.quantized.z).sum().float()
        metrics.update(lr=recipe.optim.lr * mult, ss_ratio=ss_ratio, prior_weight=weight)
        if isinstance(self.stream, TrainStream):  # not when a benchmark or test feeds fixed batches
            metrics["skipped_videos"] = float(self.stream.skipped)
        return metrics

    def _keep_tokens(self, batch: int) -> torch.Tensor | None:
        """Nested dropout: each sample keeps a prefix drawn from ``nested_dropout`` with probability p."""
        return draw_keep_tokens(batch, self.recipe.model.num_tokens, self.recipe.nested_dropout_prob,
                                self.recipe.nested_dropout, self.info.device)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator update on real clips and detached reconstructions (b, c, t, h, w)."""
        with autocast(self.recipe.precision, real.device):
            logits = self.discriminator(torch.cat([real, fake.detach()]))
        logits_real, logits_fake = logits.float().chunk(2)
        loss = discriminator_objective(logits_real, logits_fake, self.lecam, self.recipe.loss.gan)
        self.d_opt.zero_grad(set_to_none=True)
        self.d_scaler.scale(loss).backward()
        self.d_scaler.step(self.d_opt)
        self.d_scaler.update()
        self.lecam.update(logits_real, logits_fake)
        return {"d_loss": loss.detach(), "d_real": logits_real.mean().detach(), "d_fake": logits_fake.mean().detach()}

    def generator_losses(
        self, step: int, video: torch.Tensor, out: TokenizerOutput, prior_out: PriorOutput | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total generator loss and its named terms, detached (LARP.md C.2)."""
        loss_cfg = self.recipe.loss
        recon = out.recon.float()
        terms: dict[str, torch.Tensor] = {"l1": (recon - video).abs().mean()}
        total = loss_cfg.l1_weight * terms["l1"]
        if loss_cfg.mse_weight > 0:
            terms["mse"] = F.mse_loss(recon, video)
            total = total + loss_cfg.mse_weight * terms["mse"]
        if self.lpips is not None:
            frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # (b, c, t, h, w) -> (b*t, c, h, w)
            terms["lpips"] = self.lpips(frames(recon), frames(video)).mean()
            total = total + loss_cfg.perceptual_weight * terms["lpips"]
        if self.discriminator is not None and step > loss_cfg.gan_start:
            discriminator = dist.unwrap(self.discriminator)
            discriminator.requires_grad_(False)  # D frozen: the G loss must not train it
            with autocast(self.recipe.precision, video.device):
                terms["g_gan"] = generator_loss(discriminator(out.recon).float())
            discriminator.requires_grad_(True)
            total = total + loss_cfg.gan.disc_weight * terms["g_gan"]
        terms["vq"] = out.quantized.loss
        total = total + loss_cfg.vq_weight * terms["vq"]
        if prior_out is not None:
            terms["prior_ce"] = prior_out.loss
            total = total + prior_weight(self.recipe, step) * prior_out.loss
        terms["loss"] = total
        return total, {k: v.detach() for k, v in terms.items()}

    def _code_metrics(self, out: TokenizerOutput, prior_out: PriorOutput | None, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Counts the micro-batch's codes (for dead-code restarts) and returns its code usage, perplexity,
        PSNR and prior accuracy."""
        usage, perplexity = code_statistics(self.code_counts.add(out.quantized.indices))
        metrics = {"batch_usage": usage, "perplexity": perplexity,
                   "psnr": psnr(video, out.recon.detach().float().clamp(0, 1)).mean()}
        if prior_out is not None:
            metrics.update(prior_top1=prior_out.top1, prior_top5=prior_out.top5)
        return metrics

    # -------------------------------------------------------------------- codebook care
    def init_codebook(self, video: torch.Tensor) -> None:
        """Set every code to a (noisy) latent of this batch (b, c, t, h, w), before its forward: codes start
        where the data is. Every process gets process 0's codebook."""
        with torch.no_grad():
            z = self.tokenizer.quantize(self.tokenizer.encode_features(video), stochastic=False).z
        self.tokenizer.bottleneck.regularizer.init_from_latents(z, broadcast_fn=dist.broadcast_fn(self.info))
        logger.info("codebook initialised from %d latents of the first batch", z.shape[0] * z.shape[1])

    def restart_dead_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Restart the codes used less than ``codebook.dead_threshold`` x the mean count since the last
        restart (counts summed over processes) from the latents ``z`` (b, n, c), and clear their Adam
        moments. Returns the (K,) bool mask of restarted codes."""
        quantizer = self.tokenizer.bottleneck.regularizer
        dead = quantizer.restart_dead_codes(
            z, self.code_counts.take(), threshold=self.recipe.codebook.dead_threshold,
            reduce_fn=dist.sum_fn(self.info), broadcast_fn=dist.broadcast_fn(self.info),
        )
        reset_optimizer_rows(self.g_opt, quantizer.embedding.weight, dead)
        return dead

    # -------------------------------------------------------------------- validation, samples, export
    @torch.no_grad()
    def evaluate(self, step: int, *, limit: int | None = None) -> dict[str, float]:
        """Validation with deterministic tokens: PSNR, codebook usage and perplexity, prior accuracy; for a
        nested-dropout model also the PSNR of the first k tokens, ``val_psnr@k`` (:func:`validation_lengths`)."""
        recipe, device, core = self.recipe, self.info.device, self.core
        tokenizer = core.tokenizer
        was_training = core.training
        core.eval()
        loader = torch.utils.data.DataLoader(self.val, batch_size=recipe.batch_size, num_workers=0, collate_fn=_collate_val)
        psnrs, top1, top5, seen = [], [], [], 0
        lengths = validation_lengths(recipe)
        at_length: dict[int, list[torch.Tensor]] = {k: [] for k in lengths}
        counts = torch.zeros(recipe.model.quantizer.codebook_size, device=device)
        for batch in loader:
            if batch is None:
                continue
            video = batch["video"].to(device)
            with autocast(recipe.precision, device):
                quantized = tokenizer.quantize(tokenizer.encode_features(video), stochastic=False)
                recon = tokenizer.decode_latents(tokenizer.bottleneck.codes_to_latents(quantized.codes), video.shape[2])
            psnrs.append(psnr(video, recon.float().clamp(0, 1)))
            n = recipe.model.num_tokens
            latents = tokenizer.bottleneck.codes_to_latents(quantized.codes) if lengths else None
            for k in lengths:
                if k == n:
                    at_length[k].append(psnrs[-1])
                    continue
                with autocast(recipe.precision, device):
                    recon_k = tokenizer.decode_latents(latents[:, :k], video.shape[2])
                at_length[k].append(psnr(video, recon_k.float().clamp(0, 1)))
            counts += torch.bincount(quantized.indices.flatten(), minlength=counts.numel()).float()
            if core.prior is not None:
                p = prior_loss(core.prior, quantized.codes, quantized.indices,
                               tokenizer.bottleneck.regularizer.normalized_codebook(), ss_ratio=0.0, rounds=1)
                top1.append(p.top1)
                top5.append(p.top5)
            seen += video.shape[0]
            if limit is not None and seen >= limit:
                break
        core.train(was_training)
        usage, perplexity = code_statistics(counts)
        result = {"val_psnr": torch.cat(psnrs).mean().item(), "val_usage": usage.item(), "val_perplexity": perplexity.item()}
        result.update({f"val_psnr@{k}": torch.cat(values).mean().item() for k, values in at_length.items()})
        if top1:
            result.update(val_prior_top1=torch.stack(top1).mean().item(), val_prior_top5=torch.stack(top5).mean().item())
        quantizing = step > recipe.codebook.continuous_warmup
        if quantizing and result["val_usage"] < recipe.codebook.usage_warn and not self.warned_usage:
            logger.warning("codebook usage %.1f%% is below %.1f%%: the codebook may be collapsing "
                           "(see codebook.init_from_data / dead_code_restart / prior.weight_delay)",
                           100 * result["val_usage"], 100 * recipe.codebook.usage_warn)
            self.warned_usage = True
        return result

    @torch.no_grad()
    def write_samples(self, step: int, count: int = 8) -> Path:
        """A grid of real clips (top row) and their reconstructions (bottom row), as gif and mp4."""
        tokenizer = self.tokenizer
        was_training = tokenizer.training
        tokenizer.eval()
        items = [self.val[i] for i in range(min(count, len(self.val)))]
        real = torch.stack([item["video"] for item in items if item is not None])
        recon = tokenizer.decode(tokenizer.encode(real.to(tokenizer.device)), num_frames=real.shape[2], clamp=True).float().cpu()
        tokenizer.train(was_training)
        grid = make_grid(torch.cat([real, recon]), nrow=real.shape[0])
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:08d}.gif"
        write_video(path, grid, fps=8)
        write_video(path.with_suffix(".mp4"), grid, fps=8)
        return path

    def export(self) -> None:
        """The final tokenizer (the EMA weights when EMA is on) as a save_pretrained folder, and the prior
        beside it (``RUN/prior``)."""
        tokenizer = self.tokenizer
        if self.ema is not None:
            exported = LARPTokenizer(tokenizer.config)
            exported.load_state_dict(tokenizer.state_dict())
            self.ema.copy_to(exported)
            tokenizer = exported
        tokenizer.save_pretrained(self.export_dir)
        if self.core.prior is not None:
            self.core.prior.save_pretrained(self.run_dir / "prior")
        logger.info("exported the tokenizer to %s", self.export_dir)

    def log_start(self) -> None:
        core, recipe, info = self.core, self.recipe, self.info
        parts = [f"tokenizer {core.tokenizer.num_parameters():,} parameters"]
        if core.prior is not None:
            parts.append(f"prior {sum(p.numel() for p in core.prior.parameters()):,}")
        if self.discriminator is not None:
            parts.append(f"discriminator {sum(p.numel() for p in self.discriminator.parameters()):,}")
        logger.info("%s; %d steps of %d clips x %d process(es) on %s, %s", ", ".join(parts), recipe.steps,
                    self.items_per_step, info.world_size, info.device, recipe.precision)


def _collate_val(items):
    items = [i for i in items if i is not None]
    if not items:
        return None
    return {"video": torch.stack([i["video"] for i in items])}


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
        run_dir: the run's folder: recipe.yaml, metrics.jsonl, checkpoints/, samples/, tokenizer/, prior/.
        resume: continue from the newest readable checkpoint in ``run_dir``.
        stop_after: stop (with a checkpoint) after this global step, as if killed; for tests.

    Returns:
        The folder of the exported tokenizer (``run_dir/tokenizer``).
    """
    run_dir = Path(run_dir)
    info = dist.init_distributed(device)
    lock = None
    try:
        lock = prepare_run_dir(run_dir, recipe, resume, info)
        dist.barrier(info)
        task = TokenizerTask(recipe, info, run_dir)
        trainer = Trainer(task, Cadence.of(recipe), info, run_dir=run_dir, progress=progress)
        trainer.start(resume=resume, seed=recipe.seed)
        if info.is_main:
            task.log_start()
        trainer.fit(stop_after)
        return trainer.export()
    finally:
        if lock is not None:
            lock.release()
        dist.cleanup(info)
