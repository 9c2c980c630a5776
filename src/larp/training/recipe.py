"""Training recipes: one typed config for a whole run, read from YAML with dotted overrides.

Two kinds: :class:`TokenizerTrainConfig` (``larp train-tokenizer``) and :class:`GeneratorTrainConfig`
(``larp train-generator``). A recipe file holds literal values only. The recipes shipped with the package
(``larp/recipes/*.yaml``) are found by name with :func:`resolve_recipe`. ``model_preset`` / ``prior_preset``
name an architecture; ``model:`` / ``prior_model:`` then override single fields of it. ``key=value`` overrides on the command line
(``optim.lr=3e-4``, ``prior.enabled=false``) are parsed as YAML scalars and take precedence. Unknown keys
and wrong types are errors. Every field that deviates from the released code's behaviour says so.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from larp.config import config_from_dict, config_to_dict
from larp.losses.gan import GANLossConfig
from larp.models.generator import GENERATOR_PRESETS, GeneratorConfig
from larp.models.prior import PRIOR_PRESETS, PriorConfig
from larp.models.tokenizer import TOKENIZER_PRESETS, TokenizerConfig


# Lower bounds shared by both kinds of recipe: the cadences are step intervals, and a run keeps at least the
# checkpoint it has just written. Checked when the recipe is built, not steps into the run.
_RUN_MINIMUMS = {"steps": 1, "batch_size": 1, "log_every": 1, "eval_every": 1, "sample_every": 1,
                 "checkpoint_every": 1, "keep_checkpoints": 1}


def _check_bounds(recipe, *, at_least: dict[str, float], fractions: tuple[str, ...]) -> None:
    """Raise a ValueError naming the first field (dotted key) below its lower bound or outside [0, 1]."""

    def get(key: str):
        value = recipe
        for part in key.split("."):
            value = getattr(value, part)
        return value

    for key, low in at_least.items():
        if get(key) < low:
            raise ValueError(f"{key} must be at least {low}, got {get(key)}")
    for key in fractions:
        if not 0 <= get(key) <= 1:
            raise ValueError(f"{key} must be between 0 and 1, got {get(key)}")


@dataclass(frozen=True)
class DataConfig:
    manifest: str | None = None  # CSV manifest (official UCF/K600 format) or a folder of videos; None: synthetic
    root: str | None = None  # base folder for relative paths in the manifest (default: the manifest's folder)
    val_manifest: str | None = None
    random_flip: bool = True  # horizontal flip of the whole clip (LARP.md C.1)
    num_workers: int = 2
    # built-in synthetic data (used when manifest is None); frames and size come from the model
    synthetic_videos: int = 4096
    synthetic_classes: int = 4
    synthetic_object_size: tuple[int, int] = (12, 16)
    synthetic_speed: tuple[float, float] = (0.6, 1.2)
    synthetic_background: str = "black"
    synthetic_seed: int = 0
    val_videos: int = 256  # validation clips (synthetic: drawn with synthetic_seed + 1)


@dataclass(frozen=True)
class PriorTrainConfig:
    enabled: bool = True
    rounds: int = 2
    scheduled_sampling: bool = True
    ss_max_ratio: float = 0.5
    ss_peak_fraction: float = 0.3  # the ratio ramps to its max over this share of the run (LARP.md B.3)
    temperature: float = 1.0  # latent cross-entropy temperature
    average_rounds: bool = True
    # Learning-rate multiplier of the prior's parameters, really applied (paper x50). The released code
    # overwrote it with x1 before the first step (LARP.md B.4, G.2.1); set 1.0 to reproduce that.
    lr_mult: float = 50.0
    # Beyond the paper, for small runs: the prior pushes towards codebook collapse before the
    # reconstruction has started (docs/small-scale-training.md). Its weight is 0 for `weight_delay`
    # steps, then ramps linearly to the full weight over `weight_ramp` steps. 0/0 = official.
    weight_delay: int = 0
    weight_ramp: int = 0


@dataclass(frozen=True)
class LossConfig:
    l1_weight: float = 1.0
    mse_weight: float = 0.0  # not in the paper; helps small CPU runs
    perceptual_weight: float = 1.0  # LPIPS-VGG16; 0 runs without (no weights needed)
    lpips_weights: str | None = None  # path; default: $LARP_LPIPS_WEIGHTS or the cache (larp weights where)
    vq_weight: float = 0.1  # times (0.25 commitment + 1.0 codebook)
    prior_weight: float = 0.06  # the paper's alpha
    gan: GANLossConfig = field(default_factory=GANLossConfig)  # gan.disc_weight 0 disables the discriminator
    gan_start: int = 0  # steps before the GAN terms switch on (official 0)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    disc_lr: float = 3e-5
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_mult: float = 0.01  # the cosine floor, as a fraction of the base lr
    grad_clip: float = 0.0  # max global grad norm; 0 = off (official: off)
    accumulation: int = 1  # micro-batches per optimizer step
    query_lr_mult: float = 1.0  # learning-rate multiplier of the holistic queries (1.0 = official)
    ema_decay: float = 0.0  # EMA of the tokenizer weights; 0 = off (official: off)


@dataclass(frozen=True)
class CodebookConfig:
    """Remedies against codebook collapse (beyond the paper; all off = official)."""

    # Steps at the start during which quantization is bypassed (the decoder sees the continuous unit
    # latents) while the codebook already learns towards them; small models learn the motion this way.
    continuous_warmup: int = 0
    init_from_data: bool = False  # set the codebook to latents of a batch when quantization starts
    dead_code_restart: bool = False  # re-initialise rarely used codes from recent latents
    restart_every: int = 100  # steps between restarts
    dead_threshold: float = 0.1  # a code is dead below this expected count per restart window
    usage_warn: float = 0.05  # warn when fewer than this share of codes is used in a validation pass


@dataclass(frozen=True)
class NestedDropoutConfig:
    """Which prefix a nested-dropout sample keeps (its share is ``nested_dropout_prob``), and validation at
    fixed prefixes. The defaults are the behaviour of larp 0.2: a length uniform in [1, N]."""

    # uniform: every length in [min_length, N] alike (larp 0.2). truncated_normal: AdapTok's choice, a normal
    # of mean `mean * N` and deviation `std * N` truncated to [min_length, N], rounded to a length.
    distribution: Literal["uniform", "truncated_normal"] = "uniform"
    mean: float = 0.5  # truncated_normal: fraction of N
    std: float = 0.25  # truncated_normal: fraction of N
    min_length: int = 1  # no sample keeps fewer tokens
    # Validation PSNR of the first k tokens, logged as val_psnr@k (nested-dropout models). Empty: N/8, N/4,
    # N/2 and N (the distinct ones of at least 1).
    val_lengths: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenizerTrainConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    prior_model: PriorConfig = field(default_factory=PriorConfig)
    prior: PriorTrainConfig = field(default_factory=PriorTrainConfig)
    discriminator_preset: str = "larp-l"
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 1000
    batch_size: int = 16  # per process and micro-batch
    nested_dropout_prob: float = 0.0  # share of samples decoded from a random prefix (needs model.nested_dropout)
    nested_dropout: NestedDropoutConfig = field(default_factory=NestedDropoutConfig)  # the prefix lengths
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    tensorboard: bool = False

    def __post_init__(self):
        _check_bounds(self, at_least={
            **_RUN_MINIMUMS, "optim.accumulation": 1, "prior.rounds": 1, "codebook.restart_every": 1,
            "data.num_workers": 0, "data.synthetic_videos": 1, "data.val_videos": 1,
            "optim.lr": 0, "optim.disc_lr": 0, "optim.warmup_steps": 0, "optim.grad_clip": 0, "optim.weight_decay": 0,
            "loss.gan_start": 0, "codebook.continuous_warmup": 0, "prior.weight_delay": 0, "prior.weight_ramp": 0,
        }, fractions=("nested_dropout_prob", "prior.ss_max_ratio", "prior.ss_peak_fraction"))
        if self.nested_dropout_prob > 0 and not self.model.nested_dropout:
            raise ValueError("nested_dropout_prob > 0 needs model.nested_dropout: true")
        n, nd = self.model.num_tokens, self.nested_dropout
        if not 1 <= nd.min_length <= n:
            raise ValueError(f"nested_dropout.min_length must be in [1, {n}] (model.num_tokens), got {nd.min_length}")
        if not nd.std > 0:
            raise ValueError(f"nested_dropout.std must be > 0 (a fraction of model.num_tokens), got {nd.std}")
        if not 0 <= nd.mean <= 1:
            raise ValueError(f"nested_dropout.mean must be between 0 and 1 (a fraction of model.num_tokens), "
                             f"got {nd.mean}")
        bad = [k for k in nd.val_lengths if not 1 <= k <= n]
        if bad:
            raise ValueError(f"nested_dropout.val_lengths must be in [1, {n}] (model.num_tokens), got {bad}")
        if nd.val_lengths and not self.model.nested_dropout:
            raise ValueError("nested_dropout.val_lengths needs model.nested_dropout: true (only such a model decodes "
                             "a prefix of its tokens)")
        if self.prior.enabled and self.prior_model.max_seq_len < self.model.num_tokens - 1:
            raise ValueError(
                f"prior_model.max_seq_len {self.prior_model.max_seq_len} < model.num_tokens - 1 ({self.model.num_tokens - 1})"
            )
        if self.prior_model.code_dim != self.model.quantizer.code_dim:
            raise ValueError("prior_model.code_dim must equal model.quantizer.code_dim")


# ------------------------------------------------------------------------------------------ generator
@dataclass(frozen=True)
class GeneratorOptimConfig:
    """AdamW as the released AR trainer (LARP.md D.2): weight decay on ``nn.Linear`` weights only."""

    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 0  # linear warmup from min_lr_mult, then cosine down to min_lr_mult
    min_lr_mult: float = 0.01
    grad_clip: float = 0.0  # official: off
    accumulation: int = 1


@dataclass(frozen=True)
class TokenSourceConfig:
    """Where the training tokens come from: a frozen tokenizer in deterministic mode (LARP.md D.2).

    Three sources, the first given wins: ``dataset`` (a token dataset on disk; ``data`` is not used), ``cache``
    (the tokens of ``data``'s clips, encoded once), else every batch of ``data`` encoded on the fly.
    """

    tokenizer: str = ""  # folder or HuggingFace repo id (required); the tokens' tokenizer (fingerprint checked)
    # A token dataset folder written by `larp tokenize --manifest` (_dataset.json + Parquet shards): each full
    # window is a sample, its label the row's. Made by this tokenizer (its weights' fingerprint must match).
    dataset: str | None = None
    # validation windows of `dataset`: another token dataset, or (null) `val_windows` windows spread evenly
    # over `dataset` (every (windows / val_windows)-th), which are then left out of training
    val_dataset: str | None = None
    val_windows: int = 256
    # A token cache folder: built from `data` on first use (or by `larp tokenize --config RECIPE`), then read;
    # the same format as a token dataset (one row per clip). None (and no dataset): the tokenizer encodes
    # every batch on the fly, as the official trainer.
    cache: str | None = None
    clips_per_video: int = 1  # cache: random-start clips stored per video, each also flipped with data.random_flip
    clip_seed: int = 0  # cache: seeds the clips' random starts
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA (official), fp32 on CPU
    encode_batch_size: int = 64


@dataclass(frozen=True)
class SamplingConfig:
    """Samples written during training (class-conditional: per class; frame prediction: per val clip)."""

    classes: int = 8  # at most this many classes in the grid
    per_class: int = 2
    cfg_scale: float = 1.25
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class GeneratorTrainConfig:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    tokens: TokenSourceConfig = field(default_factory=TokenSourceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: GeneratorOptimConfig = field(default_factory=GeneratorOptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    condition_frames: int = 5  # frame prediction: given frames, the last repeated to the clip length (D.3)
    steps: int = 1000
    batch_size: int = 64  # per process and micro-batch
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    tensorboard: bool = False

    def __post_init__(self):
        if not self.tokens.tokenizer:
            raise ValueError("tokens.tokenizer is required: the tokenizer folder or repo id whose tokens to model")
        _check_bounds(self, at_least={
            **_RUN_MINIMUMS, "optim.accumulation": 1, "tokens.clips_per_video": 1, "tokens.encode_batch_size": 1,
            "tokens.val_windows": 1,
            "condition_frames": 1, "sampling.classes": 1, "sampling.per_class": 1,
            "data.num_workers": 0, "data.synthetic_videos": 1, "data.val_videos": 1,
            "optim.lr": 0, "optim.warmup_steps": 0, "optim.grad_clip": 0, "optim.weight_decay": 0,
        }, fractions=())
        if self.tokens.val_dataset is not None and self.tokens.dataset is None:
            raise ValueError("tokens.val_dataset needs tokens.dataset (the training windows)")



def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = parse_scalar(raw)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def parse_scalar(raw: str) -> Any:
    """A command-line value: numbers as numbers (YAML 1.1 would read '4e-3' as a string), else YAML."""
    text = raw.strip()
    if not text:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


# How each recipe kind names its architecture presets: key -> (section it fills, preset table).
_PRESET_KEYS: dict[type, dict[str, tuple[str, dict]]] = {
    TokenizerTrainConfig: {"model_preset": ("model", TOKENIZER_PRESETS), "prior_preset": ("prior_model", PRIOR_PRESETS)},
    GeneratorTrainConfig: {"model_preset": ("model", GENERATOR_PRESETS)},
}


def recipe_from_dict(data: dict[str, Any], kind: type = TokenizerTrainConfig):
    """Resolve presets, then build the typed recipe of ``kind`` strictly."""
    data = copy.deepcopy(data)
    for key, (section, presets) in _PRESET_KEYS[kind].items():
        name = data.pop(key, None)
        if name is None:
            continue
        if name not in presets:
            raise ValueError(f"unknown {key} {name!r}; choose one of {sorted(presets)}")
        data[section] = _deep_merge(config_to_dict(presets[name]), data.get(section) or {})
    return config_from_dict(kind, data)


def load_recipe(path: str | Path | None, overrides: list[str] = (), kind: type = TokenizerTrainConfig):
    """Read a YAML recipe of ``kind`` (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read recipe {path}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"recipe {path}: expected a mapping at the top level")
    return recipe_from_dict(apply_overrides(data, list(overrides)), kind)


def recipe_to_yaml(recipe) -> str:
    return yaml.safe_dump(config_to_dict(recipe), sort_keys=False)


def _packaged_recipes() -> Path:
    # a folder of the installed package (wheels install unzipped, editable installs point at src/)
    return Path(str(resources.files("larp") / "recipes"))


def available_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``larp/recipes/NAME.yaml``)."""
    return sorted(p.stem for p in _packaged_recipes().glob("*.yaml"))


def resolve_recipe(name_or_path: str | os.PathLike) -> Path:
    """The recipe file meant by ``name_or_path``: an existing file wins; otherwise a packaged recipe by
    name, with or without ``.yaml`` (``tiny-cpu``, ``tiny-cpu.yaml``).

    Raises:
        FileNotFoundError: neither; the message lists the packaged recipes.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise FileNotFoundError(f"recipe {path} is a folder; expected a YAML recipe file or a packaged recipe name")
    if len(path.parts) == 1:
        packaged = _packaged_recipes() / f"{path.name.removesuffix('.yaml')}.yaml"
        if packaged.is_file():
            return packaged
    raise FileNotFoundError(f"no recipe file {str(path)!r} and no packaged recipe of that name; "
                            f"packaged recipes: {', '.join(available_recipes())}")
