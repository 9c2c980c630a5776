"""The tokenizer-training recipe: one typed config for a whole run, read from YAML with dotted overrides.

A recipe file holds literal values only. ``model_preset`` / ``prior_preset`` name an architecture;
``model:`` / ``prior:`` then override single fields of it. ``key=value`` overrides on the command line
(``optim.lr=3e-4``, ``prior.enabled=false``) are parsed as YAML scalars and take precedence. Unknown keys
and wrong types are errors. Every field that deviates from the released code's behaviour says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from larp.config import config_from_dict, config_to_dict
from larp.losses.gan import GANLossConfig
from larp.models.prior import PRIOR_PRESETS, PriorConfig
from larp.models.tokenizer import TOKENIZER_PRESETS, TokenizerConfig


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
    # reconstruction has started (notes/small-scale-training.md). Its weight is 0 for `weight_delay`
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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    tensorboard: bool = False

    def __post_init__(self):
        if self.nested_dropout_prob > 0 and not self.model.nested_dropout:
            raise ValueError("nested_dropout_prob > 0 needs model.nested_dropout: true")
        if self.prior.enabled and self.prior_model.max_seq_len < self.model.num_tokens - 1:
            raise ValueError(
                f"prior_model.max_seq_len {self.prior_model.max_seq_len} < model.num_tokens - 1 ({self.model.num_tokens - 1})"
            )
        if self.prior_model.code_dim != self.model.quantizer.code_dim:
            raise ValueError("prior_model.code_dim must equal model.quantizer.code_dim")
        if min(self.steps, self.batch_size, self.optim.accumulation) < 1:
            raise ValueError("steps, batch_size and optim.accumulation must be positive")


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
        value = _parse_scalar(raw)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def _parse_scalar(raw: str) -> Any:
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


def recipe_from_dict(data: dict[str, Any]) -> TokenizerTrainConfig:
    """Resolve presets, then build the typed recipe strictly."""
    data = copy.deepcopy(data)
    model_preset = data.pop("model_preset", None)
    if model_preset is not None:
        if model_preset not in TOKENIZER_PRESETS:
            raise ValueError(f"unknown model_preset {model_preset!r}; choose one of {sorted(TOKENIZER_PRESETS)}")
        data["model"] = _deep_merge(config_to_dict(TOKENIZER_PRESETS[model_preset]), data.get("model") or {})
    prior_preset = data.pop("prior_preset", None)
    if prior_preset is not None:
        if prior_preset not in PRIOR_PRESETS:
            raise ValueError(f"unknown prior_preset {prior_preset!r}; choose one of {sorted(PRIOR_PRESETS)}")
        data["prior_model"] = _deep_merge(config_to_dict(PRIOR_PRESETS[prior_preset]), data.get("prior_model") or {})
    return config_from_dict(TokenizerTrainConfig, data)


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> TokenizerTrainConfig:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read recipe {path}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"recipe {path}: expected a mapping at the top level")
    return recipe_from_dict(apply_overrides(data, list(overrides)))


def recipe_to_yaml(recipe: TokenizerTrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(recipe), sort_keys=False)
