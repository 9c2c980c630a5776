"""Parity with the official LARP implementation, from folders it produced.

Each folder holds an official-format checkpoint (config.json + model.safetensors) and io.safetensors with
the official code's inputs and outputs (see ../shared/fixtures/official/README.md). The shared fixture is
always checked when present; more folders, for other configurations, come from
``tools/official_parity.py`` and are checked when ``LARP_PARITY_DIR`` points at its output.
Tolerances: ids exact, floats within 1e-4 (the fixture README's).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import larp
from tests.conftest import OFFICIAL_FIXTURES

ATOL = 1e-4


def _tokenizer_folders() -> list[Path]:
    folders = [OFFICIAL_FIXTURES / "tokenizer-small"]
    if os.environ.get("LARP_PARITY_DIR"):
        folders += sorted(Path(os.environ["LARP_PARITY_DIR"]).glob("tok-*"))
    return folders


@pytest.mark.parametrize("folder", _tokenizer_folders(), ids=lambda p: p.name)
def test_tokenizer_matches_the_official_outputs(folder: Path):
    if not (folder / "io.safetensors").is_file():
        pytest.skip(f"official fixture {folder} not present (set LARP_FIXTURES to the fixtures/official folder)")
    tokenizer = larp.LARPTokenizer.from_pretrained(folder)
    io = load_file(folder / "io.safetensors")

    ids = tokenizer.encode(io["input"])
    assert torch.equal(ids, io["indices"])
    with torch.no_grad():
        quantized = tokenizer.quantize(tokenizer.encode_features(io["input"]), stochastic=False)
        latents = tokenizer.bottleneck.codes_to_latents(quantized.codes)
        torch.testing.assert_close(latents, io["encoded"], atol=ATOL, rtol=0)
        torch.testing.assert_close(tokenizer.decode_latents(latents), io["decoded"], atol=ATOL, rtol=0)
    torch.testing.assert_close(tokenizer.decode(io["indices"]), io["decoded_from_indices"], atol=ATOL, rtol=0)

    # a clip shorter than the model's (LARP.md A.9): fewer patch positions in, the same number of tokens out
    short_frames = io["short_input"].shape[2]
    short_ids = tokenizer.encode(io["short_input"])
    assert torch.equal(short_ids, io["short_indices"])
    torch.testing.assert_close(
        tokenizer.decode(io["short_indices"], num_frames=short_frames), io["short_decoded"], atol=ATOL, rtol=0
    )


def _fvd_folders() -> list[Path]:
    folders = [OFFICIAL_FIXTURES / "fvd-math"]
    if os.environ.get("LARP_PARITY_DIR"):
        folders += sorted(Path(os.environ["LARP_PARITY_DIR"]).glob("fvd-*"))
    return folders


@pytest.mark.parametrize("folder", _fvd_folders(), ids=lambda p: p.name)
def test_frechet_distance_matches_the_official_computation(folder: Path):
    if not (folder / "io.safetensors").is_file():
        pytest.skip(f"official fixture {folder} not present (set LARP_FIXTURES to the fixtures/official folder)")
    from larp.metrics import frechet_distance

    io = load_file(folder / "io.safetensors")
    value = frechet_distance(io["real_features"], io["fake_features"])
    assert value == pytest.approx(io["fvd"].item(), rel=1e-6)
