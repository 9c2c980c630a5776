"""Training the learned length predictor post hoc on a frozen nested-dropout tokenizer (``larp train-budget``).

1. **Labels, measured by decoding.** Training and held-out windows are encoded once; every candidate prefix of
   every window is decoded in batches (:func:`larp.budget.measure_quality`), giving each window's measured
   rate-quality curve (C values). The frozen encoder's outputs are kept with it: the predictor's inputs.
2. **Regression**, a :class:`PredictorTask` of the one loop (:class:`larp.training.loop.Trainer`, without a
   run folder, as the detector's training): AdamW with warmup + cosine on the squared error in normalised
   units (labels centred and scaled by their mean and standard deviation, kept in the model). The tokenizer
   is not touched and its features are precomputed, so a step costs a few milliseconds and the run
   needs no checkpoints (a killed run is started again; the labels are most of its time).
3. **Report** on the held-out windows (:func:`larp.evaluation.budget.predictor_quality`): the mean absolute
   error (dB for PSNR) and the quality lost against the exact search, scored on the measured curves: for
   quality targets, the share of windows meeting the target and the mean tokens, predicted vs exact; for mean
   budgets, the mean quality of the predicted allocation vs the exact one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from larp.budget import candidate_lengths, measure_quality, require_nested_dropout
from larp.evaluation.budget import predictor_quality
from larp.models.length_predictor import LENGTH_METRICS, LengthPredictor, LengthPredictorConfig
from larp.precision import autocast
from larp.training.distributed import DistInfo
from larp.training.loop import Cadence, Trainer
from larp.training.optim import lr_multiplier

__all__ = ["BudgetTrainConfig", "PredictorTask", "label_windows", "train_length_predictor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetTrainConfig:
    """Settings of one ``larp train-budget`` run."""

    metric: str = "psnr"  # "psnr" (dB), "mse" or "lpips" (needs the LPIPS weights)
    candidate_step: int | None = None  # candidates step, 2*step, ..., N (default N // 16)
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    token_dim: int = 32
    hidden_size: int = 128
    depth: int = 2
    seed: int = 0
    measure_batch_size: int = 256  # prefixes decoded at once while measuring the labels

    def __post_init__(self):
        if self.metric not in LENGTH_METRICS:
            raise ValueError(f"metric must be one of {sorted(LENGTH_METRICS)}, got {self.metric!r}")
        for name in ("steps", "batch_size", "token_dim", "hidden_size", "depth", "measure_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")


def label_windows(tokenizer, windows: torch.Tensor, candidates: list[int], metric: str, *, batch_size: int = 256,
                  precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The predictor's inputs and labels for ``windows`` (n, 3, t, h, w).

    Returns:
        features (n, N, d_enc) float32 and curves (n, C) float32 in training units (PSNR dB for "psnr" and
        "mse", LPIPS for "lpips"), both on the CPU; each curve measured by decoding every candidate prefix.
    """
    measured = "lpips" if metric == "lpips" else "psnr"  # MSE is learned as PSNR = -10 log10(MSE)
    features, ids = [], []
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size].to(tokenizer.device)
            with autocast(precision, tokenizer.device):
                f = tokenizer.encode_features(chunk)
                ids.append(tokenizer.quantize(f, stochastic=False).indices.cpu())
            features.append(f.float().cpu())
    ids = torch.cat(ids)
    curves = measure_quality(tokenizer, windows, candidates, metric=measured, ids=ids, batch_size=batch_size,
                             precision=precision)
    return torch.cat(features), curves.float()


class PredictorTask:
    """Regression of measured curves on frozen encoder features, for :class:`larp.training.loop.Trainer`."""

    name, unit = "train-budget", "windows"
    progress_keys = ("loss", "mae")
    export_dir = None

    def __init__(self, model: LengthPredictor, features: torch.Tensor, curves: torch.Tensor,
                 val_features: torch.Tensor, val_curves: torch.Tensor, config: BudgetTrainConfig):
        self.model, self.config = model, config
        self.features, self.curves = features.to(model.device), curves.to(model.device)
        self.val_features, self.val_curves = val_features.to(model.device), val_curves.to(model.device)
        self.items_per_step = min(config.batch_size, len(features))
        self.generator = torch.Generator().manual_seed(config.seed)
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": rest, "weight_decay": 0.0}], lr=config.lr)
        self.history: list[dict[str, float]] = []  # held-out MAE at each validation

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        c = self.config
        mult = lr_multiplier(step, min(c.warmup_steps, c.steps // 10), c.steps, 0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr * mult
        pick = torch.randint(len(self.features), (self.items_per_step,), generator=self.generator)
        target = self.curves[pick.to(self.curves.device)]
        predicted = self.model(self.features[pick.to(self.features.device)])
        scale = self.model.target_scale
        loss = ((predicted - target) / scale).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "mae": (predicted - target).abs().mean().detach(), "lr": c.lr * mult}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        self.model.eval()
        mae = (self.model(self.val_features) - self.val_curves).abs().mean().item()
        self.model.train()
        self.history.append({"step": step, "val_mae": mae})
        return {"val_mae": mae}

    def write_samples(self, step: int) -> None:
        pass

    def export(self) -> None:
        pass

    def weights(self) -> dict[str, Any]:
        return {"predictor": self.model}

    def training_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer}


def train_length_predictor(tokenizer, train: torch.Tensor, held_out: torch.Tensor, config: BudgetTrainConfig, *,
                           tokenizer_id: str = "", targets: tuple[float, ...] = (), means: tuple[int, ...] = (),
                           precision: str = "auto", progress: bool = False) -> tuple[LengthPredictor, dict[str, Any]]:
    """Fit a :class:`LengthPredictor` to ``tokenizer`` on the ``train`` windows; score it on ``held_out``.

    Args:
        tokenizer: a frozen nested-dropout LARP tokenizer.
        train, held_out: (n, 3, t, h, w) windows in [0, 1].
        tokenizer_id: the tokenizer's fingerprint, recorded in the predictor's config.
        targets: quality targets for the report (default: the held-out mean quality at a quarter, half and
            three quarters of the candidates); means: mean budgets (default: N/8, N/4, N/2).

    Returns:
        The trained predictor (eval mode, on the tokenizer's device) and its report (JSON-able): labels,
        timings, the held-out MAE history and :func:`larp.evaluation.budget.predictor_quality`.
    """
    import time

    require_nested_dropout(tokenizer)
    n_tokens = tokenizer.config.num_tokens
    candidates = candidate_lengths(n_tokens, config.candidate_step)
    started = time.perf_counter()
    features, curves = label_windows(tokenizer, train, candidates, config.metric,
                                     batch_size=config.measure_batch_size, precision=precision)
    val_features, val_curves = label_windows(tokenizer, held_out, candidates, config.metric,
                                             batch_size=config.measure_batch_size, precision=precision)
    labelled = time.perf_counter() - started

    model_config = LengthPredictorConfig(num_tokens=n_tokens, feature_dim=tokenizer.config.encoder_hidden_size,
                                         candidates=tuple(candidates), metric=config.metric,
                                         token_dim=config.token_dim, hidden_size=config.hidden_size,
                                         depth=config.depth, tokenizer=tokenizer_id)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's random state is left as it was
        torch.manual_seed(config.seed)
        model = LengthPredictor(model_config)
    model.target_mean.fill_(curves.mean().item())
    model.target_scale.fill_(max(curves.std().item(), 1e-6))
    model.to(tokenizer.device).train()
    task = PredictorTask(model, features, curves, val_features, val_curves, config)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=model.device)
    cadence = Cadence(config.steps, log_every=50, eval_every=max(1, config.steps // 5))
    trained = time.perf_counter()
    Trainer(task, cadence, info, progress=progress).fit()
    model.eval()
    trained = time.perf_counter() - trained

    with torch.no_grad():
        predicted = model(val_features.to(model.device)).cpu().double()
    measured = val_curves.double()
    metric = "lpips" if config.metric == "lpips" else "psnr"  # the report is in training units (dB for mse)
    if not targets:
        mean_curve = measured.mean(dim=0)
        targets = tuple(round(float(mean_curve[j]), 1) for j in (len(candidates) // 4, len(candidates) // 2,
                                                                 3 * len(candidates) // 4))
    if not means:
        means = tuple(sorted({max(candidates[0], n_tokens // d) for d in (8, 4, 2)}))
    report = {
        "metric": config.metric,
        "report_units": "PSNR dB" if metric == "psnr" else "LPIPS",
        "candidates": candidates,
        "train_windows": len(train),
        "held_out_windows": len(held_out),
        "label_seconds": round(labelled, 1),
        "train_seconds": round(trained, 1),
        "history": task.history,
        "held_out": predictor_quality(measured, predicted, candidates, metric=metric, targets=targets, means=means),
    }
    return model, report


def windows_from(dataset: Dataset, count: int, *, seed: int = 0) -> torch.Tensor:
    """The first ``count`` readable clips of a dataset of ``{"video": ...}`` items (None items skipped), stacked.

    Random clip starts draw from torch's global RNG, seeded here under a fork (the caller's state is kept).
    """
    clips = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index in range(len(dataset)):
            item = dataset[index]
            if item is not None and not isinstance(item, Exception) and isinstance(item, dict):
                clips.append(item["video"])
            if len(clips) == count:
                break
    if not clips:
        raise ValueError("no readable clip in the data: see the warnings above")
    if len(clips) < count:
        logger.warning("only %d readable clips (asked for %d)", len(clips), count)
    return torch.stack(clips)
