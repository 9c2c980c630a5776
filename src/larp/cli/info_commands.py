"""``larp info``: what a model folder, hub id, preset, token dataset, token cache or folder of token files holds.

Model folders are described from their config.json and the safetensors header (shapes only), so a
632M-parameter generator is described in a moment; the weights are still checked against the config
(missing, unexpected or mis-shaped keys are an error, as when loading).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from larp.config import config_to_dict
from larp.hub import CONFIG_NAME, WEIGHTS_NAME, read_config_json, resolve_pretrained

EXPECTED = (
    "expected a tokenizer or generator folder (config.json + model.safetensors, larp or official format), "
    "a HuggingFace repo id (owner/name), a preset name, a token dataset (_dataset.json + shard-*.parquet), a token "
    "cache folder (train/_dataset.json) or a folder of `larp tokenize` outputs (.npy + .json)"
)


def register(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser(
        "info",
        help="describe a model (folder, hub id or preset), a token dataset, a token cache or a folder of token files",
        description="Describe a LARP tokenizer or generator (a folder in the larp or the official format, a "
        "HuggingFace repo id, or a preset: larp info larp-l), a token dataset (larp tokenize --manifest), a "
        "generator's token cache or a folder of token files (larp tokenize VIDEO ...).",
    )
    info.add_argument("model", metavar="WHAT",
                      help="model folder, repo id, preset name, token dataset, token cache or token folder")
    info.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> int:
    from larp.models.generator import GENERATOR_PRESETS
    from larp.models.tokenizer import TOKENIZER_PRESETS

    from larp.data.token_dataset import is_token_dataset
    from larp.training.token_sources import is_token_cache

    spec = args.model
    path = Path(spec).expanduser()
    if path.is_dir():
        if is_token_cache(path):
            print(describe_token_cache(path))
        elif is_token_dataset(path):
            print(describe_token_dataset(path))
        elif (path / CONFIG_NAME).is_file() or (path / WEIGHTS_NAME).is_file():
            print(describe_model_folder(resolve_pretrained(path), spec))
        elif any(path.glob("*.npy")):
            print(describe_token_files(path))
        else:
            inside = sorted(p.name for p in path.iterdir()
                            if (p / CONFIG_NAME).is_file() or is_token_cache(p) or is_token_dataset(p))
            hint = ""
            if inside:  # a training run or the demo's folder: name the models in it
                hint = f" (it holds {', '.join(f'{name}/' for name in inside)}: larp info {path / inside[0]})"
            raise ValueError(f"{spec} is a folder with none of the files larp info knows{hint}: {EXPECTED}")
    elif path.exists():
        raise ValueError(f"{spec} is a file: {EXPECTED}")
    elif spec in TOKENIZER_PRESETS or spec in GENERATOR_PRESETS:
        print(describe_preset(spec))
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):  # owner/name: a hub repository
        print(describe_model_folder(resolve_pretrained(spec), spec))
    else:
        names = ", ".join(sorted(TOKENIZER_PRESETS) + sorted(GENERATOR_PRESETS))
        raise ValueError(f"no folder, preset or repo id '{spec}': {EXPECTED}; presets: {names}")
    return 0


# ------------------------------------------------------------------------------------------ models
def describe_preset(name: str) -> str:
    from larp.models.generator import GENERATOR_PRESETS, LARPGenerator
    from larp.models.tokenizer import TOKENIZER_PRESETS, LARPTokenizer

    cls, config = (LARPTokenizer, TOKENIZER_PRESETS[name]) if name in TOKENIZER_PRESETS else (
        LARPGenerator, GENERATOR_PRESETS[name])
    with torch.device("meta"):  # shapes only: no memory for the weights
        parameters = cls(config).num_parameters()
    return _describe(cls.__name__, config, parameters, f"preset {name} (random weights)")


def describe_model_folder(folder: Path, source: str) -> str:
    """A model folder of either layout; the class is told by ``_class_name`` or, in the official layout,
    by which official config the keys form."""
    from larp.models.generator import LARPGenerator
    from larp.models.tokenizer import LARPTokenizer

    data = read_config_json(folder)
    name = data.get("_class_name")
    if name is None:
        cls, config = _official_config(folder, data)
        layout = "official LARP format"
    else:
        classes = {c.__name__: c for c in (LARPTokenizer, LARPGenerator, _video_classifier())}
        if name not in classes:
            raise ValueError(f"{folder / CONFIG_NAME} describes a {name}, which larp info does not describe: "
                             f"{EXPECTED}")
        cls = classes[name]
        config = cls.parse_config(data)
        layout = f"larp format, saved by larp {data.get('_larp_version', '?')}"
    parameters = _checked_parameter_count(cls, config, folder)
    return _describe(cls.__name__, config, parameters, f"{source} ({layout})")


def _official_config(folder: Path, data: dict[str, Any]):
    from larp.models.generator import LARPGenerator
    from larp.models.tokenizer import LARPTokenizer

    errors = []
    for cls in (LARPTokenizer, LARPGenerator):
        try:
            return cls, cls.config_from_official(data)
        except ValueError as error:
            errors.append(f"as a {cls.__name__}: {error}")
    raise ValueError(f"{folder / CONFIG_NAME} has no '_class_name' and is not an official LARP tokenizer or "
                     f"generator config ({'; '.join(errors)})")


def _video_classifier() -> type:
    from larp.evaluation.video_classifier import VideoClassifier

    return VideoClassifier


def _checked_parameter_count(cls: type, config: Any, folder: Path) -> int:
    """Parameters of ``cls(config)``, after checking the weight file's names and shapes against it."""
    from safetensors import SafetensorError, safe_open

    with torch.device("meta"):
        model = cls(config)
    path = folder / WEIGHTS_NAME
    try:
        with safe_open(path, framework="pt") as weights:
            state = {key: torch.empty(weights.get_slice(key).get_shape(), device="meta") for key in weights.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    cls._match_state_dict(model, state, source=str(path))  # raises ValueError naming the keys
    return model.num_parameters()


def _describe(class_name: str, config: Any, parameters: int, source: str) -> str:
    lines = [f"{class_name} from {source}", f"parameters: {parameters:,}"]
    if class_name == "LARPTokenizer":
        lines += [
            f"clip: {config.frame_num} frames of {config.input_size}x{config.input_size}, patches "
            f"{config.temporal_patch_size}x{config.patch_size}x{config.patch_size} -> "
            f"{config.num_patches} patch tokens",
            f"tokens: {config.num_tokens} per clip, codebook {config.quantizer.codebook_size} x "
            f"{config.quantizer.code_dim}" + (", nested (decodes any prefix)" if config.nested_dropout else ""),
        ]
    elif class_name == "LARPGenerator":
        if config.frame_prediction:
            kind = "frame prediction: continues a clip from the tokens of its condition (sample --condition)"
        else:
            null = " + the null class of classifier-free guidance" if config.has_null_class else ", no CFG"
            kind = f"class-conditional: {config.num_classes} classes{null} (sample --class)"
        lines += [
            f"kind: {kind}",
            f"architecture: {config.n_layer} layers, dim {config.dim}, {config.n_head} heads, "
            f"FFN {config.ffn_hidden}",
            f"tokens: {config.max_seq_len} per clip from a vocabulary of {config.vocab_size}",
            f"tokenizer: one with num_tokens={config.max_seq_len} and quantizer.codebook_size={config.vocab_size}",
        ]
    lines += ["config:", json.dumps(config_to_dict(config), indent=2)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ tokens
def describe_token_dataset(folder: Path) -> str:
    """A token dataset: the tokenizer that made it, its windows, the counts, and how to read it."""
    from larp.data.token_dataset import read_dataset_info, read_rows, shard_paths

    info = read_dataset_info(folder)
    timing = f"{info['fps']:g} fps" if info.get("fps") else (
        f"every {info['stride']} frame(s)" if info.get("stride") else "each video's own frame rate")
    lines = [
        f"token dataset {folder}" + ("" if info.get("complete") else
                                     f" (incomplete: {len(shard_paths(folder))} shard(s) finished; "
                                     "rerunning the same command resumes it)"),
        f"tokenizer: {info.get('tokenizer')} (weights fingerprint {str(info.get('tokenizer_fingerprint'))[:16]})",
        f"tokens: {info.get('tokens_per_window')} per window, codebook {info.get('codebook_size')}; windows of "
        f"{info.get('frames_per_window')} frames of {info.get('size')}x{info.get('size')} at {timing}, "
        f"resize {info.get('resize')}",
    ]
    if info.get("complete"):
        labels = read_rows(folder, ["label"]).column("label")
        known = len({label for label in labels.to_pylist() if label is not None})
        lines.append(f"rows: {info['num_videos']:,} videos, {info['num_windows']:,} windows, "
                     f"{info['num_failed']:,} failed (listed in _failed.jsonl); {known} class label(s)"
                     + (f", {labels.null_count:,} unlabelled" if labels.null_count else ""))
        lines.append(f"shards: {len(info.get('shards') or [])} Parquet file(s); read with "
                     f"pyarrow.parquet.read_table({str(folder)!r}) or datasets.load_dataset({str(folder)!r})")
    if info.get("special_tokens"):
        lines.append(f"suggested LLM special tokens: {json.dumps(info['special_tokens'])}")
    return "\n".join(lines)


def describe_token_cache(folder: Path) -> str:
    """A token cache: rows per split, tokens per row, codebook, fingerprint and the settings that made it."""
    from larp.data.token_dataset import read_rows
    from larp.training.token_sources import read_cache_settings, split_info

    settings = read_cache_settings(folder)
    lines = [
        f"token cache {folder} (token dataset per split, cache version {settings.get('cache_version')})",
        f"tokenizer: {settings.get('tokenizer')} "
        f"(weights fingerprint {str(settings.get('tokenizer_fingerprint'))[:16]})",
        f"tokens: {settings.get('num_tokens')} per row, codebook {settings.get('codebook_size')}, from clips of "
        f"{settings.get('frames')} frames of {settings.get('size')}x{settings.get('size')}",
    ]
    for split in ("train", "val"):
        info = split_info(folder / split)
        if info is None:
            shards = len(list((folder / split).glob("shard-*.parquet")))
            lines.append(f"{split}: incomplete ({shards} shard(s) finished; the next build resumes it)")
            continue
        labels = read_rows(folder / split, ["label"]).column("label")
        known = len({label for label in labels.to_pylist() if label is not None})
        lines.append(f"{split}: {info['num_windows']:,} rows, {known} class label(s)"
                     + (f", {labels.null_count:,} unlabelled" if labels.null_count else ""))
    condition = settings.get("condition_frames")
    if condition:
        lines.append(f"kind: frame prediction (each row also holds the tokens of its first {condition} frames)")
    else:
        lines.append("kind: class-conditional (class labels)")
    lines.append(f"clips: {settings.get('clips_per_video')} per video (clip_seed {settings.get('clip_seed')})"
                 + (", each also mirrored" if settings.get("flip") else ""))
    lines += ["data:", json.dumps(settings.get("data"), indent=2),
              f"use: tokens.cache={folder} in a generator recipe with these data and token settings"]
    return "\n".join(lines)


def describe_token_files(folder: Path) -> str:
    """A folder written by ``larp tokenize VIDEO ...``: one .npy of ids and a .json sidecar per video."""
    sidecars = []
    for path in sorted(folder.glob("*.json")):
        try:
            sidecar = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(sidecar, dict) and "tokens_per_window" in sidecar and path.with_suffix(".npy").is_file():
            sidecars.append(sidecar)
    if not sidecars:
        raise ValueError(f"{folder} has .npy files but no `larp tokenize` sidecars (.json beside them): {EXPECTED}")

    def values(key: str) -> str:
        return ", ".join(sorted({str(s.get(key)) for s in sidecars}))

    return "\n".join([
        f"token files {folder}: {len(sidecars)} video(s) tokenized by larp tokenize",
        f"tokenizer: {values('tokenizer')}",
        f"tokens: {values('tokens_per_window')} per window, codebook {values('codebook_size')}",
        f"windows: {sum(int(s.get('num_windows', 0)) for s in sidecars)} in all, of {values('frames_per_window')} "
        f"frames of {values('size')}x{values('size')} at {values('fps')} fps, resize {values('resize')}",
        f"stochastic codes: {values('stochastic')}",
    ])
