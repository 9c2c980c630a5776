"""The training-time prior as a model folder: exported, loaded back with identical outputs, refused when wrong."""

from __future__ import annotations

import json

import pytest
import torch

from larp.config import config_to_dict
from larp.hub import write_folder
from larp.models.prior import PRIOR_PRESETS, LatentPrior, PriorConfig
from larp.models.tokenizer import LARPTokenizer
from tests.conftest import perturb_

TINY = PriorConfig(num_layers=2, num_heads=2, width=32, code_dim=16, max_seq_len=31)


@pytest.fixture
def prior() -> LatentPrior:
    torch.manual_seed(5)
    return perturb_(LatentPrior(TINY), seed=5, scale=0.1).eval()


@pytest.fixture
def codes() -> torch.Tensor:
    """(2, 32, 16) unit code vectors, as the quantizer makes them."""
    return torch.nn.functional.normalize(torch.randn(2, 32, 16, generator=torch.Generator().manual_seed(6)), dim=-1)


def test_save_and_load_give_identical_predictions(tmp_path, prior, codes):
    folder = prior.save_pretrained(tmp_path / "prior")
    data = json.loads((folder / "config.json").read_text())
    assert data["_class_name"] == "LatentPrior" and data["width"] == 32 and data["max_seq_len"] == 31
    loaded = LatentPrior.from_pretrained(folder)
    assert loaded.config == TINY and not loaded.training
    assert torch.equal(loaded.predict_next(codes), prior.predict_next(codes))


def test_the_trainer_export_layout_loads(tmp_path, prior, codes):
    # What the tokenizer trainer of version 0.1.0 wrote to RUN/prior: no version field, the config's fields.
    folder = write_folder(tmp_path / "prior", {"_class_name": "LatentPrior", **config_to_dict(prior.config)},
                          prior.state_dict())
    assert torch.equal(LatentPrior.from_pretrained(folder).predict_next(codes), prior.predict_next(codes))


def test_presets_are_the_official_sizes():
    with torch.device("meta"):
        model = LatentPrior.from_preset("gptc-s")
    assert model.config == PRIOR_PRESETS["gptc-s"] and model.config.width == 384
    assert model.num_parameters() == 21_700_240  # LARP.md: the official gptc-S


def test_wrong_folders_are_refused(tmp_path, prior):
    tokenizer_folder = LARPTokenizer.from_preset("larp-tiny").save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(ValueError, match="describes a LARPTokenizer, not a LatentPrior"):
        LatentPrior.from_pretrained(tokenizer_folder)
    folder = prior.save_pretrained(tmp_path / "prior")
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "width": 64}))
    with pytest.raises(ValueError, match="shape mismatches"):
        LatentPrior.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**data, "depth": 3}))
    with pytest.raises(ValueError, match="unknown key"):
        LatentPrior.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in data.items() if k != "_class_name"}))
    with pytest.raises(ValueError, match="not a LatentPrior config"):
        LatentPrior.from_pretrained(folder)
