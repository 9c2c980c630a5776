"""The ViT video discriminator used to train the LARP tokenizer (LARP.md C.3).

Legend: b = batch, c = channels (3), t/h/w = frames/height/width, P = t'*h'*w' patch tokens, d = width.

    video (b,c,t,h,w) --Conv3d patchify--> (b,P,d) + fixed 3D sin-cos
      [cls; patches] (b,1+P,d) --ViT blocks--> CLS output (b,d) --LayerNorm(1e-6)--> --Linear(d,1)--> (b,)

Model only: the adversarial losses, LeCam and the update cadence live in ``larp.losses.gan``.
Module, parameter and buffer names equal the official state-dict keys, so official discriminator
weights (saved inside the official loss module's state dict) load strictly after prefix stripping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from larp.models.layers import Block, PatchEmbed3D, patch_grid, sincos_3d


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of the discriminator. Defaults are the LARP-L reproduce-script values (LARP.md C.3).

    The official yaml defaults (384 wide, 12 heads, 8 layers) are overridden by the reproduce script to
    512 / 8 / 12, which is what the released tokenizer was trained against.
    """

    frame_num: int = 16  # frames per clip the position table is built for
    input_size: int = 128  # frames are input_size x input_size
    in_channels: int = 3
    temporal_patch_size: int = 4
    patch_size: int = 8
    hidden_size: int = 512
    num_heads: int = 8
    depth: int = 12

    def __post_init__(self):
        problems = []
        if self.input_size % self.patch_size:
            problems.append(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.frame_num % self.temporal_patch_size:
            problems.append(
                f"frame_num {self.frame_num} is not a multiple of temporal_patch_size {self.temporal_patch_size}"
            )
        if self.hidden_size % 4:
            problems.append(f"hidden_size {self.hidden_size} must be divisible by 4 (3D sin-cos)")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if min(self.depth, self.frame_num, self.input_size) < 1:
            problems.append("depth, frame_num and input_size must be positive")
        if problems:
            raise ValueError("invalid DiscriminatorConfig: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int, int]:
        """(t', h', w') patch grid of a full clip."""
        return patch_grid(self.frame_num, self.input_size, self.temporal_patch_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w


# "larp-l": the discriminator the released LARP-L tokenizer was trained with (38,205,953 parameters).
# "larp-tiny": matches the "larp-tiny" tokenizer preset's clip shape (16 x 32 x 32), for CPU tests.
DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "larp-l": DiscriminatorConfig(),
    "larp-tiny": DiscriminatorConfig(input_size=32, hidden_size=64, num_heads=4, depth=2),
}


class BlockStack(nn.Module):
    """A plain stack of ViT blocks over one sequence (official ``transformer_encoder_fused``, LARP.md A.4).

    Unlike ``InContextTransformer`` there is no context/query split: every position is returned. It
    exists so that the block keys read ``transformer_encoder.blocks.{i}.*`` as in the official state dict.
    """

    def __init__(self, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d) -> (b, n, d)."""
        for block in self.blocks:
            x = block(x)
        return x


class TransformerDiscriminator(nn.Module):
    """ViT clip discriminator: one real/fake logit per video (LARP.md C.3).

    No spectral norm and no R1 penalty, as in the official model; regularisation is the LeCam term and the
    noisy targets of the loss.
    """

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        config = DiscriminatorConfig() if config is None else config
        self.config = config
        d = config.hidden_size
        patch = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.x_embedder = PatchEmbed3D(config.in_channels, d, patch)
        # Fixed table, stored in the state dict (the official checkpoint has it), shape (1, P, d).
        self.register_buffer("encoder_pos_embed", sincos_3d(d, *config.grid)[None])
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.transformer_encoder = BlockStack(d, config.depth, config.num_heads)
        # 1e-6 here (explicit in the official code); the blocks use 1e-5 (LARP.md A.4).
        self.norm_final = nn.LayerNorm(d, eps=1e-6)
        self.fc = nn.Linear(d, 1)
        self.init_weights()

    @classmethod
    def from_preset(cls, name: str) -> TransformerDiscriminator:
        """Build a randomly initialised discriminator from ``DISCRIMINATOR_PRESETS[name]``."""
        if name not in DISCRIMINATOR_PRESETS:
            raise ValueError(f"unknown discriminator preset {name!r}; choose from {sorted(DISCRIMINATOR_PRESETS)}")
        return cls(DISCRIMINATOR_PRESETS[name])

    def init_weights(self) -> None:
        """Initialisation of an untrained discriminator, as the official one (LARP.md C.3)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # xavier on the (1, 1, d) tensor itself: fan_in = 1*d, fan_out = 1*d, i.e. U(+-sqrt(3/d)).
        nn.init.xavier_uniform_(self.cls_token)
        # The conv is initialised like a Linear over the flattened patch (MAE convention).
        conv = self.x_embedder.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Score clips.

        Args:
            video: (b, c, t, h, w) float; real clips in [0, 1] or unclamped reconstructions. t is a
                positive multiple of ``temporal_patch_size`` and at most ``frame_num``; shorter clips use
                the first rows of the position table (t-major token order). h = w = ``input_size``.

        Returns:
            (b,) logits, positive meaning "real".
        """
        self._check_shape(video)
        x = self.x_embedder(video)  # (b, P_t, d)
        x = x + self.encoder_pos_embed[:, : x.shape[1]]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.transformer_encoder(torch.cat([cls, x], dim=1))  # (b, 1 + P_t, d)
        return self.fc(self.norm_final(x[:, 0])).squeeze(-1)

    def _check_shape(self, video: torch.Tensor) -> None:
        # Shape checks only (no value checks): fakes are unclamped and this runs every training step.
        c = self.config
        if video.ndim != 5:
            raise ValueError(f"expected a video of shape (b, {c.in_channels}, t, h, w), got {tuple(video.shape)}")
        _, ch, t, h, w = video.shape
        if ch != c.in_channels or (h, w) != (c.input_size, c.input_size):
            raise ValueError(
                f"expected (b, {c.in_channels}, t, {c.input_size}, {c.input_size}), got {tuple(video.shape)}"
            )
        if t < c.temporal_patch_size or t > c.frame_num or t % c.temporal_patch_size:
            raise ValueError(
                f"expected a number of frames that is a positive multiple of {c.temporal_patch_size} "
                f"and at most {c.frame_num}, got {t}"
            )
