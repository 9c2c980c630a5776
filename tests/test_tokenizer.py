"""LARPTokenizer: official parity, the released architecture, the tensor API and its input checks."""

from __future__ import annotations

import pytest
import torch

import larp
from larp.models.layers import sincos_1d, sincos_3d

# ---------------------------------------------------------------- the released LARP-L architecture

# LARP.md A.7: top-level entries and the per-block template.
LARP_L_TOP = {
    "encoder_latent_query_embed": (1024, 768),
    "decoder_patch_query_token_type_embed": (1, 1, 768),
    "encoder_patch_pe": (1, 1024, 768),
    "decoder_latent_pe": (1, 1024, 768),
    "decoder_patch_query_embed": (1, 1024, 768),
    "x_embedder.proj.weight": (768, 3, 4, 8, 8),
    "x_embedder.proj.bias": (768,),
    "bottleneck.in_linear.weight": (16, 768),
    "bottleneck.in_linear.bias": (16,),
    "bottleneck.out_linear.weight": (768, 16),
    "bottleneck.out_linear.bias": (768,),
    "bottleneck.regularizer.embedding.weight": (8192, 16),
    "final_layer.norm_final.weight": (768,),
    "final_layer.norm_final.bias": (768,),
    "final_layer.linear.weight": (768, 768),
    "final_layer.linear.bias": (768,),
}
BLOCK = {
    "norm1.weight": (768,),
    "norm1.bias": (768,),
    "attn.qkv.weight": (2304, 768),
    "attn.proj.weight": (768, 768),
    "attn.proj.bias": (768,),
    "norm2.weight": (768,),
    "norm2.bias": (768,),
    "mlp.fc1.weight": (3072, 768),
    "mlp.fc1.bias": (3072,),
    "mlp.fc2.weight": (768, 3072),
    "mlp.fc2.bias": (768,),
}


def test_larp_l_preset_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        model = larp.LARPTokenizer.from_preset("larp-l")
    expected = dict(LARP_L_TOP)
    for part in ("encoder", "decoder"):
        for i in range(12):
            expected.update({f"{part}.blocks.{i}.{k}": v for k, v in BLOCK.items()})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert model.num_parameters() == 172_179_984
    assert {name for name, _ in model.named_buffers()} == {
        "encoder_patch_pe",
        "decoder_latent_pe",
        "decoder_patch_query_embed",
    }


def test_layer_norm_eps_follow_the_released_models():
    model = larp.LARPTokenizer.from_preset("larp-tiny")
    assert model.encoder.blocks[0].norm1.eps == 1e-5  # timm <= 1.0.15 default (LARP.md A.4)
    assert model.decoder.blocks[-1].norm2.eps == 1e-5
    assert model.final_layer.norm_final.eps == 1e-6


def test_untrained_tokenizer_outputs_exactly_zero(tiny_video):
    model = larp.LARPTokenizer.from_preset("larp-tiny").eval()
    assert torch.count_nonzero(model.decode(model.encode(tiny_video))) == 0


def test_sincos_layout():
    # sines first, then cosines; frequency 1 at k = 0
    emb = sincos_1d(8, torch.tensor([0.0, 1.0]))
    assert torch.equal(emb[0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float64))
    assert emb[1, 0] == torch.sin(torch.tensor(1.0, dtype=torch.float64))
    # 3D: first half of the channels codes the column, second half the row, time is added everywhere
    table = sincos_3d(16, 2, 3, 4)
    col = sincos_1d(8, torch.tensor([3.0])).float()[0]
    row = sincos_1d(8, torch.tensor([2.0])).float()[0]
    time = sincos_1d(16, torch.tensor([1.0])).float()[0]
    index = 1 * 12 + 2 * 4 + 3  # (t'=1, row 2, column 3)
    torch.testing.assert_close(table[index], torch.cat([col, row]) + time)


# ---------------------------------------------------------------- tensor API


def test_encode_decode_shapes_and_dtypes(tiny_tokenizer, tiny_video):
    ids = tiny_tokenizer.encode(tiny_video)
    assert ids.shape == (2, 32) and ids.dtype == torch.int64
    assert ids.min() >= 0 and ids.max() < 256
    video = tiny_tokenizer.decode(ids)
    assert video.shape == (2, 3, 16, 32, 32) and video.dtype == torch.float32
    clamped = tiny_tokenizer.decode(ids, clamp=True)
    assert clamped.min() >= 0 and clamped.max() <= 1
    torch.testing.assert_close(clamped, video.clamp(0, 1))


def test_deterministic_encoding_is_the_nearest_code(tiny_tokenizer, tiny_video):
    z = tiny_tokenizer.bottleneck.in_linear(tiny_tokenizer.encode_features(tiny_video))
    z = torch.nn.functional.normalize(z, dim=-1)
    codebook = tiny_tokenizer.bottleneck.regularizer.normalized_codebook()
    nearest = torch.cdist(z, codebook[None].expand(2, -1, -1)).argmin(-1)
    assert torch.equal(tiny_tokenizer.encode(tiny_video), nearest)
    assert torch.equal(tiny_tokenizer.encode(tiny_video), tiny_tokenizer.encode(tiny_video))


def test_decode_of_ids_equals_the_forward_pass(tiny_tokenizer, tiny_video):
    with torch.no_grad():
        out = tiny_tokenizer(tiny_video, stochastic=False)
    assert torch.equal(out.quantized.indices, tiny_tokenizer.encode(tiny_video))
    torch.testing.assert_close(tiny_tokenizer.decode(out.quantized.indices), out.recon, atol=1e-6, rtol=0)


def test_stochastic_encoding_is_reproducible_with_a_generator(tiny_tokenizer, tiny_video):
    def sample(seed, temperature=None):
        generator = torch.Generator().manual_seed(seed)
        return tiny_tokenizer.encode(tiny_video, stochastic=True, temperature=temperature, generator=generator)

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))
    # at a vanishing temperature sampling becomes the argmax
    assert torch.equal(sample(5, temperature=1e-6), tiny_tokenizer.encode(tiny_video))


def test_forward_gives_straight_through_gradients_and_vq_losses(tiny_tokenizer, tiny_video):
    tiny_tokenizer.train()
    out = tiny_tokenizer(tiny_video)
    q = out.quantized
    torch.testing.assert_close(q.loss, 0.25 * q.commitment + 1.0 * q.codebook)
    out.recon.mean().backward()
    # the reconstruction gradient reaches the encoder through the straight-through codes ...
    assert tiny_tokenizer.encoder_latent_query_embed.grad.abs().sum() > 0
    assert tiny_tokenizer.bottleneck.in_linear.weight.grad.abs().sum() > 0
    # ... but not the codebook, which learns only from the codebook loss (LARP.md A.5)
    assert tiny_tokenizer.bottleneck.regularizer.embedding.weight.grad is None


def test_short_clips_round_trip(tiny_tokenizer, tiny_video):
    short = tiny_video[:, :, :8]
    ids = tiny_tokenizer.encode(short)
    assert ids.shape == (2, 32)
    assert tiny_tokenizer.decode(ids, num_frames=8).shape == (2, 3, 8, 32, 32)
    # only the first 8 frames' patch positions are used: the same as the full model on those patches
    features = tiny_tokenizer.encode_features(short)
    assert features.shape == (2, 32, 64)


def test_bf16_keeps_the_codebook_in_fp32_and_agrees_with_fp32(tiny_tokenizer, tiny_video):
    reference = tiny_tokenizer.encode(tiny_video)
    bf16 = tiny_tokenizer.to(torch.bfloat16)
    assert bf16.bottleneck.regularizer.embedding.weight.dtype == torch.float32
    assert bf16.x_embedder.proj.weight.dtype == torch.bfloat16
    ids = bf16.encode(tiny_video)
    assert (ids == reference).float().mean() > 0.8
    assert bf16.decode(ids).dtype == torch.bfloat16


# ---------------------------------------------------------------- bad input is a clear ValueError


@pytest.mark.parametrize(
    "video, message",
    [
        (torch.rand(3, 16, 32, 32), "shape \\(batch, 3, frames, height, width\\)"),
        (torch.rand(1, 1, 16, 32, 32), "expected 3 channels"),
        (torch.rand(1, 3, 16, 30, 30), "expected 32x32 frames"),
        (torch.rand(1, 3, 16, 64, 64), "expected 32x32 frames"),
        (torch.rand(1, 3, 6, 32, 32), "multiple of the temporal patch"),
        (torch.rand(1, 3, 20, 32, 32), "at most 16"),
        (torch.rand(1, 3, 16, 32, 32) * 255, "values in \\[0, 1\\]"),
        (torch.rand(1, 3, 16, 32, 32) * 2 - 1, "values in \\[0, 1\\]"),
        (torch.full((1, 3, 16, 32, 32), float("nan")), "values in \\[0, 1\\]"),
        ((torch.rand(1, 3, 16, 32, 32) * 255).to(torch.uint8), "float video"),
        (torch.rand(0, 3, 16, 32, 32), "empty batch"),
    ],
)
def test_bad_videos_raise(tiny_tokenizer, video, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.encode(video)


@pytest.mark.parametrize(
    "ids, kwargs, message",
    [
        (torch.zeros(2, 32, dtype=torch.float32), {}, "int64 token ids"),
        (torch.zeros(2, 32, dtype=torch.int16), {}, "int64 token ids"),
        (torch.zeros(2, 31, dtype=torch.long), {}, "shape \\(batch, 32\\)"),
        (torch.zeros(32, dtype=torch.long), {}, "shape \\(batch, 32\\)"),
        (torch.full((2, 32), 256, dtype=torch.long), {}, "in \\[0, 256\\)"),
        (torch.full((2, 32), -1, dtype=torch.long), {}, "in \\[0, 256\\)"),
        (torch.zeros(2, 32, dtype=torch.long), {"num_frames": 6}, "multiple of the temporal patch"),
        (torch.zeros(2, 32, dtype=torch.long), {"num_frames": 32}, "at most 16"),
    ],
)
def test_bad_ids_raise(tiny_tokenizer, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.decode(ids, **kwargs)


@pytest.mark.parametrize("frames", [4, 8, 12, 16])
def test_check_num_frames_accepts_multiples_of_the_temporal_patch(tiny_tokenizer, frames):
    assert tiny_tokenizer.check_num_frames(frames) == frames


@pytest.mark.parametrize(
    "frames, message",
    [(0, "got 0"), (6, "multiple of the temporal patch \\(4\\)"), (20, "at most 16"), (8.0, "got 8.0")],
)
def test_check_num_frames_refuses_other_counts(tiny_tokenizer, frames, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.check_num_frames(frames)


def test_int32_ids_are_accepted(tiny_tokenizer, tiny_video):
    ids = tiny_tokenizer.encode(tiny_video)
    torch.testing.assert_close(tiny_tokenizer.decode(ids.int()), tiny_tokenizer.decode(ids))


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        larp.TokenizerConfig(input_size=30)
    with pytest.raises(ValueError, match="not divisible by encoder_num_heads"):
        larp.TokenizerConfig(encoder_hidden_size=100, encoder_num_heads=8)
    with pytest.raises(ValueError, match="unknown .*preset 'nope'"):
        larp.LARPTokenizer.from_preset("nope")
