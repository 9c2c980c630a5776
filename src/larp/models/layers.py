"""Building blocks shared by the LARP models: sin-cos position tables, the 3D patch embedding, the ViT block.

Tensor legend: b = batch, n = sequence length, d = channels, t'/h'/w' = patch-grid sizes.

The sin-cos tables follow LARP.md A.3 (MAE convention): sines then cosines (not interleaved), spatial
channels are [column code | row code], and the temporal code spans the full width and is *added*.
They are computed in float64 and cast to float32, as the official code does with numpy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ViT blocks of the released checkpoints ran with torch.nn.LayerNorm's default eps (timm <= 1.0.15),
# not timm's later 1e-6: see LARP.md A.4.
BLOCK_NORM_EPS = 1e-5


# Inputs outside [-VALUE_MARGIN, 1 + VALUE_MARGIN] are rejected: they are almost surely [0, 255] or
# [-1, 1] videos, which a model silently turns into garbage. Small overshoots (e.g. an unclamped
# reconstruction fed back in) are fine.
VALUE_MARGIN = 0.25


def check_unit_range(video: torch.Tensor) -> None:
    """Raise ValueError unless the values lie in [0, 1] (within VALUE_MARGIN); NaN fails too."""
    lo, hi = torch.stack(video.aminmax()).tolist()  # one host sync for both bounds
    if not (lo >= -VALUE_MARGIN and hi <= 1 + VALUE_MARGIN):
        raise ValueError(
            f"expected video values in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
            f"(divide uint8 frames by 255; map [-1, 1] videos with (x + 1) / 2)"
        )


def patch_grid(frame_num: int, input_size: int, temporal_patch: int, patch: int) -> tuple[int, int, int]:
    """(t', h', w') grid of non-overlapping patches over a frame_num x input_size x input_size clip."""
    side = input_size // patch
    return frame_num // temporal_patch, side, side


def sincos_1d(dim: int, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """1D sin-cos table.

    Args:
        dim: channels, even.
        positions: (n,) positions (any real dtype).
        base: the frequency base (``latent_pe_scale_factor`` in the official config).

    Returns:
        (n, dim) float64: ``[sin(p * w_0..w_{dim/2-1}), cos(p * w_0..)]`` with ``w_k = base^(-k / (dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / base**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """3D sin-cos table for patch tokens ordered t-major, then rows, then columns.

    Returns:
        (grid_t * grid_h * grid_w, dim) float32. Token (t', i, j) gets
        ``concat(emb_{dim/2}(j), emb_{dim/2}(i)) + emb_dim(t')``.
    """
    if dim % 4:
        raise ValueError(f"3D sin-cos embedding needs a width divisible by 4, got {dim}")
    t, i, j = torch.meshgrid(
        torch.arange(grid_t), torch.arange(grid_h), torch.arange(grid_w), indexing="ij"
    )
    spatial = torch.cat(
        [sincos_1d(dim // 2, j.flatten()), sincos_1d(dim // 2, i.flatten())], dim=1
    )
    temporal = sincos_1d(dim, t.flatten())
    return (spatial + temporal).float()


def sincos_sequence(dim: int, length: int, base: float = 10000.0) -> torch.Tensor:
    """(length, dim) float32 1D sin-cos table over positions 0..length-1."""
    return sincos_1d(dim, torch.arange(length), base).float()


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches by a strided Conv3d: (b,c,t,h,w) -> (b, P, d), t-major token order.

    Shared by the tokenizer and the discriminator (both call it ``x_embedder``, as the official code).
    """

    def __init__(self, in_channels: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (no qkv bias), as timm's ViT.

    The qkv weight rows are [q; k; v], each head-major, so official weights load unchanged.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d) -> (b, n, d); full bidirectional attention."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block (timm ``Block`` with qkv_bias=False, no LayerScale, no drop-path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class InContextTransformer(nn.Module):
    """A stack of ViT blocks over ``[context; queries]`` that returns the query positions.

    This is LARP's "parallel" transformer: context and queries share one self-attention sequence with no
    mask (no cross-attention), and only the outputs at the query positions are kept. The encoder uses
    patches as context and the holistic queries as queries; the decoder uses the latents as context and
    the patch queries as queries.
    """

    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])

    def forward(self, context: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """context: (b, n_ctx, d), queries: (b, n_q, d) -> (b, n_q, d)."""
        x = torch.cat([context, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return x[:, context.shape[1] :]
