"""TransformerDiscriminator: the official (LARP.md C.3) architecture, init, forward and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from larp.models.discriminator import (
    DISCRIMINATOR_PRESETS,
    DiscriminatorConfig,
    TransformerDiscriminator,
)
from larp.models.layers import BLOCK_NORM_EPS, sincos_3d

from tests.conftest import perturb_

# LARP.md C.3 / A.7: top-level entries of the LARP-L discriminator and the per-block template.
TOP = {
    "cls_token": (1, 1, 512),
    "encoder_pos_embed": (1, 1024, 512),
    "x_embedder.proj.weight": (512, 3, 4, 8, 8),
    "x_embedder.proj.bias": (512,),
    "norm_final.weight": (512,),
    "norm_final.bias": (512,),
    "fc.weight": (1, 512),
    "fc.bias": (1,),
}
BLOCK = {
    "norm1.weight": (512,),
    "norm1.bias": (512,),
    "attn.qkv.weight": (1536, 512),
    "attn.proj.weight": (512, 512),
    "attn.proj.bias": (512,),
    "norm2.weight": (512,),
    "norm2.bias": (512,),
    "mlp.fc1.weight": (2048, 512),
    "mlp.fc1.bias": (2048,),
    "mlp.fc2.weight": (512, 2048),
    "mlp.fc2.bias": (512,),
}


@pytest.fixture
def tiny_disc() -> TransformerDiscriminator:
    torch.manual_seed(3)
    return perturb_(TransformerDiscriminator.from_preset("larp-tiny"), seed=3).eval()


def test_larp_l_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        disc = TransformerDiscriminator(DISCRIMINATOR_PRESETS["larp-l"])
    expected = dict(TOP)
    for i in range(12):
        expected.update({f"transformer_encoder.blocks.{i}.{k}": v for k, v in BLOCK.items()})
    got = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in disc.parameters()) == 38_205_953
    # The PE is a buffer, not a parameter.
    assert "encoder_pos_embed" in dict(disc.named_buffers())


def test_layernorm_eps():
    disc = TransformerDiscriminator.from_preset("larp-tiny")
    assert disc.norm_final.eps == 1e-6
    for block in disc.transformer_encoder.blocks:
        assert block.norm1.eps == block.norm2.eps == BLOCK_NORM_EPS == 1e-5


def test_init():
    cfg = DISCRIMINATOR_PRESETS["larp-tiny"]
    disc = TransformerDiscriminator(cfg)
    d = cfg.hidden_size
    torch.testing.assert_close(disc.encoder_pos_embed, sincos_3d(d, *cfg.grid)[None], rtol=0, atol=0)
    # xavier on the (1,1,d) tensor: U(+-sqrt(6 / (d + d))).
    assert disc.cls_token.abs().max() <= math.sqrt(3.0 / d)
    assert disc.cls_token.std() > 0
    conv = disc.x_embedder.proj.weight
    fan_in = conv[0].numel()
    assert conv.abs().max() <= math.sqrt(6.0 / (fan_in + d))
    assert torch.all(disc.x_embedder.proj.bias == 0)
    for name, module in disc.named_modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            assert torch.all(module.bias == 0), name
    bound = math.sqrt(6.0 / (d + 1))
    assert disc.fc.weight.abs().max() <= bound


def test_forward_shape_and_grad(tiny_disc):
    video = torch.rand(2, 3, 16, 32, 32, requires_grad=True)
    logits = tiny_disc(video)
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert tiny_disc.cls_token.grad is not None


def test_unclamped_input_is_accepted(tiny_disc):
    video = torch.randn(1, 3, 16, 32, 32) * 2  # a reconstruction far outside [0, 1]
    assert torch.isfinite(tiny_disc(video)).all()


def test_short_clip_uses_first_pe_rows(tiny_disc):
    """A clip of 8 frames is scored with PE rows of t' = 0, 1 (same as a hand-built pass)."""
    video = torch.rand(2, 3, 8, 32, 32)
    x = tiny_disc.x_embedder(video)
    assert x.shape[1] == 2 * 4 * 4
    x = x + tiny_disc.encoder_pos_embed[:, : x.shape[1]]
    x = torch.cat([tiny_disc.cls_token.expand(2, -1, -1), x], dim=1)
    for block in tiny_disc.transformer_encoder.blocks:
        x = block(x)
    expected = tiny_disc.fc(tiny_disc.norm_final(x[:, 0]))[:, 0]
    torch.testing.assert_close(tiny_disc(video), expected)


def test_batch_independence(tiny_disc):
    video = torch.rand(3, 3, 16, 32, 32)
    torch.testing.assert_close(tiny_disc(video)[1:2], tiny_disc(video[1:2]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape",
    [(3, 16, 32, 32), (1, 3, 20, 32, 32), (1, 3, 6, 32, 32), (1, 3, 0, 32, 32), (1, 3, 16, 64, 64), (1, 1, 16, 32, 32)],
)
def test_bad_shapes(tiny_disc, shape):
    with pytest.raises(ValueError):
        tiny_disc(torch.rand(shape))


def test_config_validation():
    with pytest.raises(ValueError):
        DiscriminatorConfig(hidden_size=510)
    with pytest.raises(ValueError):
        DiscriminatorConfig(input_size=100)
    with pytest.raises(ValueError):
        DiscriminatorConfig(frame_num=10)
    with pytest.raises(ValueError):
        TransformerDiscriminator.from_preset("nope")


def test_state_dict_round_trip(tiny_disc):
    other = TransformerDiscriminator.from_preset("larp-tiny")
    other.load_state_dict(tiny_disc.state_dict(), strict=True)
    video = torch.rand(1, 3, 16, 32, 32)
    torch.testing.assert_close(other.eval()(video), tiny_disc(video), rtol=0, atol=0)
