"""The rate-quality evaluation (larp.evaluation.budget, `larp evaluate-budget`): fixed vs adaptive budgets,
the target comparison and the predictor's loss against the exact search."""

import dataclasses
import json

import pytest
import torch

from larp.budget import allocate_mean_tokens, measure_quality, perceptual_quality
from larp.cli.main import main
from larp.evaluation.budget import predictor_quality, rate_quality, score_lengths
from larp.evaluation.detectors import ClassifierDetector
from larp.evaluation.fvd import frechet_distance
from larp.evaluation.video_classifier import VideoClassifier
from larp.models.tokenizer import TOKENIZER_PRESETS, LARPTokenizer


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def nested():
    """larp-tiny with nested dropout and perturbed random weights: every prefix decodes to something else."""
    torch.manual_seed(3)
    return _perturbed(LARPTokenizer(dataclasses.replace(TOKENIZER_PRESETS["larp-tiny"], nested_dropout=True)), 3)


@pytest.fixture(scope="module")
def clips():
    from larp.data.synthetic import SyntheticConfig, SyntheticVideos

    data = SyntheticVideos(SyntheticConfig(num_videos=10, seed=1, frames=16, size=32))
    return torch.stack([data[i]["video"] for i in range(10)]), torch.tensor([data[i]["label"] for i in range(10)])


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(4)
    return ClassifierDetector(_perturbed(VideoClassifier.from_preset("synthetic-32"), 4))


# ------------------------------------------------------------------------------------------ predictor_quality
def test_predictor_quality_on_a_hand_made_case():
    measured = torch.tensor([[10.0, 20.0, 30.0], [10.0, 11.0, 12.0]])
    predicted = torch.tensor([[10.0, 19.0, 30.0], [10.0, 25.0, 26.0]])
    q = predictor_quality(measured, predicted, [1, 2, 4], targets=(20.0,), means=(2.5,))
    assert q["mae"] == pytest.approx((1 + 14 + 14) / 6)
    assert q["mae_per_candidate"] == pytest.approx([0.0, 7.5, 7.0])
    (target,) = q["targets"]
    # exact: window 0 needs 2 tokens, window 1 never reaches 20 dB (the maximum, 4); predicted: 4 and 2
    assert target["exact_mean_tokens"] == 3.0 and target["exact_share_meeting"] == 0.5
    assert target["predicted_mean_tokens"] == 3.0 and target["predicted_share_meeting"] == 0.5
    assert target["predicted_mean_quality"] == pytest.approx((30 + 11) / 2)
    (mean,) = q["means"]
    # 5 tokens for two windows: exact (4, 1) = 40 dB summed; the predicted curves choose (2, 2) = 31 dB measured
    assert mean["exact_mean_quality"] == pytest.approx(20.0) and mean["exact_used_tokens"] == 2.5
    assert mean["predicted_mean_quality"] == pytest.approx(15.5) and mean["predicted_used_tokens"] == 2.0
    assert mean["loss"] == pytest.approx(4.5)


# ------------------------------------------------------------------------------------------ rate_quality
def test_adaptive_is_never_below_fixed_and_scores_match_the_measured_curves(nested, clips, detector):
    videos, labels = clips
    result = rate_quality(nested, videos, budgets=(8, 16, 32), labels=labels, detector=detector,
                          candidates=[8, 16, 24, 32], targets=(12.0,), targets_at=(16,), score_ssim=False)
    curves = measure_quality(nested, videos, result["candidates"], batch_size=64)
    rows = {(r["policy"], r["budget"]): r for r in result["curves"]}
    assert sorted(rows) == [(p, b) for p in ("adaptive", "fixed") for b in (8, 16, 32)]
    for budget in (8, 16, 32):
        fixed, adaptive = rows["fixed", budget], rows["adaptive", budget]
        column = result["candidates"].index(budget)
        # the fixed row's PSNR, scored by decoding, is the measured curve's mean at that length
        assert fixed["psnr"] == pytest.approx(curves[:, column].mean().item(), abs=1e-4)
        assert fixed["mean_tokens"] == budget and adaptive["mean_tokens"] <= budget
        # every window at K is one allocation of K tokens per window: the optimal one is never worse
        assert adaptive["psnr"] >= fixed["psnr"] - 1e-4
        lengths = allocate_mean_tokens(curves, result["candidates"], budget)
        assert adaptive["mean_tokens"] == pytest.approx(lengths.double().mean().item())
        for row in (fixed, adaptive):
            correct = row["class_accuracy"] * len(videos)
            assert correct == pytest.approx(round(correct))
    assert rows["adaptive", 16]["psnr"] > rows["fixed", 16]["psnr"]  # these curves differ between windows
    assert result["fixed_psnr_at_candidates"] == pytest.approx(curves.mean(dim=0).tolist(), abs=1e-9)
    # the per-window target: every window meets it at its length, or takes the maximum
    given, at_16 = result["targets"]
    assert at_16["target_psnr"] == pytest.approx(curves[:, 1].mean().item())
    assert at_16["smallest_fixed_reaching"] is not None and at_16["smallest_fixed_reaching"] <= 16
    # on the mean, the adaptive allocation reaches the PSNR of every window at 16 tokens with a budget of at most 16
    assert at_16["smallest_adaptive_budget_reaching"] == min(
        b for b in (8, 16, 32) if rows["adaptive", b]["psnr"] >= at_16["target_psnr"])
    assert at_16["smallest_adaptive_budget_reaching"] <= 16
    reached = (curves >= 12.0).any(dim=1).double().mean().item()
    assert given["adaptive_share_meeting"] == pytest.approx(reached)


def test_the_floored_policy_is_the_allocation_with_a_floor_between_fixed_and_adaptive(nested, clips):
    videos, _ = clips
    candidates = [8, 16, 24, 32]
    result = rate_quality(nested, videos, budgets=(16, 24), candidates=candidates, min_fraction=0.75,
                          score_ssim=False)
    curves = measure_quality(nested, videos, candidates, batch_size=64)
    rows = {(r["policy"], r["budget"]): r for r in result["curves"]}
    assert sorted(rows) == [(p, b) for p in ("adaptive", "fixed", "floored") for b in (16, 24)]
    assert result["min_fraction"] == 0.75
    # the floor: the largest candidate <= 0.75 K (12 -> 8, 18 -> 16)
    assert rows["floored", 16]["min_tokens"] == 8 and rows["floored", 24]["min_tokens"] == 16
    for budget in (16, 24):
        floor = rows["floored", budget]["min_tokens"]
        lengths = allocate_mean_tokens(curves, candidates, budget, min_tokens=floor)
        assert lengths.min().item() >= floor
        floored = rows["floored", budget]
        assert floored["mean_tokens"] == pytest.approx(lengths.double().mean().item())
        assert floored["mean_tokens"] <= budget
        column = torch.tensor([candidates.index(k) for k in lengths.tolist()])
        assert floored["psnr"] == pytest.approx(curves[torch.arange(len(videos)), column].mean().item(), abs=1e-4)
        # every window at K meets the floor, so the floored optimum is never below fixed, nor above the free one
        assert rows["fixed", budget]["psnr"] - 1e-4 <= floored["psnr"] <= rows["adaptive", budget]["psnr"] + 1e-4
        assert "min_tokens" not in rows["adaptive", budget]
    with pytest.raises(ValueError, match="floor fraction must be in"):
        rate_quality(nested, videos, budgets=(16,), candidates=candidates, min_fraction=1.5)


def test_the_perceptual_policy_allocates_over_psnr_plus_the_second_networks_feature_distance(nested, clips,
                                                                                          detector):
    videos, labels = clips
    torch.manual_seed(5)
    second = ClassifierDetector(_perturbed(VideoClassifier.from_preset("synthetic-32"), 5))
    candidates = [8, 16, 24, 32]
    result = rate_quality(nested, videos, budgets=(16,), labels=labels, candidates=candidates, detector=detector,
                          feature_network=second, feature_weight=0.25, score_ssim=False)
    rows = {r["policy"]: r for r in result["curves"]}
    assert sorted(rows) == ["adaptive", "fixed", "perceptual"] and result["feature_weight"] == 0.25
    psnr_curves = measure_quality(nested, videos, candidates, batch_size=64)
    distances = measure_quality(nested, videos, candidates, metric="features", features=second.features)
    lengths = allocate_mean_tokens(perceptual_quality(psnr_curves, distances, 0.25), candidates, 16)
    column = torch.tensor([candidates.index(k) for k in lengths.tolist()])
    assert rows["perceptual"]["mean_tokens"] == pytest.approx(lengths.double().mean().item())
    assert rows["perceptual"]["psnr"] == pytest.approx(psnr_curves[torch.arange(len(videos)), column].mean().item(),
                                                       abs=1e-4)
    # the PSNR-optimal allocation is at least as good in PSNR; the perceptual one trades some of it
    assert rows["perceptual"]["psnr"] <= rows["adaptive"]["psnr"] + 1e-6
    assert "fvd" in rows["perceptual"] and "class_accuracy" in rows["perceptual"]
    # several networks: the allocation over the mean of their feature terms
    third = ClassifierDetector(_perturbed(VideoClassifier.from_preset("synthetic-32"), 6))
    pair = rate_quality(nested, videos, budgets=(16,), candidates=candidates, feature_network=[second, third],
                        feature_weight=2.0, score_ssim=False)
    third_distances = measure_quality(nested, videos, candidates, metric="features", features=third.features)
    lengths = allocate_mean_tokens(perceptual_quality(psnr_curves, [distances, third_distances], 2.0), candidates, 16)
    column = torch.tensor([candidates.index(k) for k in lengths.tolist()])
    row = next(r for r in pair["curves"] if r["policy"] == "perceptual")
    assert row["psnr"] == pytest.approx(psnr_curves[torch.arange(len(videos)), column].mean().item(), abs=1e-4)


def test_score_lengths_fvd_and_accuracy_are_the_detectors(nested, clips, detector):
    videos, labels = clips
    from larp.budget import decode_prefixes
    from larp.evaluation.budget import encode_ids
    from larp.evaluation.fvd import FeatureStats

    videos, labels = videos[:8], labels[:8]
    ids = encode_ids(nested, videos)
    lengths = torch.tensor([2, 4, 6, 32] * 2)
    real = FeatureStats.from_features(detector.features(videos))
    scores = score_lengths(nested, videos, ids, lengths, labels=labels, detector=detector, real_stats=real,
                           batch_size=5)
    fake = decode_prefixes(nested, ids, lengths, 16)
    assert scores["fvd"] == pytest.approx(frechet_distance(detector.features(videos), detector.features(fake)),
                                          rel=1e-6)
    assert scores["class_accuracy"] == (detector.predict(fake) == labels).double().mean().item()
    assert scores["mean_tokens"] == lengths.double().mean().item() and "lpips" not in scores


def test_a_tokenizer_without_nested_dropout_is_refused(clips):
    plain = LARPTokenizer.from_preset("larp-tiny").eval()
    with pytest.raises(ValueError, match="not trained with nested dropout"):
        rate_quality(plain, clips[0], budgets=(4,))


# ------------------------------------------------------------------------------------------ CLI
def test_evaluate_budget_cli_writes_the_curves_plots_and_says_why_lpips_is_absent(nested, detector, tmp_path,
                                                                                  monkeypatch, capsys):
    monkeypatch.setenv("LARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LARP_OFFLINE", "1")
    monkeypatch.delenv("LARP_LPIPS_WEIGHTS", raising=False)
    nested.save_pretrained(tmp_path / "tok")
    detector.classifier.save_pretrained(tmp_path / "det")
    out = tmp_path / "eval" / "b.json"
    assert main(["-q", "evaluate-budget", "--tokenizer", str(tmp_path / "tok"), "--num-samples", "6",
                 "--budgets", "8,32", "--candidate-step", "8", "--targets", "12", "--min-fraction", "0.5",
                 "--detector", str(tmp_path / "det"), "--perceptual-detector", str(tmp_path / "det"),
                 str(tmp_path / "det"), "--no-ssim",
                 "--device", "cpu", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["clips"] == 6 and record["lpips"].startswith("no LPIPS column") and "no LPIPS column" in printed
    assert [(r["policy"], r["budget"]) for r in record["curves"]] == [
        ("fixed", 8), ("adaptive", 8), ("perceptual", 8), ("floored", 8),
        ("fixed", 32), ("adaptive", 32), ("perceptual", 32), ("floored", 32)]
    assert record["feature_weight"] == 0.5 and [d["kind"] for d in record["perceptual_detectors"]] == [
        "video-classifier"] * 2
    # --min-fraction 0.5: K = 8 floors at the smallest candidate 8 (every window at 8, as fixed); K = 32 at 16
    assert [r["min_tokens"] for r in record["curves"] if r["policy"] == "floored"] == [8, 16]
    assert record["curves"][3]["psnr"] == pytest.approx(record["curves"][0]["psnr"], abs=1e-6)
    assert record["min_fraction"] == 0.5
    assert all("lpips" not in r and "ssim" not in r and "fvd" in r for r in record["curves"])
    assert sorted(record["plots"]) == ["class_accuracy", "fvd", "psnr"]
    for path in record["plots"].values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"{record['curves'][0]['psnr']:.4f}" in printed
    # a budget above N is a one-line error naming the flag
    assert main(["evaluate-budget", "--tokenizer", str(tmp_path / "tok"), "--budgets", "64", "--detector", "none",
                 "-o", str(out)]) == 1
    assert "--budgets 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate-budget", "--tokenizer", str(tmp_path / "tok"), "--min-fraction", "2"])
    assert "--min-fraction: expected a number in (0, 1], got '2'" in capsys.readouterr().err
