"""Variable-length windows in the AR generator (issue 13): the end-of-window token in the model, its training
targets and loss, sampling (KV cache and no cache agree), decoding each window from its own length, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import larp
from larp.cli.main import main
from larp.models.generator import GENERATOR_PRESETS, IGNORE, GeneratorConfig, LARPGenerator, check_matches_tokenizer
from larp.training import distributed as dist
from larp.training.generator_trainer import (
    GeneratorTask,
    batch_tokens,
    check_window_padding,
    decode_padded,
    make_optimizer,
    token_metrics,
)
from larp.training.recipe import GeneratorTrainConfig, recipe_from_dict
from tests.conftest import perturb_

CPU = dist.DistInfo(0, 0, 1, torch.device("cpu"))


SMALL = dict(dim=32, n_layer=1, n_head=2, vocab_size=32, max_seq_len=12, num_classes=4)


def eow_model(frame_prediction: bool = False, *, stop_bias: float = 0.0, seed: int = 0) -> LARPGenerator:
    """A small perturbed random end-of-window generator (32 ids, windows of up to 12); ``stop_bias`` is added
    to the EOW logit (through a bias on the output layer), so that windows end early."""
    torch.manual_seed(seed)
    config = GeneratorConfig(**SMALL, frame_prediction=frame_prediction, end_of_window=True)
    model = perturb_(LARPGenerator(config), seed=seed, scale=0.3)
    if stop_bias:
        output = torch.nn.Linear(config.dim, config.output_size)
        with torch.no_grad():
            output.weight.copy_(model.output.weight)
            output.bias.zero_()
            output.bias[config.eow_token] = stop_bias
        model.output = output
    return model.eval()


def saved_eow_model(folder) -> None:
    """An end-of-window ar-tiny generator (the larp-tiny tokenizer's 32 ids of 256) whose windows vary in length:
    its EOW row points along the mean final hidden state, for an EOW probability of about 1/4 per step."""
    model = perturb_(LARPGenerator(dataclasses.replace(GENERATOR_PRESETS["ar-tiny"], end_of_window=True))).eval()
    hidden = []
    handle = model.norm.register_forward_hook(lambda module, args, out: hidden.append(out))
    with torch.no_grad():
        model(torch.randint(0, 256, (8, 32)), torch.arange(8) % 4)
        handle.remove()
        mean = hidden[0].flatten(0, 1).mean(0)
        model.output.weight[256] = 6.5 * mean / mean.square().sum()
    model.save_pretrained(folder)


def padded(rows: list[list[int]], n: int) -> torch.Tensor:
    return torch.tensor([row + [-1] * (n - len(row)) for row in rows])


# ------------------------------------------------------------------------------------------ the model
def test_the_output_grows_by_one_and_old_configs_are_unchanged():
    old = LARPGenerator.from_preset("ar-tiny")
    assert old.output.weight.shape == (256, 64) and not old.config.end_of_window
    new = LARPGenerator(dataclasses.replace(old.config, end_of_window=True))
    assert new.output.weight.shape == (257, 64) and new.config.eow_token == 256
    assert new.tok_embeddings.weight.shape == old.tok_embeddings.weight.shape  # EOW is never fed back
    assert set(new.state_dict()) == set(old.state_dict())  # no key renamed or added
    # a config.json without the field (every earlier generator) reads as a fixed-length model
    assert LARPGenerator.parse_config({k: v for k, v in old.config_json().items() if k != "end_of_window"}) == old.config


def test_targets_put_eow_after_each_window_and_ignore_the_rest():
    model = eow_model()
    tokens = padded([[5, 6, 7], [1] * 12, [9]], 12)
    targets = model.targets(tokens)
    assert targets[0, :4].tolist() == [5, 6, 7, 32] and (targets[0, 4:] == IGNORE).all()
    assert torch.equal(targets[1], tokens[1])  # a full window ends without EOW
    assert targets[2, :2].tolist() == [9, 32] and (targets[2, 2:] == IGNORE).all()
    fixed = LARPGenerator(GeneratorConfig(**SMALL))
    assert torch.equal(fixed.targets(tokens[1:2]), tokens[1:2])


def test_positions_after_the_end_change_neither_the_logits_before_nor_the_loss():
    model = eow_model()
    cond = torch.tensor([1, 2])
    tokens = padded([[5, 6, 7], [8] * 10], 12)
    other = tokens.clone()
    other[0, 3:] = 27  # what a window holds after its end is not seen by anything that counts
    other[1, 10:] = 3
    a, b = model(tokens, cond), model(other, cond)
    assert torch.allclose(a[0, :4], b[0, :4]) and torch.allclose(a[1, :11], b[1, :11])
    loss = token_metrics(a, model.targets(tokens))["loss"]
    # by hand: the cross-entropy of the 3 ids + EOW of row 0 and the 10 ids + EOW of row 1, averaged
    targets = [(0, i, t) for i, t in enumerate([5, 6, 7, 32])] + [(1, i, t) for i, t in enumerate([8] * 10 + [32])]
    expected = torch.stack([-F.log_softmax(a[r, i], -1)[t] for r, i, t in targets]).mean()
    assert torch.allclose(loss, expected)
    logits = a.clone()
    logits[0, 5:] = torch.randn_like(logits[0, 5:])
    assert torch.allclose(token_metrics(logits, model.targets(tokens))["loss"], loss)


def test_an_eow_generator_has_no_official_format_and_round_trips_in_larps(tmp_path):
    model = eow_model()
    with pytest.raises(ValueError, match="no official format"):
        model.save_pretrained(tmp_path / "official", official_format=True)
    loaded = LARPGenerator.from_pretrained(model.save_pretrained(tmp_path / "larp"))
    assert loaded.config.end_of_window
    ids = model.generate(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.generate(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(1)), ids)
    tokenizer = dataclasses.replace(larp.TOKENIZER_PRESETS["larp-tiny"], num_tokens=12,
                                    quantizer=dataclasses.replace(larp.TOKENIZER_PRESETS["larp-tiny"].quantizer,
                                                                  codebook_size=32))
    with pytest.raises(ValueError, match="nested_dropout"):
        check_matches_tokenizer(model.config, tokenizer)
    check_matches_tokenizer(model.config, dataclasses.replace(tokenizer, nested_dropout=True))


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("which", ["class", "class-cfg", "fp"])
def test_sampling_stops_at_eow_and_the_kv_cache_agrees_with_recomputation(which):
    model = eow_model(frame_prediction=which == "fp", stop_bias=2.0)
    if which == "fp":  # the condition clip stays full-length; the predicted window varies
        cond = torch.randint(0, 32, (8, 12), generator=torch.Generator().manual_seed(0))
    else:
        cond = torch.arange(8) % 4
    options = dict(cfg_scale=1.5 if which == "class-cfg" else 1.0, temperature=1.0)
    ids, lengths = model.generate(cond, generator=torch.Generator().manual_seed(3), return_lengths=True, **options)
    again, again_lengths = model.generate(cond, generator=torch.Generator().manual_seed(3), return_lengths=True,
                                          use_cache=False, **options)
    assert torch.equal(ids, again) and torch.equal(lengths, again_lengths)
    assert ids.shape == (8, 12) and len(set(lengths.tolist())) > 2 and lengths.min() >= 1
    for row, k in zip(ids, lengths.tolist()):
        assert (row[:k] >= 0).all() and (row[:k] < 32).all() and (row[k:] == -1).all()
    if which == "class-cfg":
        return
    # greedy decoding stops exactly where the teacher-forced logits of its own ids put the most mass on EOW
    greedy, greedy_lengths = model.generate(cond, temperature=0.0, return_lengths=True)
    logits = model(greedy, cond)
    for r, k in enumerate(greedy_lengths.tolist()):
        assert (logits[r, :k, :32].argmax(-1) == greedy[r, :k]).all()
        assert (logits[r, 1:k].argmax(-1) != 32).all()  # position 0 and the last never end a window
        if k < 12:
            assert logits[r, k].argmax().item() == 32


def test_a_window_never_ends_before_its_first_id_nor_after_n():
    model = eow_model(stop_bias=50.0)  # EOW is by far the likeliest id everywhere
    ids, lengths = model.generate(torch.arange(4), generator=torch.Generator().manual_seed(0), return_lengths=True)
    assert lengths.tolist() == [1, 1, 1, 1] and (ids[:, 0] >= 0).all() and (ids[:, 1:] == -1).all()
    model = eow_model(stop_bias=-50.0)  # EOW never drawn: every window reaches N ids and ends there
    ids, lengths = model.generate(torch.arange(4), generator=torch.Generator().manual_seed(0), return_lengths=True)
    assert lengths.tolist() == [12] * 4 and (ids >= 0).all() and (ids < 32).all()


def test_fixed_length_models_sample_the_same_tokens_as_before():
    """The sampling path of a model without end_of_window is unchanged: the ids pinned before this feature."""
    model = perturb_(LARPGenerator.from_preset("ar-tiny"), seed=5).eval()
    new = model.generate(torch.tensor([1, 2]), generator=torch.Generator().manual_seed(7))
    # the pre-feature decoding loop, replayed by hand: prefill, then one sampled id fed back per step
    from larp.models.sampling import _sample

    rng = torch.Generator().manual_seed(7)
    h = model.embed_condition(torch.tensor([1, 2]))
    out = []
    with torch.no_grad():
        for n in range(32):
            token = _sample(model.forward_embeddings(h)[:, -1], 1.0, 0, 1.0, rng)
            out.append(token)
            h = torch.cat([h, model.embed_tokens(token[:, None])], dim=1)
    assert torch.equal(new, torch.stack(out, dim=1))


# ------------------------------------------------------------------------------------------ training
def _recipe(tmp_path, **model) -> GeneratorTrainConfig:
    return recipe_from_dict({
        "model_preset": "ar-tiny",
        "model": {"dim": 32, "n_layer": 1, "n_head": 2, "vocab_size": 16, "max_seq_len": 8, "num_classes": 4, "multiple_of": 32,
                  "end_of_window": True, "class_dropout_prob": 0.0, "token_dropout_p": 0.0, "resid_dropout_p": 0.0,
                  "ffn_dropout_p": 0.0, **model},
        "tokens": {"tokenizer": str(tmp_path / "unused")},
        "optim": {"lr": 2e-2, "weight_decay": 0.0}, "steps": 60, "batch_size": 32, "precision": "fp32",
    }, GeneratorTrainConfig)


def test_padding_is_checked_and_a_fixed_length_generator_refuses_variable_windows(tmp_path):
    tokens = padded([[1, 2], [3, 4, 5, 6, 7, 8, 9, 10]], 8)
    assert check_window_padding(tokens, None, True).tolist() == [2, 8]
    assert check_window_padding(tokens.clamp(min=0), None, False) is None
    with pytest.raises(ValueError, match="model.end_of_window: true"):
        batch_tokens({"tokens": tokens, "label": torch.tensor([0, 1])}, None,
                     _recipe(tmp_path, end_of_window=False), torch.device("cpu"))
    with pytest.raises(ValueError, match="no -1 before an id"):
        check_window_padding(torch.tensor([[1, -1, 2, -1, -1, -1, -1, -1]]), None, True)
    with pytest.raises(ValueError, match="no id"):
        check_window_padding(torch.full((1, 8), -1), None, True)
    with pytest.raises(ValueError, match="length column"):
        check_window_padding(tokens, torch.tensor([2, 7]), True)
    out, labels = batch_tokens({"tokens": tokens, "label": torch.tensor([0, 1]), "length": torch.tensor([2, 8])},
                               None, _recipe(tmp_path), torch.device("cpu"))
    assert torch.equal(out, tokens) and labels.tolist() == [0, 1]


def test_training_on_variable_windows_learns_where_each_class_stops(tmp_path):
    """Class c's windows are c + 1 fixed ids then EOW (class 3: all 8 ids). The trainer's own step (the
    shared task) must learn the ids and the stops; greedy samples then have exactly the class's length."""
    recipe = _recipe(tmp_path)
    labels = torch.arange(128) % 4
    lengths = [2, 3, 5, 8]
    rows = [[(3 * int(c) + i) % 16 for i in range(lengths[int(c)])] for c in labels]
    tokens = padded(rows, 8)

    def stream():
        while True:
            order = torch.randperm(128)[:32]
            yield {"tokens": tokens[order], "label": labels[order], "length": (tokens[order] >= 0).sum(1)}

    torch.manual_seed(0)
    model = LARPGenerator(recipe.model).train()
    task = GeneratorTask(recipe, CPU, model=model, optimizer=make_optimizer(model, recipe, CPU.device),
                         scaler=torch.amp.GradScaler("cpu", enabled=False), stream=stream(),
                         val={"tokens": tokens[:8], "label": labels[:8]})
    first = task.evaluate(0)
    assert first["val_loss"] == pytest.approx(np.log(17), rel=1e-4)  # zero head: uniform over 16 ids + EOW
    for step in range(1, recipe.steps + 1):
        task.train_step(step)
    assert task.evaluate(recipe.steps)["val_loss"] < 0.05
    ids, got = model.generate(torch.arange(4), temperature=0.0, return_lengths=True)
    assert got.tolist() == lengths
    for c in range(4):
        assert ids[c, : lengths[c]].tolist() == rows[c]


def test_frame_prediction_trains_on_variable_windows_after_a_full_length_condition(tmp_path):
    recipe = recipe_from_dict({
        "model_preset": "ar-fp-tiny",
        "model": {"dim": 32, "n_layer": 1, "n_head": 2, "vocab_size": 16, "max_seq_len": 8, "multiple_of": 32,
                  "end_of_window": True, "token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0},
        "tokens": {"tokenizer": str(tmp_path / "unused")},
        "optim": {"lr": 2e-2, "weight_decay": 0.0}, "steps": 40, "batch_size": 16, "precision": "fp32",
    }, GeneratorTrainConfig)
    # the predicted window repeats the condition's first ids: 2 of them when its first id is below 8, else 6
    cond = torch.randint(0, 16, (64, 8), generator=torch.Generator().manual_seed(0))
    rows = [c[: 2 if c[0] < 8 else 6].tolist() for c in cond]
    tokens = padded(rows, 8)
    batches = iter([{"tokens": tokens[i % 4 * 16 : i % 4 * 16 + 16], "cond": cond[i % 4 * 16 : i % 4 * 16 + 16],
                     "label": torch.full((16,), -1)} for i in range(recipe.steps)])
    torch.manual_seed(0)
    model = LARPGenerator(recipe.model).train()
    task = GeneratorTask(recipe, CPU, model=model, optimizer=make_optimizer(model, recipe, CPU.device),
                         scaler=torch.amp.GradScaler("cpu", enabled=False), stream=batches,
                         val={"tokens": tokens[:16], "cond": cond[:16]})
    before = task.evaluate(0)["val_loss"]
    assert before == pytest.approx(np.log(17), rel=1e-4)
    for step in range(1, recipe.steps + 1):
        task.train_step(step)
    assert task.evaluate(recipe.steps)["val_loss"] < 0.5 * before
    ids, lengths = model.generate(cond[:16], temperature=0.0, return_lengths=True)
    assert (lengths == (tokens[:16] >= 0).sum(1)).float().mean() >= 0.75  # it learned where windows stop
    with pytest.raises(ValueError, match="condition clip"):
        batch_tokens({"tokens": tokens[:2], "cond": tokens[:2]}, None, recipe, torch.device("cpu"))


# ------------------------------------------------------------------------------------------ decoding, the CLI
def test_each_window_is_decoded_from_its_own_length(tiny_tokenizer):
    tokenizer = perturb_(larp.LARPTokenizer(dataclasses.replace(tiny_tokenizer.config, nested_dropout=True)),
                         seed=2).eval()
    ids = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    rows = ids.clone()
    rows[0, 5:] = -1
    rows[2, 20:] = -1
    with torch.no_grad():
        videos = decode_padded(tokenizer, rows)
        for r, k in enumerate((5, 32, 20)):
            alone = tokenizer.decode(ids[r : r + 1, :k], clamp=True)
            torch.testing.assert_close(videos[r : r + 1], alone, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="nested_dropout"):
        decode_padded(tiny_tokenizer, rows)


def test_sample_cli_writes_videos_decoded_from_each_windows_length(tmp_path, tiny_tokenizer, capsys):
    tokenizer = larp.LARPTokenizer(dataclasses.replace(tiny_tokenizer.config, nested_dropout=True))
    tokenizer.load_state_dict(tiny_tokenizer.state_dict(), strict=False)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    saved_eow_model(tmp_path / "generator")
    out = tmp_path / "samples"
    assert main(["sample", "--generator", str(tmp_path / "generator"), "--tokenizer", str(tmp_path / "tokenizer"),
                 "--class", "1", "2", "--num", "3", "--seed", "4", "-o", str(out)]) == 0
    record = json.loads((out / "samples.json").read_text())
    assert record["end_of_window"] and len(record["window_lengths"]) == 6
    for name, k in zip(record["samples"], record["window_lengths"]):
        row = np.load(out / f"{name}.npy")
        assert row.shape == (32,) and (row[:k] >= 0).all() and (row[k:] == -1).all()
        assert (out / f"{name}.gif").is_file()
    assert len(set(record["window_lengths"])) > 1
    assert main(["sample", "--generator", str(tmp_path / "generator"), "--tokenizer", str(tmp_path / "tokenizer"),
                 "--class", "1", "--windows", "1", "-o", str(tmp_path / "roll")]) == 1
    assert "variable-length" in capsys.readouterr().err


def _adaptive_dataset(folder, tokenizer) -> list[int]:
    """A token dataset of adaptive-length windows (as `larp tokenize --target-psnr` writes it): 12 videos of
    2 windows, class = video % 4, the valid ids only in `tokens`; returns every window's length."""
    from larp.data.token_dataset import FORMAT, write_dataset_info, write_shard
    from larp.training.token_cache import tokenizer_fingerprint

    rng = np.random.default_rng(0)
    rows, lengths = [], []
    for v in range(12):
        window_lengths = [int(rng.integers(1, 17)), 16 if v % 3 == 0 else int(rng.integers(1, 17))]
        lengths += window_lengths
        rows.append({"video": f"v{v}.mp4", "label": v % 4, "tokens": rng.integers(0, 64, sum(window_lengths)),
                     "window_lengths": window_lengths})
    folder.mkdir(parents=True)
    write_shard(folder / "shard-00000.parquet", rows, 64)
    write_dataset_info(folder, {
        "format": FORMAT, "version": 1, "tokenizer": "tiny", "codebook_size": 64, "tokens_per_window": 16,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "frames_per_window": 16, "fps": None,
        "stride": None, "resize": "crop", "num_videos": 12, "num_windows": 24, "num_failed": 0,
        "shards": ["shard-00000.parquet"], "special_tokens": {}, "settings": {},
        "budget": {"target_psnr": 20.0, "candidates": list(range(1, 17)), "metric": "psnr", "predicted": False}})
    return lengths


def test_train_generator_on_an_adaptive_token_dataset_end_to_end(tmp_path):
    from larp.training.generator_trainer import train_generator

    torch.manual_seed(3)
    config = larp.TokenizerConfig(**{**larp.TOKENIZER_PRESETS["larp-tiny"].__dict__, "num_tokens": 16,
                                     "encoder_hidden_size": 32, "decoder_hidden_size": 32, "encoder_depth": 1,
                                     "decoder_depth": 1, "nested_dropout": True,
                                     "quantizer": larp.QuantizerConfig(codebook_size=64, code_dim=8)})
    tokenizer = perturb_(larp.LARPTokenizer(config), seed=3)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    lengths = _adaptive_dataset(tmp_path / "dataset", tokenizer)
    assert len(set(lengths)) > 4

    def recipe(end_of_window: bool) -> GeneratorTrainConfig:
        return recipe_from_dict({
            "model_preset": "ar-tiny",
            "model": {"dim": 32, "n_layer": 1, "n_head": 2, "vocab_size": 64, "max_seq_len": 16, "num_classes": 4,
                      "multiple_of": 32, "end_of_window": end_of_window},
            "tokens": {"tokenizer": str(tmp_path / "tokenizer"), "dataset": str(tmp_path / "dataset"),
                       "val_windows": 4},
            "optim": {"lr": 3e-3}, "steps": 4, "batch_size": 8, "log_every": 1, "eval_every": 4,
            "sample_every": 4, "checkpoint_every": 4, "sampling": {"classes": 2, "per_class": 2},
        }, GeneratorTrainConfig)

    folder = train_generator(recipe(True), tmp_path / "run", progress=False)
    model = LARPGenerator.from_pretrained(folder)
    assert model.config.end_of_window and model.output.weight.shape[0] == 65
    assert "_class_name" in json.loads((folder / "config.json").read_text())  # larp's layout, not the official one
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["val_loss"] < np.log(65) + 0.05 and log[0]["loss"] == pytest.approx(np.log(65), rel=1e-3)
    samples = np.load(tmp_path / "run" / "samples" / "step-00000004.npy")
    assert samples.shape == (4, 16) and (samples >= -1).all()
    assert (tmp_path / "run" / "samples" / "step-00000004.gif").is_file()
    with pytest.raises(ValueError, match="model.end_of_window: true"):
        train_generator(recipe(False), tmp_path / "fixed", progress=False)
