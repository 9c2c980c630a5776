"""Saving and loading: both folder layouts, strictness, the hub cache, config translation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import larp
from larp.compat import official
from larp.config import config_from_dict
from tests.conftest import official_fixture


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("official_format", [False, True])
def test_save_load_round_trip(tmp_path, tiny_tokenizer, tiny_video, official_format):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok", official_format=official_format)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert ("_class_name" in config) != official_format
    loaded = larp.LARPTokenizer.from_pretrained(folder)
    assert loaded.config == tiny_tokenizer.config
    assert _same_weights(loaded, tiny_tokenizer)
    assert not loaded.training
    assert torch.equal(loaded.encode(tiny_video), tiny_tokenizer.encode(tiny_video))


def test_save_writes_no_pickle_and_no_temporary_files(tmp_path, tiny_tokenizer):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    # safetensors begins with an 8-byte little-endian header length followed by JSON
    header = (folder / "model.safetensors").read_bytes()[8:9]
    assert header == b"{"


def test_load_with_device_and_dtype(tmp_path, tiny_tokenizer):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    loaded = larp.LARPTokenizer.from_pretrained(folder, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert loaded.bottleneck.regularizer.embedding.weight.dtype == torch.float32


def _edit_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def test_prior_keys_are_ignored_and_sincos_buffers_recomputed(tmp_path, tiny_tokenizer, tiny_video):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok", official_format=True)

    def edit(state):
        for name in ("encoder_patch_pe", "decoder_latent_pe", "decoder_patch_query_embed"):
            del state[name]
        state["prior_model.pos_emb"] = torch.zeros(1, 32, 16)
        state["prior_model.head.weight"] = torch.zeros(16, 16)

    _edit_weights(folder, edit)
    loaded = larp.LARPTokenizer.from_pretrained(folder)
    assert _same_weights(loaded, tiny_tokenizer)
    assert torch.equal(loaded.encode(tiny_video), tiny_tokenizer.encode(tiny_video))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("final_layer.linear.bias"), "missing keys \\[final_layer.linear.bias\\]"),
        (lambda s: s.update({"encoder.blocks.9.norm1.weight": torch.ones(64)}), "unexpected keys \\[encoder.blocks.9"),
        (lambda s: s.update({"x_embedder.proj.bias": torch.ones(65)}), "x_embedder.proj.bias: file \\(65,\\) vs model \\(64,\\)"),
        (lambda s: s.update({"bottleneck.regularizer.embedding.weight": torch.ones(512, 16)}), "shape mismatches"),
    ],
)
def test_mismatched_checkpoints_are_errors_naming_the_keys(tmp_path, tiny_tokenizer, edit, message):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    _edit_weights(folder, edit)
    with pytest.raises(ValueError, match=message):
        larp.LARPTokenizer.from_pretrained(folder)


def test_missing_and_broken_folders(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        larp.LARPTokenizer.from_pretrained(tmp_path / "does" / "not" / "exist")
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        larp.LARPTokenizer.from_pretrained(folder)
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok2")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        larp.LARPTokenizer.from_pretrained(folder)
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot read .*config.json"):
        larp.LARPTokenizer.from_pretrained(folder)


def test_config_json_errors(tmp_path, tiny_tokenizer):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "tok")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_tokenz": 3}))
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['num_tokenz'\\]"):
        larp.LARPTokenizer.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "LARPGenerator"}))
    with pytest.raises(ValueError, match="describes a LARPGenerator"):
        larp.LARPTokenizer.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="neither a larp LARPTokenizer config"):
        larp.LARPTokenizer.from_pretrained(folder)


def test_hub_id_is_served_from_the_offline_cache(tmp_path, tiny_tokenizer, tiny_video):
    # the huggingface_hub cache layout: models--owner--name/{refs/main, snapshots/<commit>/files}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--larp-tiny"
    tiny_tokenizer.save_pretrained(repo / "snapshots" / commit, official_format=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = larp.LARPTokenizer.from_pretrained("someone/larp-tiny", cache_dir=tmp_path / "cache", local_files_only=True)
    assert torch.equal(loaded.encode(tiny_video), tiny_tokenizer.encode(tiny_video))
    with pytest.raises(FileNotFoundError, match="Hugging Face hub could not provide it"):
        larp.LARPTokenizer.from_pretrained("someone/absent", cache_dir=tmp_path / "cache", local_files_only=True)


def test_official_config_translation_round_trip():
    for name, config in larp.TOKENIZER_PRESETS.items():
        assert larp.LARPTokenizer.config_from_official(larp.LARPTokenizer.config_to_official(config)) == config, name


def test_official_fixture_config_translates():
    folder = official_fixture("tokenizer-small")
    config = larp.LARPTokenizer.config_from_official(json.loads((folder / "config.json").read_text()))
    assert (config.frame_num, config.input_size, config.num_tokens) == (16, 64, 128)
    assert (config.encoder_hidden_size, config.encoder_num_heads, config.encoder_depth) == (96, 4, 2)
    assert config.quantizer.codebook_size == 512 and config.quantizer.temperature == 0.03


@pytest.mark.parametrize(
    "change, message",
    [
        ({"learned_encoder_patch_pe": True}, "learned_encoder_patch_pe=True"),
        ({"decoder_patch_size": 4}, "decoder_patch_size=4 differs"),
        ({"transformer_name": "transformer_encoder_fused"}, "transformer_name"),
    ],
)
def test_unsupported_official_flags_are_refused(change, message):
    data = larp.LARPTokenizer.config_to_official(larp.TOKENIZER_PRESETS["larp-tiny"])
    with pytest.raises(ValueError, match=message):
        official.tokenizer_fields_from_official({**data, **change})


def test_strict_config_from_dict():
    with pytest.raises(ValueError, match="quantizer.codebook_size: expected an integer"):
        config_from_dict(larp.TokenizerConfig, {"quantizer": {"codebook_size": "big"}})
    with pytest.raises(ValueError, match="quantizer: unknown key"):
        config_from_dict(larp.TokenizerConfig, {"quantizer": {"size": 3}})
    config = config_from_dict(larp.TokenizerConfig, {"num_tokens": 64, "latent_pe_base": 100})
    assert config.num_tokens == 64 and config.latent_pe_base == 100.0


def test_official_translation_works_on_plain_dicts_and_imports_no_model():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(official))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in imported if m.startswith("larp")], imported
    config = larp.TOKENIZER_PRESETS["larp-tiny"]
    fields = official.tokenizer_fields_from_official(larp.LARPTokenizer.config_to_official(config))
    assert fields["num_tokens"] == 32 and fields["latent_pe_base"] == 10000.0
    assert fields["quantizer"] == {"codebook_size": 256, "code_dim": 16, "stochastic": True, "temperature": 0.03,
                                   "commitment_weight": 0.25, "codebook_weight": 1.0}
    assert config_from_dict(larp.TokenizerConfig, fields) == config
    nested = larp.TokenizerConfig(**{**config.__dict__, "nested_dropout": True})
    with pytest.raises(ValueError, match="nested-dropout tokenizer has a mask embedding"):
        larp.LARPTokenizer.config_to_official(nested)
