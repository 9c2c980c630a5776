"""The one weight resolver of the library: where pretrained feature networks (LPIPS, I3D) come from.

A weight file is found in this order (:func:`resolve`):

1. the path given in code or on the command line (it must exist: a typo is an error, not a fall-back);
2. an environment variable naming the file (likewise must exist when set);
3. the cache file ``<cache>/<name>``, where ``<cache>`` is ``$LARP_CACHE``, else ``$XDG_CACHE_HOME/larp``,
   else ``~/.cache/larp`` (:func:`cache_dir`);
4. unless ``$LARP_OFFLINE`` is set, a download from a pinned URL, streamed to a temporary file beside the
   target while its sha256 is computed, checked against the pinned digest, and only then renamed into
   place (:func:`download`), so a cut, tampered or error-page download never lands in the cache.

Nothing here loads a file: the callers (:mod:`larp.losses.perceptual`, :mod:`larp.evaluation.detectors`)
decide what a found file may be trusted for.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from larp.files import atomic_path

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "NETWORK_ERRORS",
    "WeightFile",
    "DigestMismatchError",
    "cache_dir",
    "offline",
    "file_sha256",
    "download",
    "resolve",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "LARP_CACHE"
OFFLINE_ENV = "LARP_OFFLINE"
# What a failed download raises when there is no network; turned into a FileNotFoundError with instructions.
NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError)
_CHUNK = 1 << 20


class DigestMismatchError(RuntimeError):
    """A downloaded file is not the one whose sha256 is pinned."""


def cache_dir() -> Path:
    """The library's cache folder: ``$LARP_CACHE``, else ``$XDG_CACHE_HOME/larp``, else ``~/.cache/larp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "larp"
    return Path.home() / ".cache" / "larp"


def offline() -> bool:
    """Whether ``$LARP_OFFLINE`` forbids downloads (set to anything but empty or ``0``)."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, target: str | os.PathLike, *, sha256: str, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``target``, hashing while writing; keep it only if its sha256 is ``sha256``.

    The bytes go to a temporary file beside ``target`` (:func:`larp.files.atomic_path`), renamed into place
    only once complete and verified; on any error the temporary file is removed and ``target`` is untouched.

    Raises:
        urllib.error.URLError, TimeoutError, ConnectionError: no network.
        DigestMismatchError: the downloaded bytes have another sha256 (nothing is written).
    """
    target = Path(target)
    logger.info("downloading %s", url)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as handle:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != sha256:
            raise DigestMismatchError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}; not using it")
    logger.info("wrote %s (sha256 %s)", target, sha256)
    return target


@dataclass(frozen=True)
class WeightFile:
    """One pretrained weight file the library can look for.

    Attributes:
        what: what it is, for messages (e.g. ``"I3D weights (i3d_torchscript.pt)"``).
        env: the environment variable that may name the file.
        file_name: its name in the cache folder.
        how_to_get: a sentence or two saying how to get the file by hand (URLs, digests, commands).
    """

    what: str
    env: str
    file_name: str
    how_to_get: str

    def cache_path(self) -> Path:
        return cache_dir() / self.file_name

    def missing_message(self, tried: list[str], reason: str) -> str:
        return (f"{self.what} not found ({reason}); looked in: {'; '.join(tried)}. {self.how_to_get} "
                f"Put the file at {self.cache_path()} or point ${self.env} at it.")

    def locations(self) -> list[tuple[str, Path | None, bool]]:
        """The places :func:`resolve` looks without an explicit path, in order: (label, path, present)."""
        value = os.environ.get(self.env)
        from_env = Path(value).expanduser() if value else None
        cached = self.cache_path()
        return [
            (f"${self.env}" + ("" if from_env else " (unset)"), from_env, bool(from_env and from_env.is_file())),
            ("cache", cached, cached.is_file()),
        ]


def resolve(
    spec: WeightFile,
    path: str | os.PathLike | None = None,
    *,
    fetch: Callable[[Path], Path] | None = None,
    download: bool | None = None,
) -> Path:
    """Find ``spec``'s file: explicit ``path``, then ``$spec.env``, then the cache, then ``fetch(cache_path)``.

    Args:
        path: explicit file; when given it must exist.
        fetch: writes the file to the given cache path (a pinned, verified download) and returns the path
            written; None means the file cannot be downloaded.
        download: allow ``fetch``. ``None`` (default): yes unless ``$LARP_OFFLINE`` is set.

    Raises:
        FileNotFoundError: nothing found and nothing fetched; the message says where it looked and how to
            get the file.
        DigestMismatchError: a download did not match its pinned digest (from ``fetch``).
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise FileNotFoundError(spec.missing_message([str(explicit)], "the given path is not a file"))
        return explicit
    value = os.environ.get(spec.env)
    if value:
        from_env = Path(value).expanduser()
        if not from_env.is_file():
            raise FileNotFoundError(
                spec.missing_message([f"${spec.env}={from_env}"], f"${spec.env} is set but is not a file"))
        return from_env
    cached = spec.cache_path()
    if cached.is_file():
        return cached
    tried = [f"${spec.env} (unset)", str(cached)]
    if download is None:
        download = not offline()
    if fetch is None or not download:
        reason = "no download source" if fetch is None else f"downloading is off: download=False or ${OFFLINE_ENV} set"
        raise FileNotFoundError(spec.missing_message(tried, reason))
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        return fetch(cached)
    except NETWORK_ERRORS as error:
        raise FileNotFoundError(spec.missing_message(tried, f"download failed: {error}")) from error
