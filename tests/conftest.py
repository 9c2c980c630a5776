"""Shared test fixtures: tiny models, the official parity fixtures, seeded randomness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import larp

REPO = Path(__file__).resolve().parents[1]
# The official parity fixtures live in ../shared next to the checkout (LARP_FIXTURES overrides).
OFFICIAL_FIXTURES = Path(os.environ.get("LARP_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


def official_fixture(name: str) -> Path:
    """Folder of an official fixture, or skip the test (with the reason) when it is absent."""
    folder = OFFICIAL_FIXTURES / name
    if not (folder / "io.safetensors").is_file():
        pytest.skip(f"official fixture {folder} not present (set LARP_FIXTURES to the fixtures/official folder)")
    return folder


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter, so zero-initialised layers are not zero any more."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_tokenizer() -> larp.LARPTokenizer:
    """larp-tiny (16 frames of 32x32, 32 tokens, codebook 256) with perturbed random weights, eval mode."""
    torch.manual_seed(1)
    return perturb_(larp.LARPTokenizer.from_preset("larp-tiny"), seed=1).eval()


@pytest.fixture
def tiny_video() -> torch.Tensor:
    """(2, 3, 16, 32, 32) video in [0, 1]."""
    return torch.rand(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(2))
