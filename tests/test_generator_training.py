"""Generator training: optimizer groups, token caches, the loop, resume, frame prediction, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import larp
from larp.cli.main import main
from larp.data.synthetic import SyntheticVideos
from larp.models.generator import GeneratorConfig, LARPGenerator
from larp.training.generator_trainer import batch_tokens, token_metrics, train_generator, weight_decay_groups
from larp.training.recipe import GeneratorTrainConfig, apply_overrides, recipe_from_dict
from larp.data.token_dataset import TokenWindows
from larp.training.token_cache import encode_clips
from larp.training.token_sources import build_token_cache, stack_windows
from tests.conftest import perturb_


@pytest.fixture
def tokenizer_dir(tmp_path_factory):
    return save_small_tokenizer(tmp_path_factory)


def save_small_tokenizer(tmp_path_factory):
    """A small random tokenizer: 16 frames of 32x32, 16 tokens, codebook 64; its folder."""
    torch.manual_seed(3)
    config = larp.TokenizerConfig(**{**larp.TOKENIZER_PRESETS["larp-tiny"].__dict__, "num_tokens": 16,
                                     "encoder_hidden_size": 32, "decoder_hidden_size": 32, "encoder_depth": 1,
                                     "decoder_depth": 1,
                                     "quantizer": larp.QuantizerConfig(codebook_size=64, code_dim=8)})
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    perturb_(larp.LARPTokenizer(config), seed=3).save_pretrained(folder)
    return folder


def recipe_for(tokenizer_dir, tmp_path, *overrides: str, frame_prediction: bool = False) -> GeneratorTrainConfig:
    data = {
        "model_preset": "ar-fp-tiny" if frame_prediction else "ar-tiny",
        "model": {"dim": 32, "n_layer": 1, "n_head": 2, "vocab_size": 64, "max_seq_len": 16}
        | ({} if frame_prediction else {"num_classes": 4}),
        "tokens": {"tokenizer": str(tokenizer_dir), "cache": str(tmp_path / "cache"), "encode_batch_size": 16},
        "data": {"synthetic_videos": 48, "val_videos": 8, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "steps": 6,
        "batch_size": 8,
        "log_every": 1,
        "eval_every": 3,
        "sample_every": 6,
        "checkpoint_every": 2,
        "sampling": {"classes": 2, "per_class": 1},
    }
    return recipe_from_dict(apply_overrides(data, list(overrides)), GeneratorTrainConfig)


def test_weight_decay_only_on_linear_weights():
    model = LARPGenerator.from_preset("ar-tiny")
    decay, no_decay = weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith(("wqkv.weight", "wo.weight", "w1.weight", "w2.weight", "w3.weight"))
                           or n == "output.weight" for n in decayed)
    kept = {names[id(p)] for p in no_decay["params"]}
    assert {"abs_pe", "tok_embeddings.weight", "cls_embedding.embedding_table.weight", "norm.weight"} <= kept
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_a_tiny_generator_lowers_its_loss_on_synthetic_tokens():
    """Tokens that depend on the class (plus noise): a few AdamW steps must learn them."""
    torch.manual_seed(0)
    config = GeneratorConfig(dim=32, n_layer=1, n_head=2, vocab_size=16, max_seq_len=8, num_classes=4)
    model = LARPGenerator(config).train()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-2, betas=(0.9, 0.95))
    labels = torch.arange(64) % 4
    tokens = (labels[:, None] * 3 + torch.arange(8)) % 16
    losses = []
    for _ in range(40):
        loss = token_metrics(model(tokens, labels), tokens)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(np.log(16), rel=1e-3)  # zero-initialised head: uniform at first
    assert losses[-1] < 0.3 * losses[0]


def test_token_cache_rows_labels_and_reuse(tmp_path, tokenizer_dir):
    recipe = recipe_for(tokenizer_dir, tmp_path)
    tokenizer = larp.LARPTokenizer.from_pretrained(tokenizer_dir)
    folder = build_token_cache(tokenizer, tmp_path / "cache", data=recipe.data, tokens=recipe.tokens,
                               condition_frames=None, progress=False)
    train = TokenWindows(folder / "train")
    assert len(train) == 2 * 48  # every clip and its mirror image
    rows = stack_windows(train)
    assert rows["tokens"].shape == (96, 16) and rows["tokens"].dtype == torch.int64
    # rows come in encoding batches (16 clips here), each followed by its mirror images: right (0) <-> left (1)
    data = SyntheticVideos(num_videos=48, frames=16, size=32)
    original = torch.tensor([data.label(i) for i in range(16)])
    assert torch.equal(rows["label"][:16], original)
    assert torch.equal(rows["label"][16:32], torch.tensor([1, 0, 2, 3])[original])
    clips = torch.stack([data[i]["video"] for i in range(4)])
    assert torch.equal(rows["tokens"][:4], tokenizer.encode(clips))
    assert torch.equal(rows["tokens"][16:20], tokenizer.encode(clips.flip(-1)))
    assert len(TokenWindows(folder / "val")) == 8

    stamp = (folder / "train" / "shard-00000.parquet").stat().st_mtime_ns
    build_token_cache(tokenizer, folder, data=recipe.data, tokens=recipe.tokens, condition_frames=None,
                      progress=False)  # reused, not rebuilt
    assert (folder / "train" / "shard-00000.parquet").stat().st_mtime_ns == stamp
    other = recipe_for(tokenizer_dir, tmp_path, "tokens.clips_per_video=2")
    with pytest.raises(ValueError, match="clips_per_video"):
        build_token_cache(tokenizer, folder, data=other.data, tokens=other.tokens, condition_frames=None,
                          progress=False)


def test_on_the_fly_tokens_equal_encoding_and_labels_are_required(tmp_path, tokenizer_dir):
    recipe = recipe_for(tokenizer_dir, tmp_path, "tokens.cache=null")
    tokenizer = larp.LARPTokenizer.from_pretrained(tokenizer_dir)
    video = torch.rand(3, 3, 16, 32, 32)
    tokens, cond = batch_tokens({"video": video, "label": torch.tensor([0, 3, 1])}, tokenizer, recipe, torch.device("cpu"))
    assert torch.equal(tokens, tokenizer.encode(video)) and cond.tolist() == [0, 3, 1]
    with pytest.raises(ValueError, match="label"):
        batch_tokens({"video": video, "label": torch.tensor([0, -1, 1])}, tokenizer, recipe, torch.device("cpu"))
    fp = recipe_for(tokenizer_dir, tmp_path, frame_prediction=True)
    tokens, cond = encode_clips(tokenizer, video, condition_frames=5)
    expected = torch.cat([video[:, :, :5], video[:, :, 4:5].expand(-1, -1, 11, -1, -1)], dim=2)
    assert torch.equal(cond, tokenizer.encode(expected)) and fp.condition_frames == 5


def test_token_rows_and_labels_out_of_range_are_clear_errors(tmp_path, tokenizer_dir):
    recipe = recipe_for(tokenizer_dir, tmp_path)  # vocabulary 64, 4 classes
    cpu = torch.device("cpu")
    rows = torch.randint(0, 64, (2, 16))
    tokens, labels = batch_tokens({"tokens": rows, "label": torch.tensor([3, 0])}, None, recipe, cpu)
    assert torch.equal(tokens, rows) and labels.tolist() == [3, 0]
    with pytest.raises(ValueError, match=r"token rows hold values in \[\d+, 64\], outside \[0, 64\)"):
        batch_tokens({"tokens": torch.cat([rows[:1], torch.full((1, 16), 64)]), "label": torch.tensor([0, 1])},
                     None, recipe, cpu)
    with pytest.raises(ValueError, match=r"class labels hold values in \[0, 4\].*model.num_classes"):
        batch_tokens({"tokens": rows, "label": torch.tensor([0, 4])}, None, recipe, cpu)


def test_generator_must_match_the_tokenizer(tmp_path, tokenizer_dir):
    recipe = recipe_for(tokenizer_dir, tmp_path, "model.vocab_size=128")
    with pytest.raises(ValueError, match="vocab_size=64"):
        train_generator(recipe, tmp_path / "run", progress=False)


def _weights(folder):
    return LARPGenerator.from_pretrained(folder).state_dict()


def test_training_lowers_the_loss_exports_and_resumes_exactly(tmp_path, tokenizer_dir):
    recipe = recipe_for(tokenizer_dir, tmp_path)
    full = train_generator(recipe, tmp_path / "full", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_loss"] < lines[0]["loss"] and "val_top5" in lines[-1]
    assert (tmp_path / "full" / "samples" / "step-00000006.gif").is_file()
    config = json.loads((full / "config.json").read_text())
    assert config["vocab_size"] == 64 and "dim" in config  # the official ModelArgs layout

    train_generator(recipe, tmp_path / "cut", progress=False, stop_after=3)  # "killed" after step 3
    with pytest.raises(ValueError, match="--resume"):
        train_generator(recipe, tmp_path / "cut", progress=False)
    resumed = train_generator(recipe, tmp_path / "cut", resume=True, progress=False)
    for name, value in _weights(full).items():
        assert torch.equal(value, _weights(resumed)[name]), name


def test_frame_prediction_training_runs(tmp_path, tokenizer_dir):
    recipe = recipe_for(tokenizer_dir, tmp_path, "steps=2", "sample_every=2", frame_prediction=True)
    folder = train_generator(recipe, tmp_path / "fp", progress=False)
    model = LARPGenerator.from_pretrained(folder)
    assert model.config.frame_prediction and model.tok_embeddings.weight.shape[0] == 65  # + SEP
    assert stack_windows(TokenWindows(tmp_path / "cache" / "train"))["cond"].shape == (96, 16)


def test_cli_trains_then_samples(tmp_path, tokenizer_dir, capsys):
    recipe = recipe_for(tokenizer_dir, tmp_path, "steps=2")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(larp.config.config_to_dict(recipe)))
    assert main(["-q", "train-generator", "--config", str(path), "--run-dir", str(tmp_path / "run"), "--set", "seed=1"]) == 0
    assert "generator written to" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["seed"] == 1
    out = tmp_path / "samples"
    assert main(["-q", "sample", "--generator", str(tmp_path / "run" / "generator"), "--tokenizer",
                 str(tokenizer_dir), "--class", "0", "3", "-o", str(out)]) == 0
    assert np.load(out / "class3-0.npy").shape == (16,)
    (tmp_path / "bare.yaml").write_text("model_preset: ar-tiny\n")
    assert main(["-q", "train-generator", "--config", str(tmp_path / "bare.yaml")]) == 1
    assert "tokens.tokenizer is required" in capsys.readouterr().err


def test_tokenize_config_builds_the_cache_a_recipe_reuses(tmp_path, tokenizer_dir, capsys):
    from larp.data.video_io import write_video

    for label, name in enumerate(("jump", "run")):
        for i in range(3):
            (tmp_path / "videos" / name).mkdir(parents=True, exist_ok=True)
            write_video(tmp_path / "videos" / name / f"{i}.mp4", torch.rand(3, 18, 32, 32) * 0.5 + 0.25 * label, fps=8)
    recipe = recipe_for(tokenizer_dir, tmp_path, f"data.manifest={tmp_path / 'videos'}", "data.val_videos=2",
                        "steps=1", "batch_size=4")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(larp.config.config_to_dict(recipe)))
    cache = tmp_path / "cache"
    assert main(["-q", "tokenize", "--config", str(path), "-o", str(cache)]) == 0
    assert "12 training rows, 2 validation rows" in capsys.readouterr().out
    stamp = (cache / "train" / "shard-00000.parquet").stat().st_mtime_ns
    train_generator(recipe, tmp_path / "run", progress=False)
    assert (cache / "train" / "shard-00000.parquet").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert sorted(set(stack_windows(TokenWindows(cache / "train"))["label"].tolist())) == [0, 1]
    assert main(["-q", "tokenize", "--tokenizer", str(tokenizer_dir), "-o", str(cache)]) == 1
    assert "either video files" in capsys.readouterr().err
