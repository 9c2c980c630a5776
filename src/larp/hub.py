"""Saving and loading models as folders: ``config.json`` + ``model.safetensors`` (never pickle).

A folder is either in the official LARP layout (the HuggingFace ``PyTorchModelHubMixin`` files of
``hywang66/LARP-L-long-*``: config.json holds the official constructor arguments) or in this library's
own (config.json holds ``_class_name`` and the typed config's fields). Both load *strictly*: every key
the model expects must be in the file with the right shape, and nothing else may be, except the
prefixes a model declares as ignorable (the tokenizer's training-time ``prior_model.*``) and the fixed
sin-cos buffers, which are recomputed when absent. The official code loads with ``strict=False`` and
silently leaves misnamed weights random (LARP.md A.8); this does not.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from larp.config import config_from_dict, config_to_dict
from larp.files import write_atomic, write_text_atomic
from larp.version import __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_pretrained(
    path_or_repo_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Find the folder holding ``config.json`` and ``model.safetensors``.

    A local folder is used as it is. Anything else that looks like a hub id (``owner/name``) goes through
    ``huggingface_hub.snapshot_download``, which serves files from its cache when offline (set
    ``HF_HUB_OFFLINE=1`` to skip the network attempt).

    Raises:
        FileNotFoundError: the folder or a file in it is missing, or the hub and its cache cannot provide
            the repository; the message says what was tried.
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"'{path}' is not a model folder: it has no {' or '.join(missing)}")
        return path
    if path.exists():
        raise FileNotFoundError(f"'{path}' is a file; expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    repo_id = str(path_or_repo_id)
    if not _REPO_ID.match(repo_id):
        raise FileNotFoundError(f"no model folder at '{repo_id}' (and it is not a hub id of the form owner/name)")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only) or _env_offline(),
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
        )
    except Exception as error:  # huggingface_hub raises many types; all mean "not available"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"no local folder '{repo_id}', and the Hugging Face hub could not provide it ({reason}). "
            f"Offline, download it once elsewhere (`huggingface-cli download {repo_id}`) and copy the "
            f"folder here, or copy the hub cache (HF_HOME) and set HF_HUB_OFFLINE=1"
        ) from None
    return resolve_pretrained(folder)


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def read_config_json(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {folder / CONFIG_NAME}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{folder / CONFIG_NAME}: expected a JSON object")
    return data


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(folder / WEIGHTS_NAME)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"cannot read {folder / WEIGHTS_NAME}: {error}") from None


def write_folder(folder: str | os.PathLike, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``folder``.

    The weights go first, so a folder whose config.json is new always has the matching weights.
    Prefer a model's ``save_pretrained``, which writes the config that ``from_pretrained`` reads back.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    write_atomic(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


class PretrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` / ``from_preset`` for a model built from one typed config.

    A model class sets ``config_class``, ``presets``, optionally ``ignored_checkpoint_prefixes``, and may
    implement ``recomputable_buffers(config)`` and the official-format conversions (``config_from_official``
    / ``config_to_official``, built on :mod:`larp.compat.official`); without them only this library's own
    layout loads.
    """

    config_class: ClassVar[type]
    presets: ClassVar[dict[str, Any]] = {}
    ignored_checkpoint_prefixes: ClassVar[tuple[str, ...]] = ()

    # ---- hooks for the model class
    @classmethod
    def recomputable_buffers(cls, config) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def config_from_official(cls, data: dict[str, Any]):
        raise ValueError(f"config.json is not a {cls.__name__} config (no '_class_name' = '{cls.__name__}')")

    @classmethod
    def config_to_official(cls, config) -> dict[str, Any]:
        raise NotImplementedError(f"{cls.__name__} has no official export format")

    # ---- construction
    @classmethod
    def from_preset(cls, name: str, **kwargs):
        """A randomly initialised model of a named architecture (see ``presets``)."""
        if name not in cls.presets:
            raise ValueError(f"unknown {cls.__name__} preset '{name}'; choose one of {sorted(cls.presets)}")
        return cls(cls.presets[name], **kwargs)

    @classmethod
    def parse_config(cls, data: dict[str, Any]):
        """A typed config from a config.json dict in either layout."""
        if "_class_name" in data:
            if data["_class_name"] != cls.__name__:
                raise ValueError(f"config.json describes a {data['_class_name']}, not a {cls.__name__}")
            fields = {k: v for k, v in data.items() if not k.startswith("_")}
            return config_from_dict(cls.config_class, fields)
        return cls.config_from_official(data)

    def config_json(self, *, official_format: bool = False) -> dict[str, Any]:
        if official_format:
            return self.config_to_official(self.config)
        return {"_class_name": type(self).__name__, "_larp_version": __version__, **config_to_dict(self.config)}

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        """Load a model from a folder or a HuggingFace repo id, strictly, in eval mode.

        Args:
            path_or_repo_id: a folder with config.json + model.safetensors (official or own layout) or a
                hub id such as ``hywang66/LARP-L-long-tokenizer`` (served from the HF cache when offline).
            device, dtype: where and in what precision to put the model (default: CPU, float32).

        Raises:
            FileNotFoundError: nothing found at that path or id.
            ValueError: the config is invalid, or the weights do not match it; the message names the
                missing, unexpected or mis-shaped keys.
        """
        folder = resolve_pretrained(
            path_or_repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        config = cls.parse_config(read_config_json(folder))
        state = read_weights(folder)
        with torch.device("meta"):
            model = cls(config)
        state = cls._match_state_dict(model, state, source=str(folder / WEIGHTS_NAME))
        model.load_state_dict(state, strict=True, assign=True)
        model.to(device=device or "cpu", dtype=dtype or torch.float32)
        model.source = str(path_or_repo_id)
        return model.eval()

    @classmethod
    def _match_state_dict(cls, model, state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
        """Check ``state`` against the model's keys and shapes; fill recomputable buffers; drop ignorables."""
        state = {k: v for k, v in state.items() if not k.startswith(cls.ignored_checkpoint_prefixes)}
        for name, value in cls.recomputable_buffers(model.config).items():
            state.setdefault(name, value)
        problems = state_dict_problems(state, model.state_dict())
        if problems:
            raise ValueError(f"{source} does not match the {cls.__name__} config: " + "; ".join(problems))
        return state

    def save_pretrained(self, folder: str | os.PathLike, *, official_format: bool = False) -> Path:
        """Write config.json + model.safetensors. ``official_format`` writes the official config keys,
        so the official code's ``from_pretrained`` can read the folder too."""
        return write_folder(folder, self.config_json(official_format=official_format), self.state_dict())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def state_dict_problems(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, ignore_prefixes: tuple[str, ...] = ()
) -> list[str]:
    """What keeps ``state`` from loading strictly into ``expected``: missing, unexpected and mis-shaped keys,
    one message each (empty when it fits)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith(ignore_prefixes))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_abbreviate(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_abbreviate(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches {_abbreviate(wrong_shape)}")
    return problems


def _abbreviate(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"
