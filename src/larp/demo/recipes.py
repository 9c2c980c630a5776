"""What the demo trains and measures: two plans, the default (about 9-10 minutes on a 2-core CPU) and
``quick`` (about 20 s; it checks the mechanics, not the quality).

The default plan was tuned on a 2-core CPU until the synthetic-data detector recognised the motion class of
>= 90% of reconstructions and >= 80% of class-conditional samples (README, "The demo"). What it took, from
``notes/small-scale-training.md`` and the measurements made for the demo:

* data: 16 frames of 32x32, one 12-16 px shape on black moving in 4 directions;
* tokenizer: the ``tiny-cpu`` recipe (a continuous warm-up before quantizing, the codebook seeded from the
  latents, dead-code restarts, a prior whose loss weight ramps in once reconstruction has started), cut from
  2,500 to 1,600 steps, with nested token dropout so that any prefix of the 32 tokens decodes. Half the clips
  are decoded from a random prefix (``nested_dropout_prob`` 0.5): with 10%, the share this recipe had first,
  the tokenizer was 0.9 dB better from all 32 tokens (17.0 against 16.1 dB on the held-out clips), but its
  Fréchet distance fell so steeply between 8 and 12 tokens that no adaptive allocation that does not read the
  scoring detector beat fixed lengths there; with 50% the PSNR-optimal and the perceptual allocations of
  ``larp.budget`` beat them in PSNR and Fréchet distance at every mean budget from 4 to 32 (README, "Adaptive
  token budgets"; on a second run, with one thread, the perceptual allocation did and the PSNR-optimal one
  was within 0.07 of them). 50% reached 16.1 dB with two threads and 15.9 with one; with 25% (one run, two
  threads) the tokenizer did not find the object (14.0 dB); with 25% and the warm-up cut to 300-400 steps, the
  codebook collapsed (1-2% of the codes in use) before the model had found the object;
* generators: 4-layer, width-128 Llama-style models (1.1M parameters) on the cached tokens, 600 steps of 64
  sequences: a class-conditional one, and a frame predictor that continues the first 5 frames of a clip.
  (Measured on the 10% tokenizer: 0.996 class accuracy of samples; width 192 x 3 layers, 400 steps: 0.984;
  on the 50% one, 0.977.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from larp.config import config_to_dict
from larp.training.recipe import GeneratorTrainConfig, TokenizerTrainConfig, recipe_from_dict

__all__ = ["DemoPlan", "demo_plan"]


@dataclass(frozen=True)
class DemoPlan:
    """Every setting of one demo run. The trainers' recipes are complete: the demo adds nothing to them."""

    name: str  # "default" or "quick"
    tokenizer: TokenizerTrainConfig
    generator: GeneratorTrainConfig  # class-conditional
    predictor: GeneratorTrainConfig  # frame prediction
    detector_steps: int  # training steps of the synthetic-data detector (a small 3D-conv classifier)
    eval_clips: int  # held-out clips scored for reconstruction and frame prediction
    samples_per_class: int  # class-conditional samples scored per class
    token_budgets: tuple[int, ...]  # prefixes of the token sequence decoded for the PSNR-vs-tokens curve
    cfg_scale: float  # classifier-free guidance of the class-conditional samples
    gif_clips: int  # clips per class (and predictions) shown in the report
    seed: int = 0
    # the budget stage: PSNR targets set at the fixed curve's mean PSNR at these token counts (candidates)
    budget_targets_at: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def _tokenizer_recipe(quick: bool) -> TokenizerTrainConfig:
    data: dict[str, Any] = {
        "model_preset": "larp-tiny",
        "model": {"num_tokens": 32, "encoder_hidden_size": 128, "decoder_hidden_size": 128,
                  "quantizer": {"codebook_size": 256}, "nested_dropout": True},
        "prior_preset": "gptc-xxs",
        "prior_model": {"num_layers": 2, "num_heads": 4, "width": 128, "max_seq_len": 32},
        "nested_dropout_prob": 0.5,
        "steps": 1600,
        "batch_size": 32,
        "precision": "fp32",
        "optim": {"lr": 2e-3, "betas": [0.9, 0.99], "warmup_steps": 100, "min_lr_mult": 0.05, "grad_clip": 1.0,
                  "query_lr_mult": 10.0},
        "prior": {"weight_delay": 900, "weight_ramp": 300},
        "loss": {"l1_weight": 1.0, "mse_weight": 1.0, "perceptual_weight": 0.0, "gan": {"disc_weight": 0.0}},
        "codebook": {"continuous_warmup": 700, "init_from_data": True, "dead_code_restart": True, "restart_every": 50},
        "data": {"synthetic_videos": 8192, "num_workers": 0},
        "log_every": 10, "eval_every": 250, "sample_every": 500, "checkpoint_every": 250,
    }
    if quick:
        data.update(steps=30, eval_every=15, sample_every=30, checkpoint_every=15, log_every=5)
        data["codebook"] = {**data["codebook"], "continuous_warmup": 10, "restart_every": 5}
        data["prior"] = {"weight_delay": 5, "weight_ramp": 5}
        data["data"] = {"synthetic_videos": 256, "val_videos": 32, "num_workers": 0}
        data["batch_size"] = 8
    return recipe_from_dict(data, TokenizerTrainConfig)


def _generator_recipe(tokenizer: str, cache: str, quick: bool, *, frame_prediction: bool) -> GeneratorTrainConfig:
    data: dict[str, Any] = {
        "model_preset": "ar-fp-tiny" if frame_prediction else "ar-tiny",
        "model": {"dim": 128, "n_layer": 4, "n_head": 4, "vocab_size": 256, "max_seq_len": 32,
                  **({} if frame_prediction else {"num_classes": 4})},
        "tokens": {"tokenizer": tokenizer, "cache": cache},
        "data": {"synthetic_videos": 8192, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 50, "weight_decay": 0.05, "min_lr_mult": 0.05},
        "condition_frames": 5,
        "steps": 600,
        "batch_size": 64,
        "sampling": {"classes": 4, "per_class": 4, "cfg_scale": 1.25},
        "log_every": 10, "eval_every": 200, "sample_every": 600, "checkpoint_every": 200,
    }
    if quick:
        data["model"].update(dim=64, n_layer=2, n_head=4)
        data["data"] = {"synthetic_videos": 128, "val_videos": 32, "num_workers": 0}
        data.update(steps=20, batch_size=16, eval_every=10, sample_every=20, checkpoint_every=10, log_every=5)
        data["sampling"] = {"classes": 4, "per_class": 1, "cfg_scale": 1.25}
    return recipe_from_dict(data, GeneratorTrainConfig)


def demo_plan(root: str | Path, *, quick: bool = False) -> DemoPlan:
    """The demo's plan for the demo folder ``root`` (the generators' recipes name the trained tokenizer in
    ``root/models/tokenizer`` and their token caches in ``root/cache``)."""
    root = Path(root)
    tokenizer_dir = str(root / "models" / "tokenizer")
    return DemoPlan(
        name="quick" if quick else "default",
        tokenizer=_tokenizer_recipe(quick),
        generator=_generator_recipe(tokenizer_dir, str(root / "cache" / "tokens"), quick, frame_prediction=False),
        predictor=_generator_recipe(tokenizer_dir, str(root / "cache" / "tokens-fp"), quick, frame_prediction=True),
        detector_steps=20 if quick else 300,
        eval_clips=32 if quick else 256,
        samples_per_class=8 if quick else 64,
        token_budgets=(4, 8, 16, 32) if quick else (2, 4, 8, 12, 16, 24, 32),
        cfg_scale=1.25,
        gif_clips=2 if quick else 4,
        budget_targets_at=(8, 16) if quick else (4, 8, 16),
    )
