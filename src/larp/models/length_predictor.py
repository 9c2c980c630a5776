"""A learned length predictor: the quality each token budget would give a window, without decoding.

For a nested-dropout tokenizer (one that decodes any prefix of its N tokens) the smallest prefix that meets a
quality target, or the best way to share a token budget across windows, can be found by decoding every
candidate prefix. This small head predicts that whole rate-quality curve from the frozen tokenizer's encoder
outputs instead, so lengths are chosen with one encoder pass and no decoding.

    features (b, N, d_enc) --LayerNorm + Linear + GELU--> x (b, N, token_dim)
      for each candidate k_j: [mean of x over all N; mean of x over the first k_j; embedding of j]
      --one MLP shared by the candidates--> raw (b, C)
      --first value + cumulative softplus steps--> monotone curve (normalised)
      --x target_scale + target_mean--> predicted quality per candidate (b, C)

What a prefix of k tokens holds is summarised by the mean of its first k (projected) tokens, next to the mean of
all N (what the window holds): a few thousand parameters shared by every candidate, which generalise from a few
thousand labelled windows where a head over the flattened tokens learns them by heart. The curve is monotone
by construction (PSNR rises, LPIPS falls with more tokens), which the length search and the budget allocation
rely on. ``metric``: ``"psnr"`` (dB, the default), ``"mse"`` (learned as PSNR, returned as
MSE = 10^(-PSNR/10)) or ``"lpips"``.

The model knows nothing of training: ``larp train-budget`` (:mod:`larp.training.budget_trainer`) fits it and
sets ``target_mean`` / ``target_scale`` from its labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from larp.hub import PretrainedMixin

__all__ = ["LENGTH_METRICS", "LengthPredictor", "LengthPredictorConfig"]

#: metric -> +1 when more tokens give a higher value (PSNR), -1 when lower (MSE, LPIPS)
LENGTH_METRICS: dict[str, int] = {"psnr": 1, "mse": -1, "lpips": -1}


@dataclass(frozen=True)
class LengthPredictorConfig:
    """Architecture of a :class:`LengthPredictor` and the tokenizer it reads."""

    num_tokens: int = 32  # the tokenizer's N
    feature_dim: int = 128  # the tokenizer's encoder_hidden_size
    candidates: tuple[int, ...] = (2, 4, 8, 16, 32)  # prefix lengths whose quality is predicted, increasing
    metric: str = "psnr"  # "psnr" (dB), "mse" or "lpips"
    token_dim: int = 32  # width of each token after the first projection
    hidden_size: int = 128
    depth: int = 2  # hidden layers of the MLP
    tokenizer: str = ""  # sha256 fingerprint of the tokenizer the labels were measured with ("" unknown)

    def __post_init__(self):
        problems = []
        if self.metric not in LENGTH_METRICS:
            problems.append(f"metric {self.metric!r} is not one of {sorted(LENGTH_METRICS)}")
        c = list(self.candidates)
        if not c or c != sorted(set(c)) or c[0] < 1 or c[-1] > self.num_tokens:
            problems.append(f"candidates {c} must be increasing lengths in [1, num_tokens={self.num_tokens}]")
        if min(self.num_tokens, self.feature_dim, self.token_dim, self.hidden_size, self.depth) < 1:
            problems.append("num_tokens, feature_dim, token_dim, hidden_size and depth must be positive")
        if problems:
            raise ValueError("invalid LengthPredictorConfig: " + "; ".join(problems))


class LengthPredictor(PretrainedMixin, nn.Module):
    """Predicts, per window, the quality decoding each candidate prefix would give (see the module doc).

    Satisfies the predictor protocol of :func:`larp.budget.adaptive_encode`: ``candidates``, ``metric`` and
    ``predict(tokenizer, windows) -> (b, C)``.
    """

    config_class = LengthPredictorConfig
    presets: dict = {}

    def __init__(self, config: LengthPredictorConfig):
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.feature_dim)
        self.token_proj = nn.Linear(config.feature_dim, config.token_dim)
        self.length_embed = nn.Embedding(len(config.candidates), config.token_dim)
        layers: list[nn.Module] = []
        width = 3 * config.token_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden_size), nn.GELU()]
            width = config.hidden_size
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        # label statistics (set by the trainer): the head works in normalised units
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))

    @property
    def candidates(self) -> list[int]:
        return list(self.config.candidates)

    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(b, N, d_enc) encoder outputs -> (b, C) predicted curve in training units (PSNR dB for "psnr" and
        "mse", LPIPS for "lpips"), monotone in the candidate length."""
        c = self.config
        if features.ndim != 3 or features.shape[1:] != (c.num_tokens, c.feature_dim):
            raise ValueError(f"expected encoder features of shape (batch, {c.num_tokens}, {c.feature_dim}), "
                             f"got {tuple(features.shape)}")
        x = F.gelu(self.token_proj(self.norm(features.to(self.head.weight.dtype))))  # (b, N, e)
        b, count = x.shape[0], len(c.candidates)
        lengths = torch.tensor(c.candidates, device=x.device)
        position = torch.arange(c.num_tokens, device=x.device)
        weights = (position[None] < lengths[:, None]).to(x.dtype) / lengths[:, None].to(x.dtype)  # (C, N) prefix means
        prefixes = torch.einsum("cn,bne->bce", weights, x)  # (b, C, e)
        whole = x.mean(dim=1, keepdim=True).expand(b, count, -1)
        position = self.length_embed.weight.to(x.dtype)[None].expand(b, -1, -1)
        raw = self.head(self.mlp(torch.cat([whole, prefixes, position], dim=-1))).squeeze(-1)  # (b, C)
        steps = F.softplus(raw[:, 1:])
        sign = 1.0 if c.metric in ("psnr", "mse") else -1.0
        curve = torch.cat([raw[:, :1], raw[:, :1] + sign * steps.cumsum(dim=1)], dim=1)
        return self.target_mean + self.target_scale * curve

    def to_metric(self, curve: torch.Tensor) -> torch.Tensor:
        """Training units -> the metric's units (only "mse" differs: PSNR dB -> MSE)."""
        return torch.pow(10.0, -curve / 10.0) if self.config.metric == "mse" else curve

    def check_tokenizer(self, tokenizer) -> None:
        """Raise ValueError when ``tokenizer`` is not shaped like the one this predictor was trained on."""
        t, c = tokenizer.config, self.config
        if (t.num_tokens, t.encoder_hidden_size) != (c.num_tokens, c.feature_dim):
            raise ValueError(f"this length predictor reads {c.num_tokens} encoder outputs of width {c.feature_dim}; "
                             f"the tokenizer has {t.num_tokens} of width {t.encoder_hidden_size}: train one for it "
                             f"with `larp train-budget --tokenizer ...`")

    @torch.no_grad()
    def predict(self, tokenizer, windows: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted quality of each candidate prefix, in the metric's units, with no decoding.

        Args:
            tokenizer: the frozen LARP tokenizer the predictor was trained on.
            windows: (b, 3, t, h, w) clips in [0, 1] the tokenizer takes.

        Returns:
            (b, C) float32 on the CPU, column j for ``candidates[j]``.
        """
        self.check_tokenizer(tokenizer)
        if not isinstance(windows, torch.Tensor) or windows.ndim != 5:
            raise ValueError(f"expected windows of shape (b, 3, t, h, w), got {getattr(windows, 'shape', windows)}")
        out = []
        for start in range(0, windows.shape[0], batch_size):
            chunk = windows[start : start + batch_size].to(device=tokenizer.device, dtype=tokenizer.dtype)
            features = tokenizer.encode_features(chunk).to(self.device)
            out.append(self.to_metric(self(features)).float().cpu())
        return torch.cat(out)
