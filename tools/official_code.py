"""Running the OFFICIAL LARP code (github.com/hywang66/LARP) from a local checkout, beside larp.

Shared by tools/official_parity.py (fixtures) and the benchmarks' ``--official-src`` option. It contains
none of the official code: it imports the official modules from a checkout given by the caller (usually
the ``LARP_OFFICIAL_SRC`` environment variable), which must never be copied into this repo.

The official modules need ``timm==1.0.15`` (LayerNorm eps 1e-5 in the ViT blocks, LARP.md A.4) and
``easydict`` importable (e.g. ``pip install --no-deps --target DIR timm==1.0.15 easydict`` and DIR on
``PYTHONPATH``). They also import ``torchvision``, ``lpips``, ``scipy``, ``requests`` and ``imageio`` at
module level without calling them on the paths used here (tokenizer encode/decode, AR forward and
sampling); those that are not installed are replaced by import-only stand-ins (:func:`install_import_stubs`),
and :func:`stubbed_modules` says which were.

    import official_code                      # with tools/ on sys.path
    LARPTokenizer, LARP_AR, ModelArgs = official_code.import_official(os.environ["LARP_OFFICIAL_SRC"])
    theirs = official_code.official_copy(our_tokenizer, LARPTokenizer, folder)   # the same weights
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import io as _io
import os
import sys
import types
from pathlib import Path

import torch

#: Packages the official modules import at module level but never call on the paths used here.
STUB_CANDIDATES = ("torchvision", "lpips", "scipy", "requests", "imageio")
TIMM_VERSION = "1.0.15"

_stubbed: list[str] = []


# ------------------------------------------------------------------------------------------ import stand-ins
class _Absorbing(type):
    """A class whose attributes are distinct absorbing classes and whose calls return itself.

    Enough for module-level code such as ``{InterpolationMode.BILINEAR: 'bilinear', ...}`` or
    ``from torchvision.ops.misc import FrozenBatchNorm2d``; any real use yields nonsense, not a result.
    """

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        child = _Absorbing(name, (), {})
        setattr(cls, name, child)
        return child

    def __call__(cls, *args, **kwargs):
        return cls

    def __iter__(cls):
        return iter(())


class _StandIn(metaclass=_Absorbing):
    pass


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: tuple[str, ...]):
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__version__ = "0+import-stub"

        def __getattr__(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(_StandIn, name)

        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module):
        pass


def install_import_stubs(candidates: tuple[str, ...] = STUB_CANDIDATES) -> list[str]:
    """Make each of ``candidates`` that cannot be found importable as an empty stand-in; returns those."""
    missing = tuple(name for name in candidates if name not in _stubbed and importlib.util.find_spec(name) is None)
    if missing:
        sys.meta_path.append(_StubFinder(missing))  # last: a real package, if any, always wins
        _stubbed.extend(missing)
    return list(missing)


def stubbed_modules() -> list[str]:
    """The packages replaced by stand-ins in this process."""
    return list(_stubbed)


# ------------------------------------------------------------------------------------------ official modules
def import_official(src: str | os.PathLike, *, stub_missing: bool = True):
    """Import the official modules from ``src`` (a checkout of hywang66/LARP).

    Returns:
        (LARPTokenizer, LARP_AR, ModelArgs), the official classes.
    """
    src = os.path.abspath(src)
    if not os.path.isfile(os.path.join(src, "models", "larp_tokenizer.py")):
        raise SystemExit(f"official source {src!r} does not contain models/larp_tokenizer.py")
    if stub_missing:
        install_import_stubs()
    # On sys.path only while importing: the checkout's top-level `datasets/` would shadow Hugging Face's.
    added = src not in sys.path
    if added:
        sys.path.insert(0, src)
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            from models.larp_ar import LARP_AR, ModelArgs  # noqa: E402
            from models.larp_tokenizer import LARPTokenizer  # noqa: E402
    finally:
        if added:
            sys.path.remove(src)
    import timm

    if timm.__version__ != TIMM_VERSION:
        print(f"WARNING: timm {timm.__version__} (expected {TIMM_VERSION}; later versions change the ViT "
              f"LayerNorm eps to 1e-6, LARP.md A.4)")
    return LARPTokenizer, LARP_AR, ModelArgs


def versions() -> dict:
    """Versions of what the official code ran with (for a result's JSON)."""
    import huggingface_hub
    import timm

    return {"timm": timm.__version__, "huggingface_hub": huggingface_hub.__version__,
            "import_stubs": stubbed_modules()}


def exact_load_problems(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """Differences between ``model.state_dict()`` and the tensors of a saved file (keys and values)."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in sorted(set(own) - set(saved))]
    problems += [f"unexpected {k}" for k in sorted(set(saved) - set(own))]
    problems += [f"{k} differs" for k in sorted(set(own) & set(saved))
                 if own[k].shape != saved[k].shape or not torch.equal(own[k].to(saved[k].dtype), saved[k])]
    return problems


def official_from_pretrained(cls, folder: str | os.PathLike):
    """The official ``cls.from_pretrained(folder)`` with its prints swallowed, and an exact-load check.

    Returns:
        (model, saved): the official model and the tensors of the folder's model.safetensors.

    Raises:
        RuntimeError: a key is missing or unexpected, or a tensor did not load exactly (the official hub
            mixin loads ``strict=False`` and would not say).
    """
    from safetensors.torch import load_file

    with contextlib.redirect_stdout(_io.StringIO()):
        model = cls.from_pretrained(str(folder))
    saved = load_file(str(Path(folder) / "model.safetensors"))
    problems = exact_load_problems(model, saved)
    if problems:
        raise RuntimeError(f"{Path(folder).name}: the official model did not load exactly: {problems[:8]}")
    return model, saved


def save_and_reload(model, cls, folder: Path):
    """Official save_pretrained, then official from_pretrained with an exact-load check."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    readme = folder / "README.md"  # model card written by the hub mixin; not part of the layout
    if readme.exists():
        readme.unlink()
    reloaded, saved = official_from_pretrained(cls, folder)
    if set(saved) != set(model.state_dict()):
        raise RuntimeError(f"{folder.name}: saved keys differ from the model's state_dict")
    return reloaded, saved


def official_copy(ours: torch.nn.Module, cls, folder: str | os.PathLike) -> torch.nn.Module:
    """The official model with the same weights as a larp model: ``ours.save_pretrained(folder,
    official_format=True)``, then the official ``cls.from_pretrained`` with an exact-load check.

    Every key of the official model must be in the file with the same value, and the other way round
    (so nothing of ours is left out and nothing of theirs keeps its initial value). Eval mode, float32.
    """
    folder = Path(folder)
    ours.save_pretrained(folder, official_format=True)
    model, _ = official_from_pretrained(cls, folder)
    return model.eval()
