"""The LARP video tokenizer: patches + learned holistic queries -> discrete tokens -> video.

Paper: Wang et al., "LARP: Tokenizing Videos with a Learned Autoregressive Generative Prior", ICLR 2025.
Reference for every number and name here: LARP.md section A.

Legend: b = batch, c = channels (3), t/h/w = frames/height/width, t'/h'/w' = patch grid,
P = t'*h'*w' patch tokens, N = holistic tokens, d = model width.

    video (b,c,t,h,w) --Conv3d patchify--> (b,P,d) + 3D sin-cos
      [patches; queries(N,d)] --encoder blocks--> query outputs (b,N,d)
      --in_linear--> (b,N,16) --L2 norm + VQ--> ids (b,N), codes (b,N,16) --out_linear--> latents (b,N,d)
      [latents + 1D sin-cos; patch queries = 3D sin-cos + type embedding] --decoder blocks--> (b,P,d)
      --LayerNorm + Linear--> (b,P,pt*p*p*c) --unpatchify--> video (b,c,t,h,w)

Module, parameter and buffer names equal the official state-dict keys (LARP.md A.7), so released
checkpoints load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from larp.compat import official
from larp.config import config_from_dict, config_to_dict
from larp.hub import PretrainedMixin
from larp.models.layers import (
    InContextTransformer,
    PatchEmbed3D,
    check_unit_range,
    patch_grid,
    sincos_3d,
    sincos_sequence,
)
from larp.models.quantizer import Bottleneck, QuantizerConfig, QuantizerOutput


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of a LARP tokenizer. Defaults are the released LARP-L configuration."""

    frame_num: int = 16  # frames per clip the model is built for
    input_size: int = 128  # frames are input_size x input_size
    in_channels: int = 3
    temporal_patch_size: int = 4
    patch_size: int = 8
    num_tokens: int = 1024  # holistic tokens per clip (official: bottleneck_token_num)
    encoder_hidden_size: int = 768
    encoder_num_heads: int = 12
    encoder_depth: int = 12
    decoder_hidden_size: int = 768
    decoder_num_heads: int = 12
    decoder_depth: int = 12
    latent_pe_base: float = 10000.0  # base of the decoder's 1D latent sin-cos (official: latent_pe_scale_factor)
    query_init_std: float = 0.02
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    # Beyond the paper: a learned mask embedding stands in for dropped tail tokens, so a model trained with
    # nested (tail) token dropout decodes from any prefix of its tokens. Adds `decoder_mask_token`.
    nested_dropout: bool = False

    def __post_init__(self):
        problems = []
        if self.input_size % self.patch_size:
            problems.append(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.frame_num % self.temporal_patch_size:
            problems.append(
                f"frame_num {self.frame_num} is not a multiple of temporal_patch_size {self.temporal_patch_size}"
            )
        for part in ("encoder", "decoder"):
            width, heads = getattr(self, f"{part}_hidden_size"), getattr(self, f"{part}_num_heads")
            if width % 4:
                problems.append(f"{part}_hidden_size {width} must be divisible by 4 (3D sin-cos)")
            if width % heads:
                problems.append(f"{part}_hidden_size {width} is not divisible by {part}_num_heads {heads}")
        if min(self.num_tokens, self.encoder_depth, self.decoder_depth, self.quantizer.codebook_size) < 1:
            problems.append("num_tokens, depths and codebook_size must be positive")
        if problems:
            raise ValueError("invalid TokenizerConfig: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int, int]:
        """(t', h', w') patch grid of a full clip."""
        return patch_grid(self.frame_num, self.input_size, self.temporal_patch_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def patch_dim(self) -> int:
        """Values per patch: pt * p * p * c."""
        return self.temporal_patch_size * self.patch_size**2 * self.in_channels


# Named architectures. "larp-l" is the released LARP-L(-Long) tokenizer (172,179,984 parameters);
# the small ones are for CPU work: tests, smoke runs and the demo.
TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    "larp-l": TokenizerConfig(),
    "larp-small": TokenizerConfig(
        input_size=64,
        num_tokens=256,
        encoder_hidden_size=256,
        encoder_num_heads=4,
        encoder_depth=4,
        decoder_hidden_size=256,
        decoder_num_heads=4,
        decoder_depth=4,
        quantizer=QuantizerConfig(codebook_size=1024),
    ),
    "larp-tiny": TokenizerConfig(
        input_size=32,
        num_tokens=32,
        encoder_hidden_size=64,
        encoder_num_heads=4,
        encoder_depth=2,
        decoder_hidden_size=64,
        decoder_num_heads=4,
        decoder_depth=2,
        quantizer=QuantizerConfig(codebook_size=256),
    ),
}


class OutputLayer(nn.Module):
    """LayerNorm (eps 1e-6, as the official final layer) + linear to patch values."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x))


@dataclass
class TokenizerOutput:
    """Result of a full forward pass (training).

    Attributes:
        recon: (b, c, t, h, w) raw decoder output (not clamped).
        quantized: the quantizer's output: ids, codes (straight-through), normalised z and VQ losses.
        latents: (b, N, d_dec) decoder-side latents (after out_linear).
    """

    recon: torch.Tensor
    quantized: QuantizerOutput
    latents: torch.Tensor


def sincos_buffers(config: TokenizerConfig) -> dict[str, torch.Tensor]:
    """The three fixed position tables, with their official names and shapes (1, n, d), float32."""
    grid = config.grid
    return {
        "encoder_patch_pe": sincos_3d(config.encoder_hidden_size, *grid)[None],
        "decoder_latent_pe": sincos_sequence(
            config.decoder_hidden_size, config.num_tokens, config.latent_pe_base
        )[None],
        "decoder_patch_query_embed": sincos_3d(config.decoder_hidden_size, *grid)[None],
    }


class LARPTokenizer(PretrainedMixin, nn.Module):
    """LARP tokenizer. Videos are float tensors in [0, 1], layout (b, c, t, h, w); ids are int64 (b, N).

    Build with ``LARPTokenizer(TokenizerConfig(...))``, ``from_preset(name)`` or ``from_pretrained(path_or_id)``.
    """

    config_class = TokenizerConfig
    presets = TOKENIZER_PRESETS
    # Training-time prior weights ship inside official tokenizer checkpoints; inference ignores them.
    ignored_checkpoint_prefixes = ("prior_model.",)

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        enc, dec = config.encoder_hidden_size, config.decoder_hidden_size
        self.encoder_latent_query_embed = nn.Parameter(torch.empty(config.num_tokens, enc))
        self.decoder_patch_query_token_type_embed = nn.Parameter(torch.empty(1, 1, dec))
        for name, table in sincos_buffers(config).items():
            self.register_buffer(name, table)
        patch = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.x_embedder = PatchEmbed3D(config.in_channels, enc, patch)
        self.encoder = InContextTransformer(enc, config.encoder_depth, config.encoder_num_heads)
        self.bottleneck = Bottleneck(enc, dec, config.quantizer)
        self.decoder = InContextTransformer(dec, config.decoder_depth, config.decoder_num_heads)
        self.final_layer = OutputLayer(dec, config.patch_dim)
        if config.nested_dropout:
            self.decoder_mask_token = nn.Parameter(torch.empty(1, 1, dec))
        self.init_weights()

    # ------------------------------------------------------------------ construction
    def init_weights(self) -> None:
        """Initialisation of an untrained model, as the official ``initialize_weights`` (LARP.md A.6)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.encoder_latent_query_embed, std=self.config.query_init_std)
        nn.init.normal_(self.decoder_patch_query_token_type_embed, std=0.02)
        if self.config.nested_dropout:
            nn.init.normal_(self.decoder_mask_token, std=0.02)
        conv = self.x_embedder.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
        # Zero output layer: an untrained tokenizer outputs exactly 0.
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        nn.init.kaiming_uniform_(self.bottleneck.regularizer.embedding.weight)

    @classmethod
    def recomputable_buffers(cls, config: TokenizerConfig) -> dict[str, torch.Tensor]:
        return sincos_buffers(config)

    @classmethod
    def config_from_official(cls, data: dict) -> TokenizerConfig:
        """The config of an official tokenizer ``config.json`` dict (see :mod:`larp.compat.official`)."""
        return config_from_dict(TokenizerConfig, official.tokenizer_fields_from_official(data))

    @classmethod
    def config_to_official(cls, config: TokenizerConfig) -> dict:
        """The official ``config.json`` dict of ``config``."""
        return official.tokenizer_fields_to_official(config_to_dict(config))

    # ------------------------------------------------------------------ building blocks of the pass
    def encode_features(self, video: torch.Tensor) -> torch.Tensor:
        """(b, c, t, h, w) -> (b, N, d_enc) encoder outputs at the query positions.

        t may be any multiple of the temporal patch up to ``frame_num``: only the first patch-position
        rows are used (LARP.md A.9).
        """
        patches = self.x_embedder(video)  # (b, P_t, d)
        patches = patches + self.encoder_patch_pe[:, : patches.shape[1]]
        queries = self.encoder_latent_query_embed.unsqueeze(0).expand(video.shape[0], -1, -1)
        return self.encoder(patches, queries)

    def quantize(
        self,
        features: torch.Tensor,
        *,
        stochastic: bool,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        bypass: bool = False,
    ) -> QuantizerOutput:
        """(b, N, d_enc) encoder outputs -> quantizer output (ids, codes, losses)."""
        z = self.bottleneck.in_linear(features)
        return self.bottleneck.regularizer(
            z, stochastic=stochastic, temperature=temperature, generator=generator, bypass=bypass
        )

    def ids_to_latents(self, ids: torch.Tensor) -> torch.Tensor:
        """(b, k) ids -> (b, k, d_dec): codebook lookup, L2 normalisation, out_linear."""
        return self.bottleneck.codes_to_latents(self.bottleneck.regularizer.indices_to_codes(ids))

    def mask_tail(self, latents: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Replace dropped tail tokens by the learned mask embedding (nested-dropout models only).

        Args:
            latents: (b, k, d_dec) latents of the first k <= N tokens; the missing N - k are appended masked.
            keep: optional (b,) number of leading tokens to keep per sample; positions >= keep are masked.

        Returns:
            (b, N, d_dec).
        """
        b, k, d = latents.shape
        n = self.config.num_tokens
        if k == n and keep is None:
            return latents
        if not self.config.nested_dropout:
            raise ValueError(
                f"this tokenizer decodes exactly {n} tokens; decoding from a prefix needs a model built with "
                f"nested_dropout=True and trained with nested token dropout"
            )
        mask = self.decoder_mask_token.to(latents.dtype).expand(b, n - k, d)
        latents = torch.cat([latents, mask], dim=1)
        if keep is not None:
            position = torch.arange(n, device=latents.device)
            latents = torch.where(position[None, :, None] < keep[:, None, None], latents, self.decoder_mask_token.to(latents.dtype))
        return latents

    def decode_latents(
        self, latents: torch.Tensor, num_frames: int | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(b, k <= N, d_dec) latents -> (b, c, num_frames, h, w) raw (unclamped) video.

        Fewer than N latents, or ``keep`` (b,) per-sample prefix lengths, need a nested-dropout model.
        """
        config = self.config
        num_frames = config.frame_num if num_frames is None else num_frames
        _, gh, gw = config.grid
        num_queries = (num_frames // config.temporal_patch_size) * gh * gw
        context = self.mask_tail(latents, keep) + self.decoder_latent_pe
        queries = self.decoder_patch_query_embed[:, :num_queries] + self.decoder_patch_query_token_type_embed
        x = self.decoder(context, queries.expand(latents.shape[0], -1, -1))
        return self.unpatchify(self.final_layer(x), num_frames)

    def unpatchify(self, patches: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(b, P, pt*p*p*c) -> (b, c, t, h, w); channel order inside a patch is (pt, p1, p2, c)."""
        config = self.config
        _, gh, gw = config.grid
        return rearrange(
            patches,
            "b (t h w) (pt p1 p2 c) -> b c (t pt) (h p1) (w p2)",
            t=num_frames // config.temporal_patch_size,
            h=gh,
            w=gw,
            pt=config.temporal_patch_size,
            p1=config.patch_size,
            p2=config.patch_size,
        )

    def forward(
        self,
        video: torch.Tensor,
        *,
        stochastic: bool | None = None,
        generator: torch.Generator | None = None,
        keep_tokens: torch.Tensor | None = None,
        bypass_quantization: bool = False,
    ) -> TokenizerOutput:
        """Full training pass: encode, quantize, decode.

        Args:
            video: (b, c, t, h, w) in [0, 1].
            stochastic: sample codes (SVQ) or take the nearest; default ``config.quantizer.stochastic``.
            keep_tokens: (b,) nested token dropout: decode each sample from only its first keep_tokens[i]
                tokens (the rest replaced by the mask embedding). The quantizer output covers all tokens.
            bypass_quantization: decode the continuous normalised latents (training warm-up only).
        """
        if stochastic is None:
            stochastic = self.config.quantizer.stochastic
        quantized = self.quantize(
            self.encode_features(video), stochastic=stochastic, generator=generator, bypass=bypass_quantization
        )
        latents = self.bottleneck.codes_to_latents(quantized.codes)
        return TokenizerOutput(self.decode_latents(latents, video.shape[2], keep=keep_tokens), quantized, latents)

    # ------------------------------------------------------------------ public inference API
    @torch.no_grad()
    def encode(
        self,
        video: torch.Tensor,
        *,
        stochastic: bool = False,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        num_tokens: int | None = None,
    ) -> torch.Tensor:
        """Tokenize videos.

        Args:
            video: (b, c, t, h, w) float in [0, 1]; t a multiple of the temporal patch, at most
                ``frame_num``; h = w = ``input_size``.
            stochastic: sample codes (SVQ, softmax(cos / temperature)) instead of taking the nearest code.
            temperature: sampling temperature (default: the config's, 0.03).
            generator: RNG for reproducible stochastic encoding.
            num_tokens: keep only the first k tokens (a token budget; decoding them needs a model trained
                with nested dropout). Default: all N.

        Returns:
            (b, k) int64 token ids on the model's device (k = N by default).
        """
        video = self._check_video(video)
        k = self._check_num_tokens(self.config.num_tokens if num_tokens is None else num_tokens)
        features = self.encode_features(video)
        ids = self.quantize(features, stochastic=stochastic, temperature=temperature, generator=generator).indices
        return ids[:, :k]

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, num_frames: int | None = None, *, clamp: bool = False) -> torch.Tensor:
        """Turn token ids back into videos.

        Args:
            ids: (b, N) int64 (or int32) ids in [0, codebook_size); (b, k) with k < N decodes from a
                prefix (nested-dropout models only).
            num_frames: frames to decode (a multiple of the temporal patch, at most ``frame_num``); default
                ``frame_num``. Use the clip's length to decode a clip shorter than the model's.
            clamp: clamp the output to [0, 1] (for viewing and metrics; training uses raw outputs).

        Returns:
            (b, c, t, h, w) float video in the model's dtype.
        """
        ids = self._check_ids(ids)
        num_frames = self.check_num_frames(self.config.frame_num if num_frames is None else num_frames)
        video = self.decode_latents(self.ids_to_latents(ids), num_frames)
        return video.clamp(0, 1) if clamp else video

    # ------------------------------------------------------------------ input checks
    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def check_num_frames(self, t: int) -> int:
        """Return ``t`` if this tokenizer can encode/decode clips of ``t`` frames, else raise ValueError.

        A clip may be shorter than the model's ``frame_num`` (LARP.md A.9): ``t`` must be a positive
        multiple of the temporal patch and at most ``frame_num``. Callers that cut clips (the CLI, the
        evaluation protocols) check their frame count with this before reading any video.
        """
        c = self.config
        if not isinstance(t, int) or t < c.temporal_patch_size or t > c.frame_num or t % c.temporal_patch_size:
            raise ValueError(
                f"expected a number of frames that is a positive multiple of the temporal patch "
                f"({c.temporal_patch_size}) and at most {c.frame_num}, got {t}"
            )
        return t

    def _check_num_tokens(self, k: int) -> int:
        n = self.config.num_tokens
        if not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"expected a number of tokens in [1, {n}], got {k}")
        if k < n and not self.config.nested_dropout:
            raise ValueError(
                f"this tokenizer was not built with nested_dropout, so it only decodes all {n} tokens; "
                f"asked for a prefix of {k}"
            )
        return k

    def _check_video(self, video: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"expected a video tensor, got {type(video).__name__}")
        if video.ndim != 5:
            raise ValueError(
                f"expected a video of shape (batch, {c.in_channels}, frames, height, width), got shape {tuple(video.shape)}"
            )
        if not video.is_floating_point():
            raise ValueError(f"expected a float video with values in [0, 1], got dtype {video.dtype}")
        b, ch, t, h, w = video.shape
        if ch != c.in_channels:
            raise ValueError(f"expected {c.in_channels} channels in dim 1 (b, c, t, h, w), got {ch} (shape {tuple(video.shape)})")
        if (h, w) != (c.input_size, c.input_size):
            raise ValueError(
                f"expected {c.input_size}x{c.input_size} frames (the model's input_size), got {h}x{w}; "
                f"resize with larp.data.resize_and_crop"
            )
        self.check_num_frames(t)
        if b == 0:
            raise ValueError("expected at least one video in the batch, got an empty batch")
        check_unit_range(video)
        return video.to(device=self.device, dtype=self.dtype)

    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"expected token ids as a tensor, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected int64 token ids, got dtype {ids.dtype}")
        n = c.num_tokens
        if ids.ndim != 2 or ids.shape[0] == 0 or not (ids.shape[1] == n or (c.nested_dropout and 1 <= ids.shape[1] <= n)):
            expected = f"(batch, k <= {n})" if c.nested_dropout else f"(batch, {n})"
            raise ValueError(f"expected token ids of shape {expected}, got shape {tuple(ids.shape)}")
        lo, hi = torch.stack(ids.aminmax()).tolist()  # one host sync for both bounds
        if lo < 0 or hi >= c.quantizer.codebook_size:
            raise ValueError(f"expected token ids in [0, {c.quantizer.codebook_size}), got values in [{lo}, {hi}]")
        return ids.to(device=self.device, dtype=torch.int64)
