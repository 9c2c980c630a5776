"""Tokenizer training: loss gradients, schedules, the discriminator cadence, DDP, resume, bad data."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from larp.data.video_io import write_video
from larp.models.prior import LatentPrior, prior_loss, scheduled_sampling_ratio
from larp.models.tokenizer import LARPTokenizer
from larp.models.quantizer import QuantizerConfig, VectorQuantizer
from larp.training import distributed as dist
from larp.training.optim import lr_multiplier, reset_optimizer_rows
from larp.training.recipe import GeneratorTrainConfig, TokenizerTrainConfig, apply_overrides, load_recipe, recipe_from_dict
from larp.training.tokenizer_trainer import TokenizerTask, TokenizerWithPrior, train_tokenizer
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
    # accuracy of round 0 = the share of positions whose true next code is the (top-5) nearest prediction
    with torch.no_grad():
        logits = prior.predict_next(q.codes) @ codebook.t()
    ranked = logits.topk(5, dim=-1).indices
    assert one.top1.item() == pytest.approx((ranked[..., 0] == q.indices[:, 1:]).float().mean().item())
    assert one.top5.item() == pytest.approx((ranked == q.indices[:, 1:, None]).any(-1).float().mean().item())
    # a prior that predicts the true next code is always right; one that predicts the farthest code, never
    prior.predict_next = lambda codes: codes[:, 1:]
    oracle = prior_loss(prior, q.codes, q.indices, codebook, ss_ratio=0.0, rounds=1)
    assert oracle.top1.item() == 1.0 and oracle.top5.item() == 1.0
    prior.predict_next = lambda codes: -codes[:, 1:]
    wrong = prior_loss(prior, q.codes, q.indices, codebook, ss_ratio=0.0, rounds=1)
    assert wrong.top1.item() == 0.0 and wrong.top5.item() == 0.0
    # full replacement changes round 2's inputs, and so the averaged loss
    generator = torch.Generator().manual_seed(0)
    mixed = prior_loss(prior, q.codes, q.indices, codebook, ss_ratio=1.0, rounds=2, generator=generator)
    assert not torch.allclose(mixed.loss, one.loss)


def test_tokenizer_with_prior_takes_the_prior_options_as_plain_values():
    tokenizer, prior = _tokenizer_and_prior()
    core = TokenizerWithPrior(tokenizer, prior.eval())
    video = torch.rand(2, 3, 16, 32, 32)
    common = dict(keep_tokens=None, ss_ratio=0.0, bypass_quantization=False)
    out, off = core(video, **common, use_prior=False)
    assert off is None and out.recon.shape == video.shape
    torch.manual_seed(1)  # the same codes (SVQ) in both calls
    _, one = core(video, **common, prior_rounds=1, prior_temperature=0.5)
    torch.manual_seed(1)
    q = tokenizer(video).quantized
    expected = prior_loss(prior, q.codes, q.indices, tokenizer.bottleneck.regularizer.normalized_codebook(),
                          ss_ratio=0.0, rounds=1, temperature=0.5)
    torch.testing.assert_close(one.loss, expected.loss)


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
    for path in sorted((REPO / "src" / "larp" / "recipes").glob("*.yaml")):  # generator recipes have a tokens section
        load_recipe(path, kind=GeneratorTrainConfig if "tokens" in yaml.safe_load(path.read_text()) else TokenizerTrainConfig)
    ucf = load_recipe(REPO / "src" / "larp" / "recipes" / "ucf-ar.yaml", kind=GeneratorTrainConfig)
    assert ucf.model.dim == 1280 and ucf.model.n_layer == 30 and ucf.optim.betas == (0.9, 0.95)
    assert load_recipe(REPO / "src" / "larp" / "recipes" / "k600-ar-fp.yaml", kind=GeneratorTrainConfig).model.frame_prediction
    recipe = load_recipe(REPO / "src" / "larp" / "recipes" / "larp-l-long.yaml")
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


def test_nested_dropout_lengths_follow_the_recipe_and_the_default_draws_as_before():
    from larp.training.recipe import NestedDropoutConfig
    from larp.training.tokenizer_trainer import draw_keep_tokens

    # the old flat recipe: the uniform default draws exactly what larp 0.2's inline code drew
    recipe = tiny_recipe("model.nested_dropout=true", "nested_dropout_prob=0.5")
    assert recipe.nested_dropout == NestedDropoutConfig()
    torch.manual_seed(3)
    keep = draw_keep_tokens(4096, 16, 0.5, recipe.nested_dropout)
    torch.manual_seed(3)
    old = torch.randint(1, 17, (4096,))
    old = torch.where(torch.rand(4096) < 0.5, old, torch.full_like(old, 16))
    assert torch.equal(keep, old)
    assert draw_keep_tokens(8, 16, 0.0, recipe.nested_dropout) is None

    # a truncated normal with a minimum length: every sample dropped (prob 1) to see the distribution
    recipe = tiny_recipe("model.nested_dropout=true", "nested_dropout_prob=1.0",
                         "nested_dropout.distribution=truncated_normal", "nested_dropout.mean=0.25",
                         "nested_dropout.std=0.125", "nested_dropout.min_length=3")
    torch.manual_seed(0)
    keep = draw_keep_tokens(20000, 16, 1.0, recipe.nested_dropout).float()
    assert keep.min() == 3 and keep.max() <= 16
    # the exact law: P(k) proportional to P(k - 0.5 < X < k + 0.5) for X ~ N(4, 2), k in [3, 16]
    cdf = lambda x: 0.5 * (1 + math.erf((x - 4) / (2 * math.sqrt(2))))
    mass = {k: cdf(k + 0.5) - cdf(k - 0.5) for k in range(3, 17)}
    total = sum(mass.values())
    assert abs(keep.mean().item() - sum(k * m for k, m in mass.items()) / total) < 0.05
    for k in (3, 4, 8):
        assert abs((keep == k).float().mean().item() - mass[k] / total) < 0.01
    with pytest.raises(ValueError, match="nested_dropout.min_length"):
        tiny_recipe("model.nested_dropout=true", "nested_dropout.min_length=17")
    with pytest.raises(ValueError, match="nested_dropout.distribution"):
        tiny_recipe("model.nested_dropout=true", "nested_dropout.distribution=beta")


def test_validation_logs_psnr_at_fixed_lengths_for_nested_dropout_models(tmp_path):
    from larp.training.tokenizer_trainer import validation_lengths

    recipe = tiny_recipe("model.nested_dropout=true", "nested_dropout_prob=0.5", "steps=1", "eval_every=1",
                         "checkpoint_every=1")
    assert validation_lengths(recipe) == [2, 4, 8, 16]
    assert validation_lengths(tiny_recipe()) == []
    assert validation_lengths(tiny_recipe("model.nested_dropout=true", "nested_dropout.val_lengths=[5,1]")) == [1, 5]
    folder = train_tokenizer(recipe, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = next(row for row in rows if "val_psnr" in row)
    assert val["val_psnr@16"] == val["val_psnr"]
    # recomputed here: decode the first k deterministic tokens of the validation clips
    tokenizer = LARPTokenizer.from_pretrained(folder).eval()
    task = TokenizerTask(recipe, dist.DistInfo(0, 0, 1, torch.device("cpu")), tmp_path / "other")
    video = torch.stack([task.val[i]["video"] for i in range(len(task.val))])
    for k in (2, 4, 8):
        with torch.no_grad():
            recon = tokenizer.decode(tokenizer.encode(video)[:, :k], num_frames=16, clamp=True)
        expected = (10 * torch.log10(1 / ((recon - video) ** 2).flatten(1).mean(1))).mean().item()
        assert abs(val[f"val_psnr@{k}"] - expected) < 1e-3
    assert val["val_psnr@2"] != val["val_psnr@16"]
    plain = train_tokenizer(tiny_recipe("steps=1", "eval_every=1", "checkpoint_every=1"), tmp_path / "plain",
                            progress=False)
    assert plain and not any("val_psnr@" in key for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
                             for key in json.loads(line))


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


# Same tokens and no dropout in every run: SVQ and dropout would draw differently.
DETERMINISTIC = ("prior_model.dropout=0.0", "model.quantizer.stochastic=false")


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


# ------------------------------------------------------------------------------------------ learning-rate multipliers
CPU = dist.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _one_step_updates(*overrides: str) -> dict[str, torch.Tensor]:
    """Parameter changes of the first train_step of a tiny tokenizer task, by name."""
    task = TokenizerTask(tiny_recipe(*DETERMINISTIC, "prior.scheduled_sampling=false", *overrides), CPU)
    before = {k: v.detach().clone() for k, v in task.core.named_parameters()}
    task.train_step(1)
    return {k: v.detach() - before[k] for k, v in task.core.named_parameters()}


def test_prior_and_query_learning_rate_multipliers_scale_their_updates():
    base = _one_step_updates("prior.lr_mult=1", "optim.query_lr_mult=1")
    scaled = _one_step_updates("prior.lr_mult=50", "optim.query_lr_mult=10")
    # identical weights and gradients before the step: Adam's update is lr x a function of the gradient,
    # so the groups with a multiplier move exactly that many times further, and the others the same
    moved = 0
    for name, delta in base.items():
        mult = 50.0 if name.startswith("prior.") else 10.0 if name == "tokenizer.encoder_latent_query_embed" else 1.0
        # rtol: a change of ~1e-4 read off float32 weights of ~1 keeps ~3 digits
        torch.testing.assert_close(scaled[name], mult * delta, rtol=2e-3, atol=1e-9, msg=name)
        moved += mult != 1.0 and bool(delta.abs().max() > 0)
    assert moved > 10  # the prior's parameters and the queries did move


# ------------------------------------------------------------------------------------------ codebook care
def _clustered_latents(centres: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """(1, n, c) latents scattered (std 0.05) around random ones of ``centres`` (m, c), not normalised."""
    g = torch.Generator().manual_seed(seed)
    picks = centres[torch.randint(0, centres.shape[0], (n,), generator=g)]
    return (3 * (picks + 0.05 * torch.randn(picks.shape, generator=g)))[None]


def _nearest_cosine(codes: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(K,) cosine of each code to its nearest latent of z (..., c)."""
    return (F.normalize(codes, dim=-1) @ F.normalize(z.reshape(-1, z.shape[-1]), dim=-1).t()).max(-1).values


def test_codebook_initialised_from_data_is_made_of_its_latents():
    quantizer = VectorQuantizer(QuantizerConfig(codebook_size=32, code_dim=8))
    z = 5 * torch.randn(2, 6, 8)  # 12 latents for 32 codes: codes repeat latents, up to their noise
    quantizer.init_from_latents(z)
    codes = quantizer.embedding.weight.detach()
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(32))
    assert _nearest_cosine(codes, z).min() > 0.99  # each code is a latent + noise of std 0.01 per dimension
    assert torch.cdist(codes, codes).topk(2, largest=False).values[:, 1].min() > 1e-4  # the noise separates repeats

    # through the trainer: at the first quantized step every code is a latent of that step's batch
    task = TokenizerTask(tiny_recipe("codebook.init_from_data=true", "batch_size=2"), CPU)
    video = torch.rand(2, 3, 16, 32, 32)
    task.init_codebook(video)
    tokenizer = task.tokenizer
    with torch.no_grad():
        latents = tokenizer.quantize(tokenizer.encode_features(video), stochastic=False).z
    assert _nearest_cosine(tokenizer.bottleneck.regularizer.embedding.weight.detach(), latents).min() > 0.99


def test_dead_codes_restart_near_latents_keep_live_codes_and_lose_their_adam_moments():
    torch.manual_seed(0)
    K, c = 16, 4
    quantizer = VectorQuantizer(QuantizerConfig(codebook_size=K, code_dim=c))
    weight = quantizer.embedding.weight
    optimizer = torch.optim.Adam([weight], lr=1e-2)
    weight.grad = torch.randn(K, c)
    optimizer.step()  # non-zero moments in every row
    counts = torch.tensor([9.0, 0, 4, 8, 0, 0, 30, 2, 7, 5, 6, 0, 1, 12, 3, 13])  # mean 6.25
    dead_expected = torch.zeros(K, dtype=torch.bool)
    dead_expected[[1, 4, 5, 7, 11, 12, 14]] = True  # counts below 0.5 x the mean 6.25
    before = weight.detach().clone()
    z = _clustered_latents(-F.normalize(torch.randn(3, c), dim=-1), 40, seed=1)  # far from the old codes
    dead = quantizer.restart_dead_codes(z, counts, threshold=0.5)
    reset_optimizer_rows(optimizer, weight, dead)

    assert torch.equal(dead, dead_expected) and int(dead.sum()) == 7
    after = weight.detach()
    assert torch.equal(after[~dead], before[~dead])  # live codes untouched
    torch.testing.assert_close(after[dead].norm(dim=-1), torch.ones(7))  # unit vectors...
    assert _nearest_cosine(after[dead], z).min() > 0.99  # ...next to the given latents
    adam = optimizer.state[weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.all(adam[key][dead] == 0) and torch.all(adam[key][~dead] != 0), key


def test_the_trainer_restarts_from_summed_counts_and_starts_a_new_window():
    task = TokenizerTask(tiny_recipe("codebook.dead_code_restart=true", "batch_size=2"), CPU)
    task.train_step(1)  # Adam moments everywhere the codebook loss reached
    task.code_counts.counts.copy_(torch.arange(64.0))  # mean 31.5; threshold 0.1 -> codes 0..3 are dead
    quantizer = task.tokenizer.bottleneck.regularizer
    before = quantizer.embedding.weight.detach().clone()
    z = torch.randn(2, 16, quantizer.config.code_dim)
    dead = task.restart_dead_codes(z)
    assert dead.nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert torch.equal(quantizer.embedding.weight[4:], before[4:])
    assert not torch.equal(quantizer.embedding.weight[:4], before[:4])
    assert torch.all(task.g_opt.state[quantizer.embedding.weight]["exp_avg_sq"][:4] == 0)
    assert torch.all(task.code_counts.counts == 0)
