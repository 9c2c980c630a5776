"""The official LARP checkpoint format (github.com/hywang66/LARP, HuggingFace ``hywang66/LARP-L-long-*``).

Official ``config.json`` files hold the constructor arguments of the official classes (LARP.md A.1,
A.8). Weight names need no mapping: this library's modules carry the official names. What this module
does is translate config dictionaries both ways (an official dict <-> the plain field dict of this
library's config dataclass, nested dicts for nested configs) and refuse, with a message, the official
flag combinations this library does not implement (none of the released checkpoints uses them).

It works on plain dicts only and imports no model module: the models import it and build their typed
config from the field dict with ``larp.config.config_from_dict``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- tokenizer
# Official tokenizer constructor flags and the only values implemented here (the released ones).
_FIXED_TOKENIZER_FLAGS: dict[str, Any] = {
    "learned_encoder_patch_pe": False,
    "learned_encoder_latent_query_embed": True,
    "learned_decoder_latent_pe": False,
    "learned_decoder_patch_query_embed": False,
    "use_encoder_patch_token_type_embed": False,
    "use_encoder_latent_query_token_type_embed": False,
    "use_decoder_latent_token_type_embed": False,
    "use_decoder_patch_query_token_type_embed": True,
    "encoder_query_gaussian_init": True,
}
_TRANSFORMER = "transformer_encoder_parallel"

# Official key -> TokenizerConfig field, for the plain integer/float settings.
_TOKENIZER_FIELDS = {
    "frame_num": "frame_num",
    "input_size": "input_size",
    "in_channels": "in_channels",
    "temporal_patch_size": "temporal_patch_size",
    "patch_size": "patch_size",
    "bottleneck_token_num": "num_tokens",
    "encoder_hidden_size": "encoder_hidden_size",
    "encoder_num_heads": "encoder_num_heads",
    "encoder_depth": "encoder_depth",
    "decoder_hidden_size": "decoder_hidden_size",
    "decoder_num_heads": "decoder_num_heads",
    "decoder_depth": "decoder_depth",
    "latent_pe_scale_factor": "latent_pe_base",
    "query_init_std": "query_init_std",
}

# Official constructor defaults for keys that a config.json may leave out.
_TOKENIZER_DEFAULTS = {"in_channels": 3, "latent_pe_scale_factor": 10000, "query_init_std": 0.02}


def is_official_tokenizer_config(data: dict[str, Any]) -> bool:
    """Whether ``data`` looks like an official tokenizer ``config.json`` (a ``bottleneck`` and a token count)."""
    return isinstance(data.get("bottleneck"), dict) and "bottleneck_token_num" in data


def tokenizer_fields_from_official(data: dict[str, Any]) -> dict[str, Any]:
    """``TokenizerConfig`` fields (``quantizer`` a nested dict) from an official tokenizer ``config.json`` dict.

    Raises:
        ValueError: a required key is missing, or a flag has a value this library does not implement.
    """
    if not is_official_tokenizer_config(data):
        raise ValueError(
            "config.json is neither a larp LARPTokenizer config (no '_class_name') nor an official LARP "
            "tokenizer config (no 'bottleneck' / 'bottleneck_token_num')"
        )
    data = {**_TOKENIZER_DEFAULTS, **data}
    missing = sorted(k for k in _TOKENIZER_FIELDS if k not in data)
    if missing:
        raise ValueError(f"official tokenizer config.json lacks {missing}")
    problems = []
    for key, supported in _FIXED_TOKENIZER_FLAGS.items():
        if key in data and data[key] != supported:
            problems.append(f"{key}={data[key]!r} (only {supported!r} is implemented)")
    for key in ("transformer_name", "encoder_name", "decoder_name"):
        value = data.get(key, "none")
        if value not in ("none", _TRANSFORMER) or (key == "transformer_name" and value != _TRANSFORMER):
            problems.append(f"{key}={value!r} (only {_TRANSFORMER!r} is implemented)")
    for ours, theirs in (("temporal_patch_size", "decoder_temporal_patch_size"), ("patch_size", "decoder_patch_size")):
        if theirs in data and data[theirs] != data[ours]:
            problems.append(f"{theirs}={data[theirs]} differs from {ours}={data[ours]} (not implemented)")

    bottleneck = data["bottleneck"]
    args = bottleneck.get("args", {})
    regularizer = args.get("regularizer", {})
    vq = regularizer.get("args", {})
    if bottleneck.get("name", "bottleneck") != "bottleneck":
        problems.append(f"bottleneck.name={bottleneck.get('name')!r} (only 'bottleneck' is implemented)")
    if args.get("norm", "none") != "none":
        problems.append(f"bottleneck.args.norm={args.get('norm')!r} (only 'none' is implemented)")
    if regularizer.get("name") != "vq":
        problems.append(f"bottleneck regularizer {regularizer.get('name')!r} (only 'vq' is implemented)")
    if not vq.get("l2_normalized", False):
        problems.append("vq l2_normalized=false (only the L2-normalised codebook is implemented)")
    if "codebook_size" not in vq or "bottleneck_dim" not in args:
        problems.append("bottleneck lacks bottleneck_dim or codebook_size")
    if problems:
        raise ValueError("unsupported official tokenizer config: " + "; ".join(problems))
    if vq.get("entropy_loss_weight", 0.0):
        logger.warning("official entropy_loss_weight=%s is a training-only term not implemented here; ignored",
                       vq["entropy_loss_weight"])

    fields: dict[str, Any] = {ours: data[theirs] for theirs, ours in _TOKENIZER_FIELDS.items()}
    fields["quantizer"] = {
        "codebook_size": vq["codebook_size"],
        "code_dim": args["bottleneck_dim"],
        "stochastic": vq.get("stochastic", True),
        "temperature": vq.get("stochastic_temperature", 0.03),
        "commitment_weight": vq.get("commitment_loss_weight", 0.25),
        "codebook_weight": vq.get("codebook_loss_weight", 1.0),
    }
    return fields


def tokenizer_fields_to_official(fields: dict[str, Any]) -> dict[str, Any]:
    """The official ``config.json`` dict for ``TokenizerConfig`` fields (``config_to_dict`` of one).

    The training-time prior is written as disabled ('none'): the official format keeps the prior's
    weights inside the tokenizer checkpoint, and this library exports it as its own folder.

    Raises:
        ValueError: the config has a part the official format cannot hold (nested dropout's mask embedding).
    """
    if fields.get("nested_dropout", False):
        raise ValueError("a nested-dropout tokenizer has a mask embedding the official format cannot hold")
    q = fields["quantizer"]
    data: dict[str, Any] = {theirs: fields[ours] for theirs, ours in _TOKENIZER_FIELDS.items()}
    data.update(_FIXED_TOKENIZER_FLAGS)
    data.update(
        decoder_temporal_patch_size=fields["temporal_patch_size"],
        decoder_patch_size=fields["patch_size"],
        transformer_name=_TRANSFORMER,
        encoder_name="none",
        decoder_name="none",
        bottleneck={
            "name": "bottleneck",
            "args": {
                "bottleneck_dim": q["code_dim"],
                "norm": "none",
                "regularizer": {
                    "name": "vq",
                    "args": {
                        "codebook_size": q["codebook_size"],
                        "commitment_loss_weight": q["commitment_weight"],
                        "codebook_loss_weight": q["codebook_weight"],
                        "entropy_loss_weight": 0.0,
                        "entropy_loss_temperature": 0.01,
                        "l2_normalized": True,
                        "stochastic": q["stochastic"],
                        "stochastic_temperature": q["temperature"],
                    },
                },
            },
        },
        prior_model={"name": "none"},
    )
    return data


# ---------------------------------------------------------------------------------------------- generator
# Official ``ModelArgs`` keys that are ``GeneratorConfig`` fields of the same name and meaning.
GENERATOR_KEYS = (
    "dim",
    "n_layer",
    "n_head",
    "multiple_of",
    "ffn_dim_multiplier",
    "norm_eps",
    "token_dropout_p",
    "resid_dropout_p",
    "ffn_dropout_p",
    "attn_dropout_p",
    "num_classes",
    "class_dropout_prob",
    "vocab_size",
    "max_seq_len",
    "frame_prediction",
    "initializer_range",
)
# Official ModelArgs keys with no counterpart here, and the only values implemented.
_GENERATOR_FIXED = {"drop_path_rate": 0.0, "use_fixed_pe": False}
# Official ModelArgs keys without effect here: the batch limit of the official cache, the unused RoPE
# base, a label, grouped-query heads (checked equal to n_head), and cls_token_num, which follows from
# frame_prediction and max_seq_len (the model checks it against its config).
_GENERATOR_IGNORED = ("max_batch_size", "rope_base", "model_type", "n_kv_head", "cls_token_num")


def generator_fields_from_official(data: dict[str, Any]) -> dict[str, Any]:
    """``GeneratorConfig`` fields from the official flat ``ModelArgs`` dict (config.json of ``LARP_AR``).

    Raises:
        ValueError: an unknown key, or a setting this library does not implement.
    """
    unknown = sorted(set(data) - set(GENERATOR_KEYS) - set(_GENERATOR_FIXED) - set(_GENERATOR_IGNORED))
    if unknown:
        raise ValueError(f"official generator config: unknown key(s) {unknown}")
    for key, value in _GENERATOR_FIXED.items():
        if key in data and data[key] != value:
            raise ValueError(f"official generator config: {key}={data[key]!r} is not supported (only {value!r})")
    if data.get("n_kv_head") not in (None, data.get("n_head")):
        raise ValueError("official generator config: grouped-query attention (n_kv_head != n_head) is not supported")
    return {k: v for k, v in data.items() if k in GENERATOR_KEYS}


def generator_fields_to_official(fields: dict[str, Any], *, cls_token_num: int) -> dict[str, Any]:
    """The official flat ``ModelArgs`` dict (readable by ``LARP_AR.from_pretrained``) for ``GeneratorConfig``
    fields; ``cls_token_num`` is the config's number of conditioning positions."""
    out = {k: fields[k] for k in GENERATOR_KEYS}
    out.update(
        cls_token_num=cls_token_num,
        drop_path_rate=0.0,
        max_batch_size=32,
        model_type="class_cond",
        n_kv_head=None,
        rope_base=10000,
        use_fixed_pe=False,
    )
    return out
