"""FVD detectors: the I3D wrapper (on a scripted stand-in, never the real file), weight resolution, and the
video-classifier detector."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from larp.evaluation import detectors
from larp.evaluation.detectors import (
    I3D_SHA256,
    I3D_URL,
    I3D_WEIGHTS_ENV,
    ClassifierDetector,
    I3DDetector,
    UntrustedDetectorError,
    detector_features,
    load_detector,
    load_i3d,
    resolve_i3d_weights,
)
from larp.weights import DigestMismatchError
from larp.evaluation.video_classifier import VideoClassifier, VideoClassifierConfig

# The stand-in is built with torch.jit because the real I3D is a TorchScript file; torch's deprecation
# notice about TorchScript is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


class StandInI3D(nn.Module):
    """Same call signature as the StyleGAN-V I3D; its 400 "features" report what it was given.

    Columns: 0 min, 1 max, 2 mean of the input; 3 rescale, 4 resize, 5 return_features flags;
    6 channels (dim 1), 7 frames (dim 2); the rest zero.
    """

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = True, return_features: bool = True
    ) -> torch.Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        out = torch.zeros(b, 400, dtype=x.dtype)
        out[:, 0] = flat.min(dim=1).values
        out[:, 1] = flat.max(dim=1).values
        out[:, 2] = flat.mean(dim=1)
        out[:, 3] = float(rescale)
        out[:, 4] = float(resize)
        out[:, 5] = float(return_features)
        out[:, 6] = float(x.shape[1])
        out[:, 7] = float(x.shape[2])
        return out


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No I3D anywhere, nothing downloads: empty cache in tmp_path, LARP_OFFLINE=1."""
    monkeypatch.delenv(I3D_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("LARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LARP_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def standin_file(tmp_path):
    path = tmp_path / "standin_i3d.pt"
    torch.jit.save(torch.jit.script(StandInI3D()), str(path))
    return path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_jit_load(monkeypatch):
    """torch.jit.load fails the test if called: an untrusted file must be refused before it is loaded."""

    def forbidden(*args, **kwargs):
        pytest.fail("torch.jit.load ran on a file that should have been refused")

    monkeypatch.setattr(torch.jit, "load", forbidden)


def test_unknown_torchscript_is_refused_before_loading(clean_env, standin_file, no_jit_load, monkeypatch):
    digest = _sha256(standin_file)
    # given as a path, through $LARP_I3D_WEIGHTS, and as the cache file: the same refusal, nothing loaded
    with pytest.raises(UntrustedDetectorError) as raised:
        load_i3d(standin_file)
    message = str(raised.value)
    assert str(standin_file) in message and digest in message and I3D_SHA256 in message
    assert "--trust-detector" in message
    with pytest.raises(UntrustedDetectorError, match=digest):
        load_detector(str(standin_file))
    monkeypatch.setenv(I3D_WEIGHTS_ENV, str(standin_file))
    with pytest.raises(UntrustedDetectorError, match=digest):
        load_detector("i3d")
    monkeypatch.delenv(I3D_WEIGHTS_ENV)
    cached = clean_env / "cache" / "i3d_torchscript.pt"
    cached.parent.mkdir()
    cached.write_bytes(standin_file.read_bytes())
    with pytest.raises(UntrustedDetectorError, match=digest):
        load_i3d()


def test_trusted_or_pinned_files_load_and_say_which(clean_env, standin_file, monkeypatch):
    trusted = load_i3d(standin_file, trust=True)
    assert trusted.trusted_by_user
    assert trusted.describe() == {"kind": "i3d", "name": f"i3d:{standin_file}", "sha256": _sha256(standin_file),
                                  "pinned": False, "detector_trusted_by_user": True}
    # a file with the pinned digest loads without the opt-in (the stand-in plays the pinned I3D here)
    monkeypatch.setattr(detectors, "I3D_SHA256", _sha256(standin_file))
    pinned = load_i3d(standin_file)
    assert not pinned.trusted_by_user and pinned.describe()["pinned"] is True


def test_i3d_from_path_converts_range_and_calls_with_official_kwargs(clean_env, standin_file):
    detector = load_i3d(standin_file, trust=True)
    assert isinstance(detector, I3DDetector)
    assert detector.sha256 == _sha256(standin_file)
    assert detector.feature_dim == 400 and detector.min_frames == 10
    assert str(standin_file) in detector.name
    video = torch.rand(2, 3, 12, 8, 8)
    video[0].fill_(0.0)
    video[0, :, 0, 0, 0] = 1.0  # one white pixel: max must come out as +1
    features = detector.features(video)
    assert features.shape == (2, 400) and features.dtype == torch.float64
    assert features[0, 0].item() == -1.0 and features[0, 1].item() == 1.0
    expected_mean = ((video - 0.5) * 2).reshape(2, -1).mean(dim=1).double()
    torch.testing.assert_close(features[:, 2], expected_mean, rtol=1e-5, atol=1e-6)
    assert features[:, 3:8].tolist() == [[0.0, 1.0, 1.0, 3.0, 12.0]] * 2  # rescale=False, BCTHW kept
    meta = detector.metadata()
    assert meta["detector_sha256"] == detector.sha256 and meta["detector"] == detector.name


def test_i3d_from_env_var_and_cache(clean_env, standin_file, monkeypatch):
    monkeypatch.setenv(I3D_WEIGHTS_ENV, str(standin_file))
    assert resolve_i3d_weights() == standin_file
    assert load_detector("i3d", trust=True).sha256 == _sha256(standin_file)
    monkeypatch.delenv(I3D_WEIGHTS_ENV)
    cached = clean_env / "cache" / "i3d_torchscript.pt"
    cached.parent.mkdir()
    cached.write_bytes(standin_file.read_bytes())
    assert resolve_i3d_weights() == cached
    # A .pt path as a detector spec is an I3D-like TorchScript file.
    assert isinstance(load_detector(str(standin_file), trust=True), I3DDetector)


def test_missing_i3d_says_where_to_get_it(clean_env, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        load_i3d()
    message = str(info.value)
    assert I3D_URL in message and I3D_WEIGHTS_ENV in message and "i3d_torchscript.pt" in message
    with pytest.raises(FileNotFoundError, match="LARP_I3D_WEIGHTS"):
        load_i3d(clean_env / "nope.pt")
    monkeypatch.setenv(I3D_WEIGHTS_ENV, str(clean_env / "also-missing.pt"))
    with pytest.raises(FileNotFoundError, match="is set but is not a file"):
        resolve_i3d_weights()


def test_download_is_verified_against_the_pinned_digest(clean_env, standin_file, monkeypatch):
    # A file:// URL stands in for the network: the download path runs, nothing leaves the machine.
    monkeypatch.setattr(detectors, "I3D_URL", standin_file.as_uri())
    # the stand-in is not the pinned I3D: a substituted download is refused and leaves nothing in the cache
    with pytest.raises(DigestMismatchError, match=f"expected {I3D_SHA256}"):
        resolve_i3d_weights(download=True)
    assert list((clean_env / "cache").iterdir()) == []
    # with the stand-in's digest pinned, the same download is kept
    monkeypatch.setattr(detectors, "I3D_SHA256", _sha256(standin_file))
    path = resolve_i3d_weights(download=True)
    assert path == clean_env / "cache" / "i3d_torchscript.pt"
    assert _sha256(path) == _sha256(standin_file)
    # an error page instead of the archive is refused the same way, and the good file stays
    page = clean_env / "page.html"
    page.write_text("<html>rate limited</html>")
    monkeypatch.setattr(detectors, "I3D_URL", page.as_uri())
    with pytest.raises(DigestMismatchError):
        detectors.download_i3d_weights()
    assert [p.name for p in (clean_env / "cache").iterdir()] == ["i3d_torchscript.pt"]
    assert _sha256(path) == _sha256(standin_file)


def test_i3d_rejects_bad_input(clean_env, standin_file, tmp_path):
    detector = load_i3d(standin_file, trust=True)
    with pytest.raises(ValueError, match="at least 10 frames"):
        detector.features(torch.rand(1, 3, 9, 8, 8))
    with pytest.raises(ValueError, match=r"\(batch, 3, frames, height, width\)"):
        detector.features(torch.rand(1, 12, 8, 8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        detector.features(torch.rand(1, 3, 12, 8, 8) * 255)
    with pytest.raises(ValueError, match="float video"):
        detector.features(torch.zeros(1, 3, 12, 8, 8, dtype=torch.uint8))
    not_script = tmp_path / "junk.pt"
    not_script.write_bytes(b"not a torchscript file")
    with pytest.raises(UntrustedDetectorError):
        load_i3d(not_script)
    with pytest.raises(ValueError, match="not a loadable TorchScript"):
        load_i3d(not_script, trust=True)


def _tiny_classifier(seed: int = 0) -> VideoClassifier:
    torch.manual_seed(seed)
    config = VideoClassifierConfig(num_classes=3, width=4, num_stages=2, feature_dim=8, norm_groups=2)
    return VideoClassifier(config).eval()


def test_classifier_detector_roundtrip(tmp_path):
    model = _tiny_classifier()
    in_memory = ClassifierDetector(model)
    assert in_memory.name == "video-classifier:in-memory"
    folder = tmp_path / "clf"
    model.save_pretrained(folder)
    loaded = load_detector(str(folder))
    assert isinstance(loaded, ClassifierDetector)
    assert loaded.name == f"video-classifier:{folder}"
    assert loaded.sha256 == in_memory.sha256
    assert loaded.sha256 != ClassifierDetector(_tiny_classifier(seed=1)).sha256
    assert loaded.feature_dim == 8
    video = torch.rand(3, 3, 4, 16, 16)
    features = loaded.features(video)
    assert features.shape == (3, 8) and features.dtype == torch.float64
    torch.testing.assert_close(features, model.features(video).double().detach())
    predictions = loaded.predict(video)
    assert predictions.dtype == torch.int64 and predictions.shape == (3,)
    assert predictions.tolist() == model(video).argmax(dim=1).tolist()
    batched = detector_features(loaded, video, batch_size=2)
    torch.testing.assert_close(batched, features, rtol=1e-5, atol=1e-6)  # batch size changes float32 sums
    assert detector_features(loaded, [video[:1], video[1:]]).shape == (3, 8)
    loaded.train()
    assert not loaded.training and not loaded.classifier.training


def test_load_detector_rejects_unknown_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="'i3d', a TorchScript .pt file"):
        load_detector(str(tmp_path / "no-such-folder"))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="without the .pt suffix"):
        load_detector(str(other))
