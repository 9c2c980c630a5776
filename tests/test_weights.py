"""The one weight resolver (larp.weights): lookup order, verified streaming download, nothing torn left behind."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import pytest

from larp import weights
from larp.weights import DigestMismatchError, WeightFile, download, resolve

SPEC = WeightFile(what="test weights (w.bin)", env="LARP_TEST_WEIGHTS", file_name="w.bin",
                  how_to_get="Get them from the test.")
PAYLOAD = b"weights" * 1000
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LARP_OFFLINE", raising=False)
    monkeypatch.delenv(SPEC.env, raising=False)
    return tmp_path / "cache"


class CutResponse(io.BytesIO):
    """A response whose connection drops after the first chunk."""

    def read(self, size=-1):
        if self.tell() > 0:
            raise ConnectionError("connection reset by peer")
        return super().read(size)


def test_lookup_order_and_explicit_errors(cache, tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit.bin", tmp_path / "env.bin"
    for path in (explicit, from_env, cache / "w.bin"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    monkeypatch.setenv(SPEC.env, str(from_env))
    assert resolve(SPEC, explicit) == explicit
    assert resolve(SPEC) == from_env
    monkeypatch.delenv(SPEC.env)
    assert resolve(SPEC) == cache / "w.bin"
    with pytest.raises(FileNotFoundError, match="the given path is not a file.*Get them from the test"):
        resolve(SPEC, tmp_path / "typo.bin")
    monkeypatch.setenv(SPEC.env, str(tmp_path / "typo.bin"))
    with pytest.raises(FileNotFoundError, match="LARP_TEST_WEIGHTS is set but is not a file"):
        resolve(SPEC)


def test_fetch_only_when_allowed(cache, monkeypatch):
    fetched = []

    def fetch(target):
        fetched.append(target)
        target.write_bytes(PAYLOAD)
        return target

    monkeypatch.setenv("LARP_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloading is off"):
        resolve(SPEC, fetch=fetch)
    assert resolve(SPEC, fetch=fetch, download=True) == cache / "w.bin" and fetched == [cache / "w.bin"]
    assert resolve(SPEC, fetch=fetch) == cache / "w.bin" and len(fetched) == 1  # now from the cache

    def no_network(target):
        raise urllib.error.URLError("no route to host")

    (cache / "w.bin").unlink()
    with pytest.raises(FileNotFoundError, match=f"download failed.*no route to host.*{cache / 'w.bin'}"):
        resolve(SPEC, fetch=no_network, download=True)


def test_download_hashes_while_streaming_and_keeps_only_verified_files(cache, monkeypatch):
    target = cache / "w.bin"
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(PAYLOAD))
    with pytest.raises(DigestMismatchError, match=f"has sha256 {PAYLOAD_SHA256}, expected 00"):
        download("https://example.invalid/w.bin", target, sha256="00" * 32)
    assert not target.exists() and list(cache.iterdir()) == []  # no temporary file left either
    assert download("https://example.invalid/w.bin", target, sha256=PAYLOAD_SHA256) == target
    assert target.read_bytes() == PAYLOAD
    # a cut connection leaves the verified file as it was and no temporary file
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout=None: CutResponse(b"y" * (3 << 20)))
    with pytest.raises(ConnectionError):
        download("https://example.invalid/w.bin", target, sha256=PAYLOAD_SHA256)
    assert target.read_bytes() == PAYLOAD and [p.name for p in cache.iterdir()] == ["w.bin"]
