"""Models saved by larp 0.1.0 load and give the outputs 0.1.0 gave.

The folders are written here exactly as 0.1.0 wrote them: its ``config.json`` (the demo's tokenizer in larp's
own layout with ``_larp_version: 0.1.0``; the generators in the official layout) and a ``model.safetensors``
with seeded weights. The expected numbers were computed by running :func:`outputs` with the 0.1.0 code
(commit eefdf90) on the same folders; a change of loading, keys or numerics shows up here.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from larp import LARPGenerator, LARPTokenizer

TOKENIZER_0_1 = {
    "_class_name": "LARPTokenizer", "_larp_version": "0.1.0", "decoder_depth": 2, "decoder_hidden_size": 128,
    "decoder_num_heads": 4, "encoder_depth": 2, "encoder_hidden_size": 128, "encoder_num_heads": 4,
    "frame_num": 16, "in_channels": 3, "input_size": 32, "latent_pe_base": 10000.0, "nested_dropout": True,
    "num_tokens": 32, "patch_size": 8,
    "quantizer": {"code_dim": 16, "codebook_size": 256, "codebook_weight": 1.0, "commitment_weight": 0.25,
                  "stochastic": True, "temperature": 0.03},
    "query_init_std": 0.02, "temporal_patch_size": 4,
}  # fmt: skip
GENERATOR_0_1 = {  # official layout, as 0.1.0's trainer exported generators
    "attn_dropout_p": 0.0, "class_dropout_prob": 0.1, "cls_token_num": 1, "dim": 64, "drop_path_rate": 0.0,
    "ffn_dim_multiplier": None, "ffn_dropout_p": 0.1, "frame_prediction": False, "initializer_range": 0.02,
    "max_batch_size": 32, "max_seq_len": 32, "model_type": "class_cond", "multiple_of": 256, "n_head": 4,
    "n_kv_head": None, "n_layer": 2, "norm_eps": 1e-05, "num_classes": 4, "resid_dropout_p": 0.1,
    "rope_base": 10000, "token_dropout_p": 0.1, "use_fixed_pe": False, "vocab_size": 256,
}  # fmt: skip
FRAME_PREDICTOR_0_1 = {**GENERATOR_0_1, "cls_token_num": 33, "frame_prediction": True, "num_classes": 101}


def write_folder(cls, config: dict, folder: Path) -> Path:
    """A 0.1.0 folder: the config.json text and weights drawn per key name (independent of init code)."""
    folder.mkdir(parents=True)
    model = cls(cls.parse_config(config))
    weights = {}
    for name, value in sorted(model.state_dict().items()):
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        weights[name] = torch.randn(value.shape, generator=generator) * 0.3 if value.is_floating_point() else value
    save_file(weights, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def outputs(root: Path) -> dict:
    tokenizer = LARPTokenizer.from_pretrained(write_folder(LARPTokenizer, TOKENIZER_0_1, root / "tokenizer"))
    generator = LARPGenerator.from_pretrained(write_folder(LARPGenerator, GENERATOR_0_1, root / "generator"))
    predictor = LARPGenerator.from_pretrained(write_folder(LARPGenerator, FRAME_PREDICTOR_0_1, root / "predictor"))
    video = torch.rand(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ids = tokenizer.encode(video)
        recon = tokenizer.decode(ids)
        short = tokenizer.decode(ids[:, :8])
        logits = generator(ids, torch.tensor([0, 3]))
        samples = generator.generate(torch.tensor([1, 2]), cfg_scale=1.25, generator=torch.Generator().manual_seed(1))
        predicted = predictor(ids, ids.flip(0))
    return {
        "ids": ids.tolist(),
        "recon": [round(float(recon.sum()), 3), round(float(recon[0, :, 3, 5, 7].sum()), 5)],
        "short": round(float(short.sum()), 3),
        "logits": [round(float(logits.sum()), 3), round(float(logits[1, 5, :8].sum()), 5)],
        "samples": samples.tolist(),
        "predicted": [round(float(predicted.sum()), 3), round(float(predicted[0, -1, :8].sum()), 5)],
    }


EXPECTED: dict = {  # computed by the 0.1.0 code (commit eefdf90)
    'ids': [[54, 12, 54, 12, 194, 54, 54, 54, 54, 12, 12, 54, 54, 54, 12, 107, 12, 54, 54, 194, 12, 54, 54, 54, 107, 54, 54, 12, 54, 54, 54, 54], [54, 12, 54, 12, 194, 54, 107, 54, 107, 162, 12, 54, 54, 12, 12, 107, 12, 54, 54, 194, 12, 54, 54, 54, 107, 54, 54, 12, 54, 54, 54, 54]],
    'recon': [5723.263, -1.18327],
    'short': 6040.216,
    'logits': [-225.493, 0.72329],
    'samples': [[189, 210, 140, 112, 70, 227, 11, 155, 229, 210, 198, 171, 153, 146, 230, 243, 103, 52, 31, 107, 167, 195, 237, 19, 106, 252, 247, 63, 95, 104, 186, 248], [0, 240, 91, 76, 45, 105, 76, 128, 6, 138, 249, 153, 210, 87, 65, 155, 231, 198, 21, 28, 190, 221, 255, 114, 145, 171, 2, 64, 26, 57, 151, 189]],
    'predicted': [-25.4, 0.10908],
}  # fmt: skip


def test_models_saved_by_0_1_give_the_same_outputs(tmp_path):
    got = outputs(tmp_path)
    assert got["ids"] == EXPECTED["ids"]
    assert got["samples"] == EXPECTED["samples"]
    for key in ("recon", "logits", "predicted"):
        assert got[key] == pytest.approx(EXPECTED[key], rel=1e-5, abs=1e-3), key
    assert got["short"] == pytest.approx(EXPECTED["short"], rel=1e-5, abs=1e-3)


if __name__ == "__main__":  # python tests/test_saved_by_0_1.py: print the values (run with the 0.1.0 code)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(outputs(Path(folder))))
