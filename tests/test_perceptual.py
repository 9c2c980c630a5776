"""LPIPS-VGG16 in-repo: conversion from the original file layouts, weight lookup, and the distance itself.

No network and no real weights: the tests build random stand-ins for torchvision's ``vgg16-397923af.pth`` and
lpips' ``v0.1/vgg.pth`` with the real key names and (feature) shapes.
"""

from __future__ import annotations

import argparse
import io
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from larp import weights
from larp.cli import weights_commands
from larp.losses import perceptual
from larp.losses.perceptual import LPIPS, convert_lpips_weights, load_lpips, resolve_lpips_weights

# torchvision vgg16 ``features`` conv indices and widths; max-pools sit at 4, 9, 16, 23 (and 30).
CONVS = {0: 64, 2: 64, 5: 128, 7: 128, 10: 256, 12: 256, 14: 256, 17: 512, 19: 512, 21: 512, 24: 512, 26: 512, 28: 512}
POOL_BEFORE = {5, 10, 17, 24}
TAP_AFTER = {2, 7, 14, 21, 28}  # the convs whose ReLU is relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
HEAD_CHANNELS = (64, 128, 256, 512, 512)


def fake_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision vgg16 state-dict keys; He-scaled random convs so activations neither vanish nor blow up."""
    generator = torch.Generator().manual_seed(seed)
    state, channels = {}, 3
    for index, width in CONVS.items():
        std = (2.0 / (9 * channels)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=generator) * std
        state[f"features.{index}.bias"] = torch.randn(width, generator=generator) * 0.01
        channels = width
    # torchvision also has the classifier (real shapes 4096x25088, 4096x4096, 1000x4096); the converter drops
    # these keys without looking at them, so small stand-ins keep the test fast.
    for index, width in ((0, 8), (3, 8), (6, 4)):
        state[f"classifier.{index}.weight"] = torch.randn(width, 8, generator=generator)
        state[f"classifier.{index}.bias"] = torch.randn(width, generator=generator)
    return state


def fake_lpips_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """lpips v0.1 vgg.pth keys; non-negative heads like the trained ones."""
    generator = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for k, c in enumerate(HEAD_CHANNELS)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lpips-sources")
    vgg16, heads = folder / "vgg16-397923af.pth", folder / "vgg.pth"
    torch.save(fake_vgg16_state(), vgg16)
    torch.save(fake_lpips_state(), heads)
    converted = convert_lpips_weights(vgg16, heads, folder / "lpips_vgg16.safetensors")
    return {"vgg16": vgg16, "lpips": heads, "converted": converted}


@pytest.fixture(scope="module")
def model(sources) -> LPIPS:
    return load_lpips(sources["converted"])


@pytest.fixture
def no_lookup(monkeypatch, tmp_path):
    """An empty cache, no env var, no download: nothing can be found unless a test puts it there."""
    monkeypatch.setenv("LARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LARP_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setenv("LARP_OFFLINE", "1")
    return tmp_path / "cache" / "lpips_vgg16.safetensors"


def images(seed: int, n: int = 2, size: int = 20) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1]; 20 -> 10 -> 5 -> 2 -> 1 also exercises floor pooling."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_lpips(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The LPIPS formula written out independently, in float64, from the original (lpips / torchvision) keys."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64)[:, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64)[:, None, None]
    distances = []
    for image_x, image_y in zip(x.double(), y.double()):
        per_image = []
        hx, hy = ((image_x * 2 - 1) - shift) / scale, ((image_y * 2 - 1) - shift) / scale
        hx, hy, layer = hx[None], hy[None], 0
        for index in CONVS:
            if index in POOL_BEFORE:
                hx, hy = F.max_pool2d(hx, 2), F.max_pool2d(hy, 2)
            weight, bias = state[f"features.{index}.weight"].double(), state[f"features.{index}.bias"].double()
            hx = F.conv2d(hx, weight, bias, padding=1).clamp_min(0)
            hy = F.conv2d(hy, weight, bias, padding=1).clamp_min(0)
            if index in TAP_AFTER:
                ux = hx / (torch.linalg.vector_norm(hx, dim=1, keepdim=True) + 1e-10)
                uy = hy / (torch.linalg.vector_norm(hy, dim=1, keepdim=True) + 1e-10)
                head = state[f"lin{layer}.model.1.weight"].double().flatten()
                per_image.append(torch.einsum("bchw,c->bhw", (ux - uy) ** 2, head).mean())
                layer += 1
        distances.append(sum(per_image))
    return torch.stack(distances)


def test_matches_independent_formula(sources, model):
    original = {**torch.load(sources["vgg16"], weights_only=True), **torch.load(sources["lpips"], weights_only=True)}
    x, y = images(0), images(1)
    got = model(x, y)
    assert got.shape == (2,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_lpips(original, x, y), rtol=1e-4, atol=1e-6)
    # normalize=False takes inputs already in [-1, 1]
    torch.testing.assert_close(model(2 * x - 1, 2 * y - 1, normalize=False), got, rtol=1e-5, atol=1e-7)


def test_distance_properties(model):
    x, y = images(2), images(3)
    assert torch.equal(model(x, x), torch.zeros(2))
    torch.testing.assert_close(model(x, y), model(y, x), rtol=1e-5, atol=1e-7)
    assert (model(x, y) > 0).all()
    assert (model(x, (x + 0.02 * images(4)).clamp(0, 1)) < model(x, y)).all()


def test_gradient_reaches_inputs_not_weights(model):
    x, y = images(5).requires_grad_(), images(6)
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_frozen_and_stays_in_eval(model):
    parent = torch.nn.ModuleDict({"lpips": model})
    parent.train()
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_video_helper_flattens_frames(model):
    generator = torch.Generator().manual_seed(7)
    x, y = torch.rand(2, 3, 4, 20, 20, generator=generator), torch.rand(2, 3, 4, 20, 20, generator=generator)
    per_frame = model.forward_video(x, y, reduction="none")
    assert per_frame.shape == (2, 4)
    expected = torch.tensor(
        [[model(x[b : b + 1, :, t], y[b : b + 1, :, t]).item() for t in range(4)] for b in range(2)]
    )
    torch.testing.assert_close(per_frame, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.forward_video(x, y), expected.mean(), rtol=1e-5, atol=1e-7)


def test_bad_shapes(model):
    with pytest.raises(ValueError, match=r"\(n, 3, h, w\)"):
        model(images(0), images(1, size=24))
    with pytest.raises(ValueError, match=r"\(b, 3, t, h, w\)"):
        model.forward_video(images(0), images(1))


def test_bf16_autocast_keeps_fp32_head(model):
    x, y = images(8), images(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, y)
        same = model(x, x)
    assert low.dtype == torch.float32 and torch.equal(same, torch.zeros(2))
    torch.testing.assert_close(low, model(x, y), rtol=0.1, atol=1e-3)


def test_converted_file_layout(sources):
    state = load_file(sources["converted"])
    assert set(state) == set(LPIPS().state_dict())
    vgg = torch.load(sources["vgg16"], weights_only=True)
    heads = torch.load(sources["lpips"], weights_only=True)
    assert torch.equal(state["features.28.weight"], vgg["features.28.weight"])
    assert torch.equal(state["lins.3.weight"], heads["lin3.model.1.weight"])
    with safe_open(str(sources["converted"]), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "larp-lpips-vgg16"
    assert metadata["vgg16_sha256"] == weights.file_sha256(sources["vgg16"])
    assert metadata["lpips_sha256"] == weights.file_sha256(sources["lpips"])


def test_convert_rejects_missing_unexpected_and_misshapen_keys(tmp_path, sources):
    vgg = fake_vgg16_state()
    del vgg["features.19.bias"]
    torch.save(vgg, tmp_path / "vgg16.pth")
    with pytest.raises(ValueError, match=r"missing keys \[features\.19\.bias\]"):
        convert_lpips_weights(tmp_path / "vgg16.pth", sources["lpips"], tmp_path / "out.safetensors")

    heads = fake_lpips_state()
    heads["lin5.model.1.weight"] = torch.zeros(1, 8, 1, 1)
    heads["lin2.model.1.weight"] = torch.zeros(1, 7, 1, 1)
    torch.save(heads, tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \[lin5\.model\.1\.weight\].*shape mismatches \[lin2\.model"):
        convert_lpips_weights(sources["vgg16"], tmp_path / "vgg.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()

    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_lpips_weights(tmp_path / "nope.pth", sources["lpips"], tmp_path / "out.safetensors")


def test_load_rejects_incomplete_file(tmp_path, sources):
    state = load_file(sources["converted"])
    del state["lins.4.weight"]
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \[lins\.4\.weight\].*larp weights lpips"):
        load_lpips(tmp_path / "broken.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_lpips(tmp_path / "junk.safetensors")


def test_missing_weights_message_says_how_to_get_them(no_lookup):
    with pytest.raises(FileNotFoundError) as raised:
        load_lpips()
    message = str(raised.value)
    for needed in ("LARP_LPIPS_WEIGHTS", "larp weights lpips --vgg16", perceptual.VGG16_URL, perceptual.LPIPS_VGG_URL):
        assert needed in message
    assert str(no_lookup) in message


def test_no_network_is_a_missing_weights_error(no_lookup, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="download failed.*no route to host.*larp weights lpips"):
        resolve_lpips_weights(download=True)


def test_resolution_order(no_lookup, monkeypatch, tmp_path, sources):
    explicit = tmp_path / "explicit.safetensors"
    from_env = tmp_path / "env.safetensors"
    for path in (explicit, from_env, no_lookup):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sources["converted"].read_bytes())
    monkeypatch.setenv("LARP_LPIPS_WEIGHTS", str(from_env))
    assert resolve_lpips_weights(explicit) == explicit
    assert resolve_lpips_weights() == from_env
    monkeypatch.delenv("LARP_LPIPS_WEIGHTS")
    assert resolve_lpips_weights() == no_lookup
    assert isinstance(load_lpips(device="cpu"), LPIPS)
    # an explicit path or env var that is wrong is an error, not a silent fall-back to the cache
    with pytest.raises(FileNotFoundError, match="the given path is not a file"):
        resolve_lpips_weights(tmp_path / "typo.safetensors")
    monkeypatch.setenv("LARP_LPIPS_WEIGHTS", str(tmp_path / "typo.safetensors"))
    with pytest.raises(FileNotFoundError, match="LARP_LPIPS_WEIGHTS is set but is not a file"):
        resolve_lpips_weights()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LARP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert perceptual.lpips_cache_path() == tmp_path / "xdg" / "larp" / "lpips_vgg16.safetensors"
    monkeypatch.setenv("LARP_CACHE", str(tmp_path / "mine"))
    assert perceptual.lpips_cache_path() == tmp_path / "mine" / "lpips_vgg16.safetensors"
    monkeypatch.delenv("LARP_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert perceptual.lpips_cache_path() == tmp_path / "home" / ".cache" / "larp" / "lpips_vgg16.safetensors"


def _serve(files: dict[str, bytes]):
    """A stand-in for urllib.request.urlopen serving fixed bytes per URL."""

    def urlopen(url, timeout=None):
        return io.BytesIO(files[url])

    return urlopen


def test_download_verifies_pinned_digests_and_fills_cache(no_lookup, monkeypatch, sources):
    payload = {
        perceptual.VGG16_URL: sources["vgg16"].read_bytes(),
        perceptual.LPIPS_VGG_URL: sources["lpips"].read_bytes(),
    }
    monkeypatch.setattr(weights.urllib.request, "urlopen", _serve(payload))
    # the stand-in files are not the real ones: their digests do not match the pinned ones
    with pytest.raises(weights.DigestMismatchError, match="expected a78928a0"):
        resolve_lpips_weights(download=True)
    assert not no_lookup.exists()
    monkeypatch.setattr(perceptual, "VGG16_SHA256", weights.file_sha256(sources["vgg16"]))
    monkeypatch.setattr(perceptual, "LPIPS_VGG_SHA256", weights.file_sha256(sources["lpips"]))
    assert resolve_lpips_weights(download=True) == no_lookup
    assert load_file(no_lookup).keys() == load_file(sources["converted"]).keys()
    assert [p.name for p in no_lookup.parent.iterdir()] == [no_lookup.name]  # no leftovers from the download


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="larp")
    weights_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_convert_and_where(no_lookup, sources, capsys):
    assert _cli(["weights", "where"]) == 0
    out = capsys.readouterr().out
    assert "LARP_LPIPS_WEIGHTS (unset)" in out and f"{no_lookup} (missing)" in out and perceptual.VGG16_URL in out
    # the I3D's lookup too, through the same resolver, with its pinned digest
    i3d_cache = no_lookup.parent / "i3d_torchscript.pt"
    assert "LARP_I3D_WEIGHTS (unset)" in out and f"{i3d_cache} (missing)" in out
    assert "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2" in out

    assert _cli(["weights", "lpips", "--vgg16", str(sources["vgg16"]), "--lpips", str(sources["lpips"])]) == 0
    assert str(no_lookup) in capsys.readouterr().out and no_lookup.is_file()
    assert _cli(["weights", "where"]) == 0
    assert f"{no_lookup} (present)" in capsys.readouterr().out

    other = no_lookup.parent / "elsewhere.safetensors"
    convert = ["weights", "lpips", "--vgg16", str(sources["vgg16"]), "--lpips", str(sources["lpips"])]
    assert _cli([*convert, "-o", str(other)]) == 0
    assert "LARP_LPIPS_WEIGHTS=" in capsys.readouterr().out and other.is_file()
    third = no_lookup.parent / "third.safetensors"
    assert _cli([*convert, "--output", str(third)]) == 0 and load_file(third).keys() == load_file(other).keys()
