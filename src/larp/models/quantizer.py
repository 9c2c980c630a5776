"""LARP's bottleneck: a linear projection to a small space, then (stochastic) vector quantization.

Reference: LARP.md A.5. Legend: b = batch, n = tokens, d = model width, c = code width (16), K = codebook size.

Both the latents and the codebook are L2-normalised, so codes are chosen by cosine similarity:
deterministically by argmax, or stochastically by sampling from softmax(cos / temperature) (SVQ, the
paper's default for training, temperature 0.03). The quantized vectors pass gradients straight through
to the encoder; the codebook learns only from the codebook loss.

Codebook care (beyond the paper, for small runs): :meth:`VectorQuantizer.init_from_latents` and
:meth:`VectorQuantizer.restart_dead_codes`. Under data parallelism the caller passes ``reduce_fn`` (sum over
processes) and ``broadcast_fn`` (process 0's values to all); this module never imports torch.distributed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class QuantizerConfig:
    codebook_size: int = 8192
    code_dim: int = 16  # the official "bottleneck_dim"
    stochastic: bool = True  # training-time mode: sample codes (SVQ) or take the nearest; inference chooses per call
    temperature: float = 0.03  # softmax temperature of stochastic quantization
    commitment_weight: float = 0.25  # inside loss_q: 0.25 * commit + 1.0 * codebook (LARP.md A.5)
    codebook_weight: float = 1.0


@dataclass
class QuantizerOutput:
    """What the quantizer returns (tensors float32).

    Attributes:
        codes: (b, n, c) quantized unit vectors, with a straight-through gradient to ``z``.
        indices: (b, n) int64 code ids.
        z: (b, n, c) the L2-normalised inputs.
        loss: weighted VQ loss ``commitment_weight * commitment + codebook_weight * codebook``.
        commitment: mean((sg(q) - z)^2).
        codebook: mean((q - sg(z))^2).
    """

    codes: torch.Tensor
    indices: torch.Tensor
    z: torch.Tensor
    loss: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class VectorQuantizer(nn.Module):
    """Cosine-similarity VQ with an L2-normalised codebook (the official ``SimpleVectorQuantizer``).

    The codebook stays in float32 whatever dtype the model is cast to: in bf16 the argmax over 8192
    nearly-equal cosines would flip, and the official code runs all VQ math in fp32 (LARP.md A.10).
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.codebook_size, config.code_dim)

    def _apply(self, fn, recurse=True):
        original = self.embedding.weight.data  # a separate tensor object: survives the in-place conversion
        super()._apply(fn, recurse)
        moved = self.embedding.weight
        if original.dtype == torch.float32 and moved.dtype != torch.float32 and moved.is_floating_point():
            moved.data = original.to(device=moved.device)
        return self

    def normalized_codebook(self) -> torch.Tensor:
        """(K, c) float32 unit-norm codebook."""
        return F.normalize(self.embedding.weight.float(), dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(b, n) int ids -> (b, n, c) float32 unit-norm code vectors."""
        return F.normalize(self.embedding(indices).float(), dim=-1)

    # ------------------------------------------------------------------ codebook care
    @torch.no_grad()
    def init_from_latents(
        self, z: torch.Tensor, *, noise: float = 0.01,
        broadcast_fn: Callable[[torch.Tensor], torch.Tensor] = _identity,
    ) -> None:
        """Set every code to a latent of ``z`` drawn at random (with replacement), plus a little noise, so
        that codes start where the data is.

        Args:
            z: (..., c) latents (any scale: they are normalised here, as in :meth:`forward`).
            noise: std of the Gaussian noise added before normalising, so that codes drawn from the same
                latent differ.
            broadcast_fn: makes the new codebook (K, c) identical in every process (process 0's draws).
        """
        new = self._draw_codes(z, self.config.codebook_size, noise)
        self.embedding.weight.copy_(broadcast_fn(new.contiguous()))

    @torch.no_grad()
    def restart_dead_codes(
        self, z: torch.Tensor, counts: torch.Tensor, *, threshold: float, noise: float = 0.01,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] = _identity,
        broadcast_fn: Callable[[torch.Tensor], torch.Tensor] = _identity,
    ) -> torch.Tensor:
        """Move rarely used codes to recent latents; live codes are left untouched.

        A code is dead when its count is below ``threshold`` times the mean count. The new codes are unit
        vectors near latents of ``z`` drawn at random: the codebook is compared by cosine, so a unit vector
        near a live latent is all a restart needs. Runs without a host sync (no data-dependent shapes).

        Args:
            z: (..., c) recent latents.
            counts: (K,) how often each code was chosen since the last restart (this process).
            threshold: share of the mean count under which a code is dead.
            reduce_fn: sums ``counts`` over processes, so that every process finds the same dead codes.
            broadcast_fn: makes the new codebook identical in every process (process 0's draws).

        Returns:
            (K,) bool mask of the restarted codes.
        """
        counts = reduce_fn(counts.float().clone())
        dead = counts < threshold * counts.sum() / counts.numel()
        candidates = self._draw_codes(z, self.config.codebook_size, noise)
        weight = self.embedding.weight
        new = torch.where(dead[:, None], candidates.to(weight.dtype), weight)
        weight.copy_(broadcast_fn(new.contiguous()))
        return dead

    @staticmethod
    def _draw_codes(z: torch.Tensor, number: int, noise: float) -> torch.Tensor:
        """(number, c) unit vectors: latents of ``z`` (..., c) drawn with replacement, plus noise."""
        pool = F.normalize(z.detach().reshape(-1, z.shape[-1]).float(), dim=-1)
        picks = pool[torch.randint(0, pool.shape[0], (number,), device=pool.device)]
        return F.normalize(picks + noise * torch.randn_like(picks), dim=-1)

    def forward(
        self,
        z: torch.Tensor,
        *,
        stochastic: bool,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        bypass: bool = False,
    ) -> QuantizerOutput:
        """Quantize ``z`` (b, n, c) of any float dtype; all math runs in float32.

        Args:
            stochastic: sample codes from softmax(cos / temperature); otherwise take the argmax.
            temperature: overrides ``config.temperature`` for stochastic sampling.
            generator: RNG for reproducible stochastic sampling.
            bypass: pass the normalised ``z`` on unquantized (a continuous warm-up for small runs); ids
                and the VQ losses are still computed, so the codebook keeps learning towards the latents.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            codebook = self.normalized_codebook()
            cos = z.reshape(-1, z.shape[-1]) @ codebook.t()  # (b*n, K)
            temp = self.config.temperature if temperature is None else temperature
            probs = torch.softmax(cos * (1.0 / temp), dim=-1)
            if stochastic:
                indices = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                # The nearest code; taken on the probabilities, as the official code does, so that float32
                # near-ties (cosines within ~1e-9) resolve to the same index.
                indices = probs.argmax(dim=-1)
            indices = indices.view(z.shape[:-1])
            q = codebook[indices]
            commitment = F.mse_loss(z, q.detach())
            codebook_loss = F.mse_loss(q, z.detach())
            loss = self.config.commitment_weight * commitment + self.config.codebook_weight * codebook_loss
            codes = z if bypass else z + (q - z).detach()
        return QuantizerOutput(codes, indices, z, loss, commitment, codebook_loss)


class Bottleneck(nn.Module):
    """in_linear (d -> c), vector quantization, out_linear (c -> d_dec). Key names as the official module."""

    def __init__(self, in_dim: int, out_dim: int, config: QuantizerConfig):
        super().__init__()
        self.in_linear = nn.Linear(in_dim, config.code_dim)
        self.out_linear = nn.Linear(config.code_dim, out_dim)
        self.regularizer = VectorQuantizer(config)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """(b, n, c) float32 codes -> (b, n, d_dec) decoder latents in the module's dtype."""
        return self.out_linear(codes.to(self.out_linear.weight.dtype))
