"""LARP's training-time autoregressive prior: a small causal GPT over the 16-d quantized codes.

Reference: LARP.md section B. Legend: b = batch, n = tokens, c = code width (16), K = codebook size,
d = prior width.

The prior reads the (straight-through) quantized codes and predicts each next code as a unit vector.
Its loss is a cross-entropy over the codebook with cosine logits against the *detached* normalised
codebook: it shapes the encoder's latent space (gradients reach the encoder through the codes) and
fixes an order for the holistic tokens, but never moves the codebook. With scheduled sampling, a second
round replaces a growing share of the inputs by codes sampled from the first round's predictions.

Key names equal the official ``GPTC`` (``prior_model.*`` in official tokenizer checkpoints). A trained
prior is saved and loaded like the other models (``save_pretrained`` / ``from_pretrained``: a folder with
``config.json``, ``_class_name`` "LatentPrior", and ``model.safetensors``); the tokenizer trainer exports
one beside the tokenizer so that training can continue from both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from larp.hub import PretrainedMixin


@dataclass(frozen=True)
class PriorConfig:
    num_layers: int = 12
    num_heads: int = 6
    width: int = 384
    code_dim: int = 16  # the tokenizer's code width
    max_seq_len: int = 1024  # at least the tokenizer's token count
    dropout: float = 0.1  # embedding, attention and residual dropout (official: 0.1 each)

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"prior width {self.width} is not divisible by num_heads {self.num_heads}")


# The official GPTC sizes (models/gptc.py); LARP-L uses gptc-s (21.7M parameters).
PRIOR_PRESETS: dict[str, PriorConfig] = {
    "gptc-xxs": PriorConfig(num_layers=6, num_heads=4, width=256),
    "gptc-xs": PriorConfig(num_layers=6, num_heads=6, width=384),
    "gptc-s": PriorConfig(num_layers=12, num_heads=6, width=384),
    "gptc-m": PriorConfig(num_layers=12, num_heads=8, width=512),
    "gptc-b": PriorConfig(num_layers=12, num_heads=12, width=768),
    "gptc-l": PriorConfig(num_layers=24, num_heads=16, width=1024),
}


class CausalSelfAttention(nn.Module):
    """Causal attention with separate key/query/value projections (official names)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.key = nn.Linear(config.width, config.width)
        self.query = nn.Linear(config.width, config.width)
        self.value = nn.Linear(config.width, config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.resid_drop = nn.Dropout(config.dropout)
        self.num_heads = config.num_heads
        self.attn_dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d) -> (b, n, d)."""
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (b, n, d) -> (b, h, n, d/h)
            return t.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

        # Attention dropout only in training (the official prior also applies it in eval, LARP.md B.1).
        y = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=True,
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))


class PriorBlock(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width)
        self.ln2 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, 4 * config.width),
            nn.GELU(),
            nn.Linear(4 * config.width, config.width),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class LatentPrior(PretrainedMixin, nn.Module):
    """Continuous causal GPT: codes (b, n, c) -> unit-norm predictions of codes 1..n-1.

    Build with ``LatentPrior(PriorConfig(...))``, ``from_preset(name)`` or ``from_pretrained(folder)``.
    """

    config_class = PriorConfig
    presets = PRIOR_PRESETS

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.code_dim, config.width)
        self.pos_emb = nn.Parameter(torch.empty(1, config.max_seq_len, config.width))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(*[PriorBlock(config) for _ in range(config.num_layers)])
        self.ln_f = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.code_dim)
        self.init_weights()

    def init_weights(self) -> None:
        # Inside the official tokenizer every prior Linear is re-initialised xavier-uniform (LARP.md A.6).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_emb, std=0.02)

    def predict_next(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (b, n, c) -> (b, n-1, c) unit vectors; output j predicts code j+1 from codes 0..j."""
        inputs = codes[:, :-1]
        if inputs.shape[1] > self.config.max_seq_len:
            raise ValueError(f"prior max_seq_len {self.config.max_seq_len} < {inputs.shape[1]} input tokens")
        x = self.drop(self.input_proj(inputs) + self.pos_emb[:, : inputs.shape[1]])
        return F.normalize(self.head(self.ln_f(self.blocks(x))), dim=-1)


@dataclass
class PriorOutput:
    """loss: mean latent cross-entropy over rounds; top1/top5: next-token accuracy of round 0 (no grad)."""

    loss: torch.Tensor
    top1: torch.Tensor
    top5: torch.Tensor


def scheduled_sampling_ratio(step: int, total_steps: int, max_ratio: float = 0.5, peak_fraction: float = 0.3) -> float:
    """Share of round-2 inputs replaced by sampled codes: linear from 0 to ``max_ratio`` over the first
    ``peak_fraction`` of training, then constant (LARP.md B.3; ``step`` counts from 1)."""
    if total_steps <= 0 or peak_fraction <= 0:
        return max_ratio
    return min(step / (total_steps * peak_fraction) * max_ratio, max_ratio)


def prior_loss(
    prior: LatentPrior,
    codes: torch.Tensor,
    indices: torch.Tensor,
    codebook: torch.Tensor,
    *,
    ss_ratio: float,
    rounds: int = 2,
    temperature: float = 1.0,
    average_rounds: bool = True,
    generator: torch.Generator | None = None,
) -> PriorOutput:
    """The prior's latent cross-entropy with scheduled sampling (LARP.md B.2-B.3).

    Args:
        codes: (b, n, c) quantized codes carrying the straight-through gradient to the encoder.
        indices: (b, n) their code ids (the labels).
        codebook: (K, c) normalised codebook; detached here, so the prior never moves it.
        ss_ratio: probability that a round-2+ input position is replaced by a code sampled from the
            previous round's prediction (position 0 never is). One mask per call, shared by the rounds.
        rounds: prediction rounds (official 2); with ``average_rounds`` the loss averages all of them,
            else only the last counts.
        temperature: divides the cosine logits (official 1.0: a nearly flat softmax, LARP.md B.2).
    """
    codebook = codebook.detach().float()
    b, n, _ = codes.shape
    labels = indices[:, 1:]
    mask = torch.rand(b, n - 1, 1, device=codes.device, generator=generator) < ss_ratio
    inputs = codes
    all_logits = []
    for round_index in range(rounds):
        prediction = prior.predict_next(inputs).float()  # (b, n-1, c)
        logits = prediction @ codebook.t() / temperature  # (b, n-1, K)
        all_logits.append(logits)
        if round_index + 1 < rounds:
            with torch.no_grad(), torch.autocast(device_type=codes.device.type, enabled=False):
                probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
                sampled = codebook[torch.multinomial(probs, 1, generator=generator).view(b, n - 1)]
            replaced = torch.where(mask, sampled.to(codes.dtype), codes[:, 1:])
            inputs = torch.cat([codes[:, :1], replaced], dim=1)
    used = all_logits if average_rounds else all_logits[-1:]
    loss = torch.stack(
        [F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)) for logits in used]
    ).mean()
    with torch.no_grad():
        top5 = all_logits[0].topk(min(5, codebook.shape[0]), dim=-1).indices
        top1 = (top5[..., 0] == labels).float().mean()
        top5 = (top5 == labels[..., None]).any(-1).float().mean()
    return PriorOutput(loss, top1, top5)
