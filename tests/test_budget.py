"""larp.budget: candidate lengths, the batched bisection (monotone and not), the exact and greedy allocation of a
mean budget, decoding prefixes, adaptive_encode with decoding and with a predictor, and the refusals."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import larp
from larp import budget
from larp.budget import (
    adaptive_encode,
    allocate_mean_tokens,
    bisect_lengths,
    candidate_lengths,
    choose_lengths,
    decode_prefixes,
    floor_length,
    lengths_for_target,
    measure_quality,
    pad_past_lengths,
    perceptual_quality,
    window_lengths_of,
)
from larp.evaluation.image_metrics import psnr
from tests.conftest import perturb_


@pytest.fixture
def nested_tokenizer() -> larp.LARPTokenizer:
    torch.manual_seed(3)
    config = dataclasses.replace(larp.LARPTokenizer.from_preset("larp-tiny").config, nested_dropout=True)
    return perturb_(larp.LARPTokenizer(config), seed=3).eval()


@pytest.fixture
def windows() -> torch.Tensor:
    """4 windows: two flat ones (easy) and two noisy ones (hard)."""
    g = torch.Generator().manual_seed(5)
    flat = torch.full((2, 3, 16, 32, 32), 0.5)
    flat[1] = 0.2
    return torch.cat([flat, torch.rand(2, 3, 16, 32, 32, generator=g)])


def test_candidate_lengths():
    assert candidate_lengths(32) == list(range(2, 33, 2))
    assert candidate_lengths(1024) == list(range(64, 1025, 64))
    assert candidate_lengths(10) == list(range(1, 11))  # N // 16 == 0 -> step 1
    assert candidate_lengths(32, 5) == [5, 10, 15, 20, 25, 30, 32]  # N always last
    assert candidate_lengths(32, 32) == [32]
    with pytest.raises(ValueError, match=r"step must be an integer in \[1, 32\], got 0"):
        candidate_lengths(32, 0)


class Curves:
    """A fake measurer over hand-made curves (W, C) that records what was decoded."""

    def __init__(self, curves):
        self.curves = torch.tensor(curves, dtype=torch.float64)
        self.candidates = list(range(1, self.curves.shape[1] + 1))
        self.calls: list[tuple[int, int]] = []

    def __call__(self, window, length):
        self.calls += list(zip(window.tolist(), length.tolist()))
        return self.curves[window, length - 1]


def test_bisection_on_monotone_curves_meets_the_target_or_takes_the_maximum():
    curves = Curves([[10, 20, 30, 40, 50, 60, 70, 80],     # meets 45 at length 5
                     [50, 51, 52, 53, 54, 55, 56, 57],     # at once: 1
                     [1, 2, 3, 4, 5, 6, 7, 8],             # never: the maximum, 8
                     [0, 0, 0, 0, 0, 0, 0, 45]])           # only at the last candidate
    lengths, quality = bisect_lengths(curves, 4, curves.candidates, 45.0)
    assert lengths.tolist() == [5, 1, 8, 8]
    assert quality.tolist() == [50.0, 50.0, 8.0, 45.0]
    # equal to the exhaustive answer, with ceil(log2(8 + 1)) = 4 decodes per window at most instead of 8
    assert lengths.tolist() == lengths_for_target(curves.curves, curves.candidates, 45.0).tolist()
    per_window = [sum(1 for w, _ in curves.calls if w == i) for i in range(4)]
    assert max(per_window) == 4 and len(curves.calls) < 4 * 8
    # lower is better (mse, lpips): the same with the comparison turned
    mse = Curves([[0.9, 0.5, 0.2, 0.1], [0.9, 0.9, 0.8, 0.7]])
    assert bisect_lengths(mse, 2, mse.candidates, 0.3, metric="mse")[0].tolist() == [3, 4]
    assert lengths_for_target(mse.curves, mse.candidates, 0.3, metric="mse").tolist() == [3, 4]


def test_bisection_on_a_non_monotone_curve_returns_the_smallest_decoded_length_that_meets_the_target():
    # a dip at length 4 (below target) between lengths that meet it; the exhaustive answer is 2
    curves = Curves([[10, 31, 20, 25, 40, 41, 42, 43]])
    lengths, quality = bisect_lengths(curves, 1, curves.candidates, 30.0)
    decoded = {length: float(curves.curves[0, length - 1]) for _, length in curves.calls}
    meeting = [k for k, q in decoded.items() if q >= 30.0]
    assert lengths.item() == min(meeting) and quality.item() >= 30.0  # never a length that misses the target
    assert sorted(decoded) == [3, 4, 5] and lengths.item() == 5  # probes 5 (meets), 3 and 4 (miss); 2 never
    assert lengths_for_target(curves.curves, curves.candidates, 30.0).item() == 2  # exact on full curves


def test_allocation_is_optimal_on_a_hand_made_case_and_respects_the_total():
    candidates = [2, 4, 6, 8]
    curves = torch.tensor([[30.0, 30.5, 30.7, 30.8],   # static: little to gain
                           [10.0, 20.0, 28.0, 30.0],   # busy: gains a lot
                           [15.0, 16.0, 25.0, 26.0]])  # non-concave: the gain comes at 6
    # mean 5.5: 16 tokens (floor(16.5) in steps of 2); the best of all 64 assignments is 2 + 8 + 6 -> 85 dB,
    # not the fixed 6 + 6 + 6 (> 16 tokens) nor 4 + 6 + 6 (83.5) nor 2 + 6 + 8 (84)
    for method in ("dp", "greedy"):
        lengths = allocate_mean_tokens(curves, candidates, 5.5, method=method)
        assert lengths.tolist() == [2, 8, 6], method
    # brute force over every assignment on random curves: the DP equals the best total within the budget
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        curves = torch.rand(4, 4, generator=g, dtype=torch.float64) * 10
        mean = 2 + 6 * torch.rand(1, generator=g).item()
        best = max(sum(curves[w, c] for w, c in enumerate(combo)).item()
                   for combo in itertools.product(range(4), repeat=4)
                   if sum(candidates[c] for c in combo) <= 4 * mean)
        for method in ("dp", "greedy"):
            lengths = allocate_mean_tokens(curves, candidates, mean, method=method)
            assert lengths.sum().item() <= 4 * mean
            total = curves[torch.arange(4), lengths // 2 - 1].sum().item()
            if method == "dp":
                assert total == pytest.approx(best)
            else:
                assert total <= best + 1e-9 and total >= best - 10  # never above the optimum
    # lower is better: minimise the summed mse
    mse = torch.tensor([[0.5, 0.1, 0.05, 0.04], [0.2, 0.19, 0.18, 0.17]])
    assert allocate_mean_tokens(mse, candidates, 4.0, metric="mse").tolist() == [6, 2]
    # a budget at or above N everywhere: all at N; below the smallest candidate: refused
    rising = torch.arange(16, dtype=torch.float64).view(4, 4)
    assert allocate_mean_tokens(rising, candidates, 100).tolist() == [8, 8, 8, 8]
    assert allocate_mean_tokens(rising, candidates, 2).tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="mean_tokens 1 is below the smallest candidate length 2"):
        allocate_mean_tokens(curves, candidates, 1)


def test_a_floor_keeps_every_window_at_or_above_it_and_is_optimal_above_it():
    candidates = [2, 4, 6, 8]
    curves = torch.tensor([[30.0, 30.5, 30.7, 30.8],
                           [10.0, 20.0, 28.0, 30.0],
                           [15.0, 16.0, 25.0, 26.0]])
    # mean 5.5 (16 tokens): without a floor the static window gets 2 tokens (2 + 8 + 6 -> 85 dB); with a floor
    # of 4 every window has >= 4: 4 + 6 + 6 = 16 -> 30.5 + 28 + 25 = 83.5 dB beats 4 + 8 + 4 (30.5 + 30 + 16)
    for method in ("dp", "greedy"):
        assert allocate_mean_tokens(curves, candidates, 5.5, method=method).tolist() == [2, 8, 6]
        assert allocate_mean_tokens(curves, candidates, 5.5, method=method, min_tokens=4).tolist() == [4, 6, 6]
        # a floor between candidates rounds up to the next candidate (3 -> 4)
        assert allocate_mean_tokens(curves, candidates, 5.5, method=method, min_tokens=3).tolist() == [4, 6, 6]
        # a floor at the mean's candidate leaves one choice: every window at it
        assert allocate_mean_tokens(curves, candidates, 6, method=method, min_tokens=6).tolist() == [6, 6, 6]
    # brute force over every assignment with lengths >= the floor: the DP reaches the best total within the
    # budget, the greedy never beats it; both keep the floor and the total
    g = torch.Generator().manual_seed(1)
    for trial in range(30):
        curves = torch.rand(4, 4, generator=g, dtype=torch.float64) * 10
        floor = [2, 3, 4, 6][trial % 4]
        mean = 6 + 2 * torch.rand(1, generator=g).item()
        allowed = [c for c in range(4) if candidates[c] >= floor]
        best = max(sum(curves[w, c] for w, c in enumerate(combo)).item()
                   for combo in itertools.product(allowed, repeat=4)
                   if sum(candidates[c] for c in combo) <= 4 * mean)
        for method in ("dp", "greedy"):
            lengths = allocate_mean_tokens(curves, candidates, mean, method=method, min_tokens=floor)
            assert lengths.min().item() >= floor and lengths.sum().item() <= 4 * mean
            total = curves[torch.arange(4), lengths // 2 - 1].sum().item()
            if method == "dp":
                assert total == pytest.approx(best)
            else:
                assert total <= best + 1e-9
    # lower is better with a floor: the mse window that gains most gets the spare tokens above the floor
    mse = torch.tensor([[0.5, 0.1, 0.05, 0.04], [0.2, 0.19, 0.18, 0.17]])
    assert allocate_mean_tokens(mse, candidates, 5.0, metric="mse", min_tokens=4).tolist() == [6, 4]
    # refusals: a floor above the largest candidate, and a mean below the floor's candidate
    with pytest.raises(ValueError, match=r"min_tokens must be an integer in \[1, 8\]"):
        allocate_mean_tokens(curves, candidates, 8, min_tokens=9)
    with pytest.raises(ValueError, match="mean_tokens 4.5 is below the floor's candidate length 6"):
        allocate_mean_tokens(curves, candidates, 4.5, min_tokens=5)


def test_floor_length_is_the_largest_candidate_within_the_fraction():
    candidates = candidate_lengths(32)  # 2, 4, ..., 32
    assert [floor_length(k, candidates, 0.5) for k in (2, 4, 6, 8, 12, 16, 24, 32)] == [2, 2, 2, 4, 6, 8, 12, 16]
    assert floor_length(12, candidates, 0.25) == 2 and floor_length(24, candidates, 0.75) == 18
    assert floor_length(8, candidates, 1.0) == 8
    assert floor_length(10, [4, 8, 16], 0.5) == 4 and floor_length(6, [4, 8, 16], 0.5) == 4
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="floor fraction must be in"):
            floor_length(8, candidates, bad)


def test_greedy_follows_the_convex_hull_and_spends_the_leftover():
    candidates = [1, 2, 3, 4]
    curves = torch.tensor([[0.0, 1.0, 5.0, 6.0], [0.0, 3.0, 3.5, 3.6]])
    # 5 tokens: window 0 to 3 (gain 5 for 2 tokens, via the hull past its weak point 2), window 1 to 2
    assert allocate_mean_tokens(curves, candidates, 2.5, method="greedy").tolist() == [3, 2]
    assert allocate_mean_tokens(curves, candidates, 2.5, method="dp").tolist() == [3, 2]


def test_pad_and_lengths_of_padded_ids():
    ids = torch.arange(8).view(2, 4)
    padded = pad_past_lengths(ids, torch.tensor([2, 4]))
    assert padded.tolist() == [[0, 1, -1, -1], [4, 5, 6, 7]]
    assert window_lengths_of(padded).tolist() == [2, 4]
    with pytest.raises(ValueError, match="window 0: a -1 .* before a valid id"):
        window_lengths_of(torch.tensor([[1, -1, 3, -1]]))


def test_decode_prefixes_equals_decoding_each_prefix(nested_tokenizer, windows):
    ids = nested_tokenizer.encode(windows)
    lengths = torch.tensor([4, 32, 10, 1])
    video = decode_prefixes(nested_tokenizer, pad_past_lengths(ids, lengths), precision="fp32")
    for i, k in enumerate(lengths.tolist()):
        alone = nested_tokenizer.decode(ids[i : i + 1, :k], clamp=True)
        assert torch.allclose(video[i : i + 1], alone, atol=1e-5)
    # full length: exactly tokenizer.decode
    assert torch.equal(decode_prefixes(nested_tokenizer, ids), nested_tokenizer.decode(ids, clamp=True))


def test_measured_curves_are_the_psnr_of_each_prefix(nested_tokenizer, windows):
    candidates = [4, 16, 32]
    curves = measure_quality(nested_tokenizer, windows, candidates, batch_size=5, precision="fp32")
    ids = nested_tokenizer.encode(windows)
    for c, k in enumerate(candidates):
        expected = psnr(windows, nested_tokenizer.decode(ids[:, :k], clamp=True))
        assert torch.allclose(curves[:, c], expected.double(), atol=1e-4)
    mse = measure_quality(nested_tokenizer, windows, candidates, metric="mse", precision="fp32")
    assert torch.allclose(-10 * torch.log10(mse), curves, atol=1e-4)


def test_feature_curves_are_the_squared_feature_distance_of_each_prefix(nested_tokenizer, windows):
    candidates = [4, 16, 32]
    mse = measure_quality(nested_tokenizer, windows, candidates, metric="mse", precision="fp32")
    # the identity as the feature network: the squared distance is the summed squared error, MSE x pixels
    pixels = windows[0].numel()
    features = measure_quality(nested_tokenizer, windows, candidates, metric="features", precision="fp32",
                               features=lambda clips: clips.flatten(1))
    assert torch.allclose(features, mse * pixels, rtol=1e-4)
    calls = []

    def mean_colour(clips):  # (n, 3): the mean colour only
        calls.append(len(clips))
        return clips.mean(dim=(2, 3, 4))

    halved = measure_quality(nested_tokenizer, windows, candidates, metric="features", precision="fp32",
                             batch_size=5, features=mean_colour)
    assert calls == [4, 5, 5, 2]  # the windows' features once, then the 12 decoded prefixes 5 at a time
    ids = nested_tokenizer.encode(windows)
    decoded = nested_tokenizer.decode(ids[:, :16], clamp=True)
    expected = (decoded.mean(dim=(2, 3, 4)) - windows.mean(dim=(2, 3, 4))).pow(2).sum(dim=1)
    assert torch.allclose(halved[:, 1], expected.double(), rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="features metric needs a feature network"):
        measure_quality(nested_tokenizer, windows, candidates, metric="features")


def test_perceptual_quality_adds_the_feature_distance_in_db_and_ignores_its_scale():
    psnr_curves = torch.tensor([[10.0, 12.0, 12.5], [10.0, 10.1, 10.2], [9.0, 10.0, 11.0]])
    # window 1 barely changes in pixels, but its features are far off at 1 token (a lost motion, say)
    features = torch.tensor([[1.0, 1.0, 1.0], [100.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert torch.equal(perceptual_quality(psnr_curves, features, 0.0), psnr_curves.double())
    combined = perceptual_quality(psnr_curves, features, 0.5)
    assert torch.allclose(combined, (psnr_curves - 5 * torch.log10(features)).double())
    candidates = [1, 2, 4]
    # 5 tokens for 3 windows; by enumeration: pixels alone [2, 1, 2] (32.0 dB summed, next best 31.1), with
    # the feature term [2, 2, 1] (31.1, next 30.1; [2, 1, 2] falls to 22.0)
    pixel_only = allocate_mean_tokens(psnr_curves, candidates, 5 / 3, method="dp")
    perceptual = allocate_mean_tokens(combined, candidates, 5 / 3, method="dp")
    assert pixel_only.tolist() == [2, 1, 2] and perceptual.tolist() == [2, 2, 1]
    # the feature scale shifts every curve by a constant: no allocation moves
    for scale in (1e-3, 7.0, 1e4):
        rescaled = allocate_mean_tokens(perceptual_quality(psnr_curves, features * scale, 0.5), candidates, 5 / 3)
        assert torch.equal(rescaled, perceptual)
    with pytest.raises(ValueError, match="one \\(W, C\\) shape"):
        perceptual_quality(psnr_curves, features[:2], 0.5)
    with pytest.raises(ValueError, match="one \\(W, C\\) shape"):
        perceptual_quality(psnr_curves, [features, features[:2]], 0.5)
    with pytest.raises(ValueError, match="at least one network"):
        perceptual_quality(psnr_curves, [], 0.5)
    with pytest.raises(ValueError, match="feature weight must be a finite number >= 0"):
        perceptual_quality(psnr_curves, features, -1.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        perceptual_quality(psnr_curves, -features, 0.5)


def test_perceptual_quality_of_several_networks_is_the_mean_of_their_decibels():
    psnr_curves = torch.tensor([[10.0, 12.0, 12.5], [10.0, 10.1, 10.2], [9.0, 10.0, 11.0]])
    first = torch.tensor([[1.0, 1.0, 1.0], [100.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    second = torch.tensor([[4.0, 2.0, 1.0], [1.0, 1.0, 1.0], [10.0, 1.0, 1.0]])
    both = perceptual_quality(psnr_curves, [first, second], 0.5)
    expected = psnr_curves.double() - 0.5 * 10 * (torch.log10(first.double()) + torch.log10(second.double())) / 2
    assert torch.allclose(both, expected)
    # one network given alone or as a list of one is the same curve
    assert torch.allclose(perceptual_quality(psnr_curves, [first], 0.5), perceptual_quality(psnr_curves, first, 0.5))
    # each network's scale is its own: rescaling one moves no allocation
    rescaled = perceptual_quality(psnr_curves, [first * 1e3, second * 1e-2], 0.5)
    for mean_tokens in (4 / 3, 5 / 3, 7 / 3):
        assert torch.equal(allocate_mean_tokens(rescaled, [1, 2, 4], mean_tokens),
                           allocate_mean_tokens(both, [1, 2, 4], mean_tokens))
    # by enumeration at 5 tokens: the first network alone gives window 1 its second token ([2, 2, 1]); the
    # second one sees window 2 far off at 1 token (10x its distance at 2) and window 0 only 2x: the pair moves
    # window 0's second token to window 2 ([1, 2, 2], 28.6 summed against 27.8 for [2, 2, 1])
    assert allocate_mean_tokens(both, [1, 2, 4], 5 / 3, method="dp").tolist() == [1, 2, 2]


def test_adaptive_encode_meets_a_target_with_fewer_tokens_on_easy_windows(nested_tokenizer, windows):
    candidates = candidate_lengths(32, 4)
    curves = measure_quality(nested_tokenizer, windows, candidates, precision="fp32")
    target = float(curves[:, -1].min()) - 0.01  # every window can meet it
    choice = choose_lengths(nested_tokenizer, windows, target_psnr=target, candidates=candidates, precision="fp32")
    assert choice.lengths.tolist() == lengths_for_target(curves, candidates, target).tolist()
    assert bool((choice.quality >= target).all())
    assert choice.decodes <= 4 * 4  # bisection: ceil(log2(9)) = 4 decodes per window, not 8
    ids, lengths = adaptive_encode(nested_tokenizer, windows, target_psnr=target, candidates=candidates,
                                   precision="fp32")
    assert torch.equal(lengths, choice.lengths) and torch.equal(ids, choice.ids)
    full = nested_tokenizer.encode(windows)
    for i, k in enumerate(lengths.tolist()):
        assert torch.equal(ids[i, :k], full[i, :k]) and bool((ids[i, k:] == -1).all())
    # an unreachable target: every window at N
    assert adaptive_encode(nested_tokenizer, windows, target_psnr=200.0)[1].tolist() == [32] * 4
    # a mean budget: the total respected, the summed PSNR at least the fixed length's
    ids, lengths = adaptive_encode(nested_tokenizer, windows, mean_tokens=12, candidates=candidates)
    assert lengths.sum().item() <= 4 * 12
    at = {k: c for c, k in enumerate(candidates)}
    assert curves[torch.arange(4), [at[k] for k in lengths.tolist()]].sum() >= curves[:, at[12]].sum() - 1e-6


class FakePredictor:
    candidates = [8, 16, 24, 32]
    metric = "psnr"

    def __init__(self):
        self.calls = 0

    def predict(self, tokenizer, windows):
        self.calls += 1
        return torch.tensor([[40.0, 41, 42, 43], [10, 20, 30, 40], [10, 11, 12, 13], [29, 31, 33, 35]])[: len(windows)]


def test_a_predictor_chooses_without_decoding(nested_tokenizer, windows, monkeypatch):
    predictor = FakePredictor()
    monkeypatch.setattr(budget, "decode_prefixes", lambda *a, **k: pytest.fail("decoded with a predictor"))
    choice = choose_lengths(nested_tokenizer, windows, target_psnr=30.0, predictor=predictor)
    assert choice.lengths.tolist() == [8, 24, 32, 16] and choice.decodes == 0 and predictor.calls == 1
    assert choice.quality.tolist() == [40.0, 30.0, 13.0, 31.0]
    assert torch.equal(choice.ids[:, :8], nested_tokenizer.encode(windows)[:, :8])
    ids, lengths = adaptive_encode(nested_tokenizer, windows, mean_tokens=16, predictor=predictor)
    assert lengths.sum().item() <= 64
    with pytest.raises(ValueError, match="predicts psnr, not mse"):
        adaptive_encode(nested_tokenizer, windows, target_mse=0.01, predictor=predictor)
    with pytest.raises(ValueError, match=r"scores the candidate lengths \[8, 16, 24, 32\]"):
        adaptive_encode(nested_tokenizer, windows, target_psnr=30.0, predictor=predictor, candidates=[4, 32])


def test_refusals(tiny_tokenizer, nested_tokenizer, windows, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="not trained with nested dropout .* decodes prefixes"):
        adaptive_encode(tiny_tokenizer, windows, target_psnr=30.0)
    with pytest.raises(ValueError, match="not trained with nested dropout"):
        decode_prefixes(tiny_tokenizer, pad_past_lengths(tiny_tokenizer.encode(windows), torch.tensor([4] * 4)))
    with pytest.raises(ValueError, match="give one of target_psnr, target_mse, target_lpips, target_mean_psnr, "
                                         r"mean_tokens, not several \(target_psnr, mean_tokens\)"):
        adaptive_encode(nested_tokenizer, windows, target_psnr=30.0, mean_tokens=8)
    with pytest.raises(ValueError, match="give one of"):
        adaptive_encode(nested_tokenizer, windows)
    with pytest.raises(ValueError, match="target_mse must be > 0"):
        adaptive_encode(nested_tokenizer, windows, target_mse=0)
    with pytest.raises(ValueError, match="mean_tokens 1 is below the smallest candidate length 2"):
        adaptive_encode(nested_tokenizer, windows, mean_tokens=1)
    with pytest.raises(ValueError, match=r"increase strictly within \[1, 32\]"):
        adaptive_encode(nested_tokenizer, windows, target_psnr=30, candidates=[8, 4])
    monkeypatch.setenv("LARP_LPIPS_WEIGHTS", str(tmp_path / "absent" / "lpips.safetensors"))
    with pytest.raises(ValueError, match="an LPIPS target needs the LPIPS weights"):
        adaptive_encode(nested_tokenizer, windows, target_lpips=0.1)


def test_a_mean_target_is_met_with_the_fewest_tokens_on_the_hull():
    from larp.budget import lengths_for_mean_target

    candidates = [2, 4, 6, 8]
    curves = torch.tensor([[30.0, 30.5, 30.7, 30.8],   # static: already above the target at 2 tokens
                           [10.0, 20.0, 28.0, 30.0]])  # busy
    # mean 25 needs a sum of 50: 30 + 20 (4 tokens) -> [2, 4]; a per-window target of 25 would take [2, 6]
    assert lengths_for_mean_target(curves, candidates, 25.0).tolist() == [2, 4]
    assert lengths_for_target(curves, candidates, 25.0).tolist() == [2, 6]
    assert lengths_for_mean_target(curves, candidates, 29.0).tolist() == [2, 6]  # 30 + 28 = 58
    assert lengths_for_mean_target(curves, candidates, 99.0).tolist() == [8, 8]  # unreachable: the best
    mse = torch.tensor([[0.5, 0.1, 0.05, 0.04], [0.2, 0.19, 0.18, 0.17]])
    assert lengths_for_mean_target(mse, candidates, 0.16, metric="mse").tolist() == [4, 2]  # (0.1 + 0.2) / 2


def test_a_mean_psnr_target_from_decoded_and_from_predicted_curves(nested_tokenizer, windows):
    from larp.budget import lengths_for_mean_target

    candidates = [8, 16, 24, 32]
    curves = measure_quality(nested_tokenizer, windows, candidates, precision="fp32")
    target = float(curves[:, 1].mean())  # the mean PSNR of the fixed length 16
    choice = choose_lengths(nested_tokenizer, windows, target_mean_psnr=target, candidates=candidates,
                            precision="fp32")
    assert choice.lengths.tolist() == lengths_for_mean_target(curves, candidates, target).tolist()
    assert float(choice.quality.mean()) >= target - 1e-6 and choice.lengths.sum().item() <= 4 * 16
    predictor = FakePredictor()
    lengths = adaptive_encode(nested_tokenizer, windows, target_mean_psnr=28.0, predictor=predictor)[1]
    assert lengths.tolist() == lengths_for_mean_target(predictor.predict(None, windows), predictor.candidates,
                                                       28.0).tolist()
