"""The learned length predictor: monotone curves, save/load, training post hoc on a frozen tokenizer (the one
loop), `larp train-budget`, and its use by larp.budget without decoding."""

import dataclasses
import json

import pytest
import torch

from larp.budget import adaptive_encode, allocate_mean_tokens, lengths_for_target
from larp.cli.main import main
from larp.models.length_predictor import LengthPredictor, LengthPredictorConfig
from larp.models.tokenizer import TOKENIZER_PRESETS, LARPTokenizer
from larp.training.budget_trainer import BudgetTrainConfig, PredictorTask, train_length_predictor


@pytest.fixture(scope="module")
def nested():
    """larp-tiny with nested dropout, perturbed random weights (its prefixes decode to different videos)."""
    torch.manual_seed(5)
    model = LARPTokenizer(dataclasses.replace(TOKENIZER_PRESETS["larp-tiny"], nested_dropout=True))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def _config(**kw) -> LengthPredictorConfig:
    return LengthPredictorConfig(**{"num_tokens": 32, "feature_dim": 64, "candidates": (4, 8, 16, 32),
                                    "hidden_size": 32, **kw})


def test_predicted_curves_are_monotone_in_the_length_and_mse_is_psnr_in_other_units():
    features = torch.randn(64, 32, 64) * 3
    for metric, sign in (("psnr", 1), ("lpips", -1)):
        torch.manual_seed(0)
        model = LengthPredictor(_config(metric=metric)).eval()
        with torch.no_grad():
            torch.nn.init.normal_(model.head.weight, std=2.0)  # large random steps, either sign before softplus
            curve = model(features)
        steps = sign * curve.diff(dim=1)
        assert (steps >= 0).all() and (steps > 1e-3).any(), metric
    torch.manual_seed(0)
    psnr_model = LengthPredictor(_config(metric="psnr")).eval()
    torch.manual_seed(0)
    mse_model = LengthPredictor(_config(metric="mse")).eval()
    with torch.no_grad():
        db = psnr_model(features)
        assert torch.allclose(mse_model.to_metric(mse_model(features)), 10 ** (-db / 10), rtol=1e-5)
    with pytest.raises(ValueError, match="candidates"):
        _config(candidates=(8, 4))
    with pytest.raises(ValueError, match="metric"):
        _config(metric="ssim")


def test_save_and_load_give_the_same_predictions(nested, tmp_path):
    torch.manual_seed(1)
    model = LengthPredictor(_config(tokenizer="abc"))
    model.target_mean.fill_(15.0)
    model.target_scale.fill_(2.0)
    model.eval().save_pretrained(tmp_path / "p")
    loaded = LengthPredictor.from_pretrained(tmp_path / "p")
    assert loaded.config == model.config and loaded.candidates == [4, 8, 16, 32] and loaded.metric == "psnr"
    windows = torch.rand(3, 3, 16, 32, 32)
    predicted = loaded.predict(nested, windows, batch_size=2)
    with torch.no_grad():
        direct = model(nested.encode_features(windows))
    assert predicted.shape == (3, 4) and torch.equal(predicted, direct)
    assert 5 < predicted.mean() < 25  # the label statistics are applied
    other = LARPTokenizer.from_preset("larp-tiny")  # 32 tokens of width 64 too: accepted; another width is not
    loaded.predict(other, windows[:1])
    wide = LARPTokenizer(dataclasses.replace(TOKENIZER_PRESETS["larp-tiny"], encoder_hidden_size=128))
    with pytest.raises(ValueError, match="train one for it"):
        loaded.predict(wide, windows[:1])


def test_the_task_learns_a_known_curve_in_the_one_loop():
    """Curves that are a known function of the features: the regression (Trainer + PredictorTask) finds them."""
    from larp.training.distributed import DistInfo
    from larp.training.loop import Cadence, Trainer

    generator = torch.Generator().manual_seed(0)
    level = torch.randn(512, 1, generator=generator)  # how busy a window is: shifts its features along one direction
    features = torch.randn(512, 32, 64, generator=generator) + level[:, :, None] * torch.randn(64, generator=generator)
    lengths = torch.tensor([4.0, 8.0, 16.0, 32.0])
    curves = 14 + 2 * level + (1.5 + level.clamp(-1, 1)) * torch.log2(lengths)[None]
    config = BudgetTrainConfig(steps=150, batch_size=64, lr=3e-3, hidden_size=64)
    torch.manual_seed(0)
    model = LengthPredictor(LengthPredictorConfig(num_tokens=32, feature_dim=64, candidates=(4, 8, 16, 32),
                                                  hidden_size=64))
    model.target_mean.fill_(curves[:448].mean().item())
    model.target_scale.fill_(curves[:448].std().item())
    task = PredictorTask(model.train(), features[:448], curves[:448], features[448:], curves[448:], config)
    before = task.evaluate(0)["val_mae"]
    Trainer(task, Cadence(config.steps, log_every=50, eval_every=75), DistInfo(0, 0, 1, torch.device("cpu")),
            progress=False).fit()
    after = task.history[-1]["val_mae"]
    assert [h["step"] for h in task.history] == [0, 75, 150]
    assert after < 0.1 * before and after < 0.2 * curves.std().item()  # measured: 7.14 -> 0.35 dB


def test_train_length_predictor_reports_its_error_against_the_measured_curves(nested):
    from larp.budget import measure_quality
    from larp.evaluation.budget import predictor_quality

    windows = torch.rand(40, 3, 16, 32, 32, generator=torch.Generator().manual_seed(3))
    config = BudgetTrainConfig(candidate_step=8, steps=30, batch_size=16, hidden_size=32)
    model, report = train_length_predictor(nested, windows[:28], windows[28:], config, tokenizer_id="t0",
                                           targets=(8.0,), means=(16,))
    assert model.candidates == [8, 16, 24, 32] and model.config.tokenizer == "t0" and not model.training
    measured = measure_quality(nested, windows[28:], [8, 16, 24, 32], batch_size=64)
    predicted = model.predict(nested, windows[28:]).double()
    # the report is predictor_quality of the predictor's own curves against curves measured by decoding
    expected = predictor_quality(measured, predicted, [8, 16, 24, 32], targets=(8.0,), means=(16,))
    assert report["held_out"]["mae"] == pytest.approx(expected["mae"], rel=1e-4)
    assert report["held_out"]["means"][0]["exact_mean_quality"] == pytest.approx(
        expected["means"][0]["exact_mean_quality"], rel=1e-6)
    assert report["train_windows"] == 28 and report["held_out_windows"] == 12 and report["history"]
    assert model.target_mean.item() == pytest.approx(
        measure_quality(nested, windows[:28], [8, 16, 24, 32], batch_size=64).mean().item(), rel=1e-4)


def test_train_budget_cli_and_the_predictor_choosing_lengths_without_decoding(nested, tmp_path, capsys, monkeypatch):
    nested.save_pretrained(tmp_path / "tok")
    out = tmp_path / "pred"
    assert main(["-q", "train-budget", "--tokenizer", str(tmp_path / "tok"), "-o", str(out), "--clips", "24",
                 "--val-clips", "8", "--steps", "20", "--candidate-step", "8", "--means", "16", "--targets", "9",
                 "--set", "hidden_size=32", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert f"held-out MAE {report['held_out']['mae']:.3f} dB" in printed
    assert report["settings"]["hidden_size"] == 32 and report["settings"]["steps"] == 20
    predictor = LengthPredictor.from_pretrained(out)
    from larp.training.token_cache import tokenizer_fingerprint

    assert predictor.config.tokenizer == tokenizer_fingerprint(nested)

    # with the predictor, larp.budget picks lengths from the predicted curves: no decoding at all
    windows = torch.rand(6, 3, 16, 32, 32, generator=torch.Generator().manual_seed(9))
    curves = predictor.predict(nested, windows)
    calls = []
    original = LARPTokenizer.decode_latents
    monkeypatch.setattr(LARPTokenizer, "decode_latents", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids, lengths = adaptive_encode(nested, windows, mean_tokens=16, predictor=predictor)
    assert torch.equal(lengths, allocate_mean_tokens(curves, [8, 16, 24, 32], 16)) and int(lengths.sum()) <= 96
    _, by_target = adaptive_encode(nested, windows, target_psnr=9.0, predictor=predictor)
    assert torch.equal(by_target, lengths_for_target(curves, [8, 16, 24, 32], 9.0))
    assert calls == []
    assert ((ids >= 0).sum(dim=1) == lengths).all()

    # a tokenizer without nested dropout is refused before anything is measured
    LARPTokenizer.from_preset("larp-tiny").save_pretrained(tmp_path / "plain")
    assert main(["train-budget", "--tokenizer", str(tmp_path / "plain"), "-o", str(tmp_path / "x")]) == 1
    assert "not trained with nested dropout" in capsys.readouterr().err and not (tmp_path / "x").exists()
