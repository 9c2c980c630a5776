"""Tokenizer training: loss gradients, schedules, the discriminator cadence, DDP, resume, bad data."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml
import torch.multiprocessing as mp

from larp.data.video_io import write_video
from larp.models.prior import LatentPrior, PriorConfig, prior_loss, scheduled_sampling_ratio
from larp.models.tokenizer import LARPTokenizer
from larp.training.optim import lr_multiplier
from larp.training.recipe import GeneratorTrainConfig, TokenizerTrainConfig, apply_overrides, load_recipe, recipe_from_dict
from larp.training.tokenizer_trainer import TokenizerWithPrior, train_tokenizer
from tests.conftest import REPO, perturb_

TINY = {
    "model_preset": "larp-tiny",
    "model": {"num_tokens": 16, "encoder_hidden_size": 32, "decoder_hidden_size": 32, "encoder_depth": 1,
              "decoder_depth": 1, "quantizer": {"codebook_size": 64}},
    "prior_model": {"num_layers": 1, "num_heads": 2, "width": 32, "max_seq_len": 16},
    "discriminator_preset": "larp-tiny",
    "steps": 6,
    "batch_size": 4,
    "loss": {"perceptual_weight": 0.0, "gan": {"disc_weight": 0.0}},
    "data": {"synthetic_videos": 64, "val_videos": 8, "num_workers": 0},
    "log_every": 1,
    "eval_every": 3,
    "sample_every": 1000,
    "checkpoint_every": 2,
}


def tiny_recipe(*overrides: str):
    return recipe_from_dict(apply_overrides(TINY, list(overrides)))


def _parameters(folder: Path) -> dict[str, torch.Tensor]:
    return LARPTokenizer.from_pretrained(folder).state_dict()


# ------------------------------------------------------------------------------------------ gradients
def _tokenizer_and_prior():
    recipe = tiny_recipe("prior_model.dropout=0.0")
    torch.manual_seed(0)
    tokenizer = perturb_(LARPTokenizer(recipe.model))  # the zero-initialised output layer would block gradients
    return tokenizer.train(), LatentPrior(recipe.prior_model).train()


def test_codebook_learns_only_from_the_codebook_loss_and_the_prior_reaches_the_encoder():
    tokenizer, prior = _tokenizer_and_prior()
    video = torch.rand(2, 3, 16, 32, 32)
    codebook = tokenizer.bottleneck.regularizer.embedding.weight
    queries = tokenizer.encoder_latent_query_embed

    out = tokenizer(video)
    out.recon.abs().mean().backward()  # reconstruction: encoder yes (straight-through), codebook no
    assert queries.grad.abs().sum() > 0 and codebook.grad is None

    tokenizer.zero_grad(set_to_none=True)
    out = tokenizer(video)
    q = out.quantized
    p = prior_loss(prior, q.codes, q.indices, tokenizer.bottleneck.regularizer.normalized_codebook(), ss_ratio=0.5)
    p.loss.backward()  # prior: encoder and prior yes, codebook no (detached)
    assert queries.grad.abs().sum() > 0 and codebook.grad is None
    assert prior.head.weight.grad.abs().sum() > 0
    assert tokenizer.final_layer.linear.weight.grad is None  # nor the decoder

    tokenizer.zero_grad(set_to_none=True)
    tokenizer(video).quantized.codebook.backward()  # the codebook loss moves the codebook
    assert codebook.grad.abs().sum() > 0


def test_prior_loss_rounds_and_accuracy():
    tokenizer, prior = _tokenizer_and_prior()
    prior.eval()
    out = tokenizer(torch.rand(2, 3, 16, 32, 32), stochastic=False)
    q, codebook = out.quantized, tokenizer.bottleneck.regularizer.normalized_codebook()
    # with no scheduled sampling both rounds see the same inputs: averaging changes nothing
    one = prior_loss(prior, q.codes, q.indices, codebook, ss_ratio=0.0, rounds=1)
    two = prior_loss(prior, q.codes, q.indices, codebook, ss_ratio=0.0, rounds=2)
    torch.testing.assert_close(one.loss, two.loss)
    # cosine logits at temperature 1 keep the loss near ln K (LARP.md B.2)
    assert abs(one.loss.item() - torch.log(torch.tensor(64.0)).item()) < 1.0
    assert 0 <= one.top1 <= one.top5 <= 1
    # full replacement changes round 2's inputs, and so the averaged loss
    generator = torch.Generator().manual_seed(0)
    mixed = prior_loss(prior, q.codes, q.indices, codebook, ss_ratio=1.0, rounds=2, generator=generator)
    assert not torch.allclose(mixed.loss, one.loss)


def test_schedules():
    assert scheduled_sampling_ratio(1, 1000) == pytest.approx(1 / 300 * 0.5)
    assert scheduled_sampling_ratio(150, 1000) == pytest.approx(0.25)
    assert scheduled_sampling_ratio(300, 1000) == pytest.approx(0.5)
    assert scheduled_sampling_ratio(900, 1000) == 0.5
    assert lr_multiplier(0, 10, 100, 0.01) == pytest.approx(0.01)
    assert lr_multiplier(10, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_multiplier(55, 10, 100, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_multiplier(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_recipes_in_configs_load_and_bad_keys_are_errors(tmp_path):
    for path in sorted((REPO / "configs").glob("*.yaml")):  # generator recipes have a tokens section
        load_recipe(path, kind=GeneratorTrainConfig if "tokens" in yaml.safe_load(path.read_text()) else TokenizerTrainConfig)
    ucf = load_recipe(REPO / "configs" / "ucf-ar.yaml", kind=GeneratorTrainConfig)
    assert ucf.model.dim == 1280 and ucf.model.n_layer == 30 and ucf.optim.betas == (0.9, 0.95)
    assert load_recipe(REPO / "configs" / "k600-ar-fp.yaml", kind=GeneratorTrainConfig).model.frame_prediction
    recipe = load_recipe(REPO / "configs" / "larp-l-long.yaml")
    assert recipe.model.num_tokens == 1024 and recipe.prior_model.width == 384 and recipe.prior.lr_mult == 50.0
    with pytest.raises(ValueError, match="unknown key"):
        load_recipe(None, ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="expected a number"):
        load_recipe(None, ["optim.lr=fast"])
    assert load_recipe(None, ["optim.lr=4e-3", "steps=7", "prior.enabled=false"]).optim.lr == 4e-3
    with pytest.raises(ValueError, match="key=value"):
        load_recipe(None, ["steps"])


# ------------------------------------------------------------------------------------------ runs
def test_a_run_writes_metrics_checkpoints_and_a_loadable_tokenizer(tmp_path):
    folder = train_tokenizer(tiny_recipe(), tmp_path / "run", progress=False)
    tokenizer = LARPTokenizer.from_pretrained(folder)
    assert tokenizer.encode(torch.rand(1, 3, 16, 32, 32)).shape == (1, 16)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "l1", "vq", "prior_ce", "prior_top1", "psnr", "batch_usage", "perplexity"} <= set(lines[0])
    assert "val_psnr" in lines[2] and "val_usage" in lines[5]
    assert (tmp_path / "run" / "prior" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="already holds a run"):
        train_tokenizer(tiny_recipe(), tmp_path / "run", progress=False)


def test_discriminator_is_updated_every_fifth_step(tmp_path):
    recipe = tiny_recipe("loss.gan.disc_weight=0.3", "steps=7", "eval_every=100")
    train_tokenizer(recipe, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "d_loss" in line] == [5]
    assert all("g_gan" in line for line in lines)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    recipe = tiny_recipe("steps=8", "loss.gan.disc_weight=0.3", "codebook.dead_code_restart=true",
                         "codebook.restart_every=3", "optim.ema_decay=0.9", "codebook.init_from_data=true")
    straight = train_tokenizer(recipe, tmp_path / "straight", progress=False)
    train_tokenizer(recipe, tmp_path / "killed", progress=False, stop_after=5)  # as if killed after step 5
    assert not (tmp_path / "killed" / "tokenizer").exists()
    resumed = train_tokenizer(recipe, tmp_path / "killed", progress=False, resume=True)
    a, b = _parameters(straight), _parameters(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="recipe differs"):
        train_tokenizer(tiny_recipe("steps=9"), tmp_path / "killed", progress=False, resume=True)


def test_nested_dropout_decodes_from_prefixes(tmp_path):
    recipe = tiny_recipe("model.nested_dropout=true", "nested_dropout_prob=0.5")
    tokenizer = LARPTokenizer.from_pretrained(train_tokenizer(recipe, tmp_path / "run", progress=False))
    video = torch.rand(2, 3, 16, 32, 32)
    for k in (2, 4, 8, 16):
        ids = tokenizer.encode(video, num_tokens=k)
        assert ids.shape == (2, k)
        assert tokenizer.decode(ids).shape == (2, 3, 16, 32, 32)
    with pytest.raises(ValueError, match="nested_dropout"):
        tiny_recipe("nested_dropout_prob=0.5")


def test_a_corrupt_video_in_the_manifest_is_skipped_and_reported(tmp_path, caplog):
    folder = tmp_path / "videos"
    folder.mkdir()
    rows = ["path,label"]
    for i in range(5):
        path = folder / f"clip{i}.mp4"
        write_video(path, torch.rand(3, 18, 40, 40), fps=8)
        rows.append(f"videos/clip{i}.mp4,0")
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 20)
    rows.append("videos/broken.mp4,0")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    recipe = tiny_recipe(f"data.manifest={tmp_path / 'train.csv'}", "batch_size=3", "steps=4", "eval_every=100")
    with caplog.at_level(logging.WARNING):
        train_tokenizer(recipe, tmp_path / "run", progress=False)
    assert any("broken.mp4" in record.getMessage() for record in caplog.records)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_videos"] >= 1


# ------------------------------------------------------------------------------------------ DDP
# Same tokens and no dropout in every process: SVQ would draw different codes in different processes.
DETERMINISTIC = ("prior_model.dropout=0.0", "model.quantizer.stochastic=false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_gradients(rank: int, world: int, port: int, video: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from larp.training import distributed as dist

    info = dist.init_distributed("cpu")
    try:
        recipe = tiny_recipe(*DETERMINISTIC)
        torch.manual_seed(0)
        core = TokenizerWithPrior(LARPTokenizer(recipe.model), LatentPrior(recipe.prior_model))
        model = dist.wrap(core, info)
        shard = video.chunk(world)[rank]
        out, prior_out = model(shard, keep_tokens=None, ss_ratio=0.0, bypass_quantization=False, recipe=recipe)
        loss = out.recon.abs().mean() + 0.06 * prior_out.loss + 0.1 * out.quantized.loss
        loss.backward()
        if rank == 0:
            torch.save({k: p.grad for k, p in core.named_parameters() if p.grad is not None}, Path(out_dir) / "ddp.pt")
    finally:
        dist.cleanup(info)


def test_two_process_gloo_gradients_equal_a_single_process_on_the_global_batch(tmp_path):
    video = torch.rand(4, 3, 16, 32, 32, generator=torch.Generator().manual_seed(3))
    mp.spawn(_ddp_gradients, args=(2, _free_port(), video, str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    recipe = tiny_recipe(*DETERMINISTIC)
    torch.manual_seed(0)
    core = TokenizerWithPrior(LARPTokenizer(recipe.model), LatentPrior(recipe.prior_model))
    out, prior_out = core(video, keep_tokens=None, ss_ratio=0.0, bypass_quantization=False, recipe=recipe)
    (out.recon.abs().mean() + 0.06 * prior_out.loss + 0.1 * out.quantized.loss).backward()
    single = {k: p.grad for k, p in core.named_parameters() if p.grad is not None}
    assert ddp.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-6, rtol=1e-4, msg=name)


def test_tensorboard_logging_or_a_clear_error(tmp_path):
    import importlib.util

    recipe = tiny_recipe("tensorboard=true", "steps=2")
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            train_tokenizer(recipe, tmp_path / "run", progress=False)
    else:
        train_tokenizer(recipe, tmp_path / "run", progress=False)
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    # grad_clip > 0 logs the gradient norm before clipping: Adam hides the gradient's scale, the norm does not
    common = (*DETERMINISTIC, "prior.scheduled_sampling=false", "steps=1", "eval_every=100", "optim.grad_clip=1000")
    one = train_tokenizer(tiny_recipe(*common, "batch_size=4"), tmp_path / "one", progress=False)
    two = train_tokenizer(tiny_recipe(*common, "batch_size=2", "optim.accumulation=2"), tmp_path / "two", progress=False)
    logged = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0]) for run in ("one", "two")]
    for key in ("loss", "l1", "grad_norm"):
        assert logged[0][key] == pytest.approx(logged[1][key], rel=1e-4), key
    a, b = _parameters(one), _parameters(two)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
