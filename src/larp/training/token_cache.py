"""Encoding clips into generator tokens, and the fingerprint that names the tokens a tokenizer makes.

This module stays light (no token-dataset import) because the video tokenizer (:mod:`larp.video_tokens`) and
the token datasets (:mod:`larp.data.token_dataset`) use :func:`tokenizer_fingerprint` too. The token cache a
generator recipe builds (``tokens.cache``) and the token datasets it trains on (``tokens.dataset``) are read
and written by :mod:`larp.training.token_sources`, in the one token-dataset format.
"""

from __future__ import annotations

import hashlib
import json

import torch

from larp.config import config_to_dict
from larp.data.video_io import condition_clip
from larp.models.tokenizer import LARPTokenizer
from larp.precision import autocast

__all__ = ["encode_clips", "tokenizer_fingerprint"]


@torch.no_grad()
def encode_clips(
    tokenizer: LARPTokenizer, video: torch.Tensor, *, precision: str = "fp32", condition_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Deterministic tokens of clips (b, 3, T, s, s) in [0, 1] -> ids (b, N), and for frame prediction
    (``condition_frames`` given) the ids of the condition clips (b, N), encoded in the same batch (D.3).

    ``precision`` is a :data:`larp.precision.PRECISIONS` name (``auto``: bf16 autocast on CUDA, fp32 elsewhere).
    """
    device = tokenizer.device
    video = video.to(device, non_blocking=True)
    if condition_frames is not None:
        video = torch.cat([video, condition_clip(video, condition_frames)])
    with autocast(precision, device):
        ids = tokenizer.encode(video, stochastic=False)
    if condition_frames is None:
        return ids, None
    return ids.chunk(2)


def tokenizer_fingerprint(tokenizer: LARPTokenizer) -> str:
    """sha256 over the tokenizer's config and weights: identifies the tokens it makes."""
    digest = hashlib.sha256(json.dumps(config_to_dict(tokenizer.config), sort_keys=True).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
