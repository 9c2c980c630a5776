"""The prior ablation (issue 15): does training the tokenizer with the AR prior make its tokens easier to
generate, as the paper's Table 4 says (LARP.md F.2)?

For every *variant* (a few recipe overrides of one tokenizer recipe) and every seed, one *run*:

1. trains the tokenizer (the demo's tiny recipe, scaled to the plan's steps; nested token dropout on);
2. trains the same small class-conditional generator recipe on its tokens (a token cache of the training clips);
3. evaluates on held-out clips (synthetic seed 2: neither the training clips, seed 0, nor the trainers'
   validation clips, seed 1): reconstruction (PSNR, SSIM, Fréchet distance and class accuracy of the
   synthetic-data detector, codebook use), prefixes (PSNR when decoding only the first k tokens), generation
   (Fréchet distance and class accuracy of class-conditional samples), and the generator's teacher-forced
   negative log-likelihood of the held-out clips' tokens, per token and per position (the order claim).

One detector, trained first on the experiment's training data (seed 0), scores every run. A finished run
writes ``runs/<variant>/seed-<s>/result.json`` and is skipped by the next invocation; a killed one resumes its
trainers from their last checkpoints. The report (``report.json``, ``report.md``, ``plots/*.png``) is rebuilt
from the finished runs every time. The folder::

    OUT/plan.json  detector/  runs/<variant>/seed-<s>/{tokenizer,generator}/ (trainer runs)  cache/  result.json
    OUT/report.json  report.md  plots/
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from larp.config import config_to_dict
from larp.data.synthetic import SyntheticConfig, SyntheticVideos
from larp.demo.recipes import demo_plan
from larp.evaluation.detectors import ClassifierDetector
from larp.evaluation.fvd import frechet_distance
from larp.evaluation.image_metrics import codebook_usage, psnr, ssim
from larp.evaluation.video_classifier import VIDEO_CLASSIFIER_PRESETS, VideoClassifier, train_video_classifier
from larp.files import FolderLock, read_jsonl, write_json_atomic, write_text_atomic
from larp.models.generator import LARPGenerator
from larp.models.tokenizer import LARPTokenizer
from larp.seeding import derive_seed
from larp.training import checkpoint as ckpt
from larp.training.generator_trainer import train_generator
from larp.training.recipe import GeneratorTrainConfig, TokenizerTrainConfig, recipe_from_dict
from larp.training.tokenizer_trainer import train_tokenizer
from larp.version import __version__

__all__ = ["AblationPlan", "DEFAULT_VARIANTS", "PAPER_TABLE4", "PLANS", "VARIANTS", "ablation_plan", "build_report",
           "run_prior_ablation", "variant_recipes"]

logger = logging.getLogger(__name__)

#: The variants: recipe overrides (dotted keys) of the tokenizer recipe; everything else is shared.
VARIANTS: dict[str, dict[str, Any]] = {
    "no-prior": {"prior.enabled": False},  # no AR prior model, no prior loss
    "prior": {},  # LARP: prior (x50 lr), scheduled sampling, stochastic VQ
    "prior-no-ss": {"prior.scheduled_sampling": False},
    "prior-det-vq": {"model.quantizer.stochastic": False},  # nearest code instead of SVQ during training
    "prior-lr-x1": {"prior.lr_mult": 1.0},  # the released code's effective prior learning rate (LARP.md B.4)
}
DEFAULT_VARIANTS: tuple[str, ...] = ("no-prior", "prior", "prior-no-ss", "prior-det-vq")
#: The paper's ablation (LARP.md F.2; UCF-101, LARP-B), the direction to compare with: PSNR, rFVD, gFVD.
PAPER_TABLE4: dict[str, dict[str, float]] = {
    "prior": {"psnr": 27.88, "rfvd": 31, "gfvd": 107},
    "no-prior": {"psnr": 27.95, "rfvd": 23, "gfvd": 190},
    "prior-no-ss": {"psnr": 27.85, "rfvd": 27, "gfvd": 142},
    "prior-det-vq": {"psnr": 27.65, "rfvd": 27, "gfvd": 149},
}
ABLATION_NESTED_DROPOUT = 0.1  # share of tokenizer training clips decoded from a random prefix
DONE = "result.json"  # a finished run's marker and record
_SAMPLE_STREAM = 1  # derive_seed key of the draws of the class-conditional samples


@dataclass(frozen=True)
class AblationPlan:
    """Every setting shared by the runs of one experiment (``plan.json``; a resumed experiment must match)."""

    name: str  # one of PLANS
    num_classes: int  # motion classes of the synthetic data (1-8)
    background: str  # synthetic background: black, gradient, noise
    tokenizer_steps: int
    tokenizer_batch: int
    generator_steps: int
    generator_batch: int
    train_videos: int  # distinct synthetic training clips (seed 0)
    val_videos: int  # the trainers' validation clips (seed 1)
    detector_steps: int
    eval_clips: int  # held-out clips (seed 2)
    samples_per_class: int
    cfg_scale: float
    token_budgets: tuple[int, ...]  # prefix lengths decoded for the prefix-PSNR curve

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @property
    def data(self) -> SyntheticConfig:
        return SyntheticConfig(num_videos=self.train_videos, num_classes=self.num_classes, background=self.background)


#: The plans, by name: ``full`` trains the demo's recipes unchanged (1,600 tokenizer steps of 32 clips, 600 generator
#: steps of 64), the budget at which the demo's tokenizer has found the object (its validation PSNR rises from
#: about 14 to 16 dB between steps 750 and 1,000 and ends at 17 dB); ``small`` is a quarter of the tokenizer's
#: steps at half the batch and an eighth of the generator's sequences (what a loaded 2-core CPU could run in one
#: session: docs/ablation.md shows every variant at the floor there); ``quick`` checks the mechanics in seconds (its numbers mean nothing).
PLANS: tuple[str, ...] = ("full", "small", "quick")


def ablation_plan(name: str = "full") -> AblationPlan:
    """The plan called ``name`` (one of :data:`PLANS`).

    The data (8 classes on a gradient background) is harder than the demo's 4 classes on black, where the
    demo's tokenizer and generator are at the detector's ceiling (class accuracy 1.00 and 0.996): chosen
    before any variant was compared (docs/ablation.md).
    """
    shared = dict(num_classes=8, background="gradient", cfg_scale=1.25)
    if name == "quick":
        return AblationPlan(name="quick", tokenizer_steps=8, tokenizer_batch=4, generator_steps=4, generator_batch=8,
                            train_videos=32, val_videos=8, detector_steps=4, eval_clips=16, samples_per_class=2,
                            token_budgets=(4, 16, 32), **shared)
    if name == "small":
        return AblationPlan(name="small", tokenizer_steps=400, tokenizer_batch=16, generator_steps=150,
                            generator_batch=32, train_videos=2048, val_videos=128, detector_steps=300, eval_clips=256,
                            samples_per_class=32, token_budgets=(2, 4, 8, 16, 24, 32), **shared)
    if name == "full":
        return AblationPlan(name="full", tokenizer_steps=1600, tokenizer_batch=32, generator_steps=600,
                            generator_batch=64, train_videos=8192, val_videos=256, detector_steps=300, eval_clips=256,
                            samples_per_class=32, token_budgets=(2, 4, 8, 16, 24, 32), **shared)
    raise ValueError(f"unknown plan {name!r}; choose from {', '.join(PLANS)}")


# ------------------------------------------------------------------------------------------ recipes
def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    if last not in node:
        raise KeyError(f"recipe has no field {dotted!r}")
    node[last] = value


def _data_section(plan: AblationPlan) -> dict[str, Any]:
    return {"synthetic_videos": plan.train_videos, "val_videos": plan.val_videos, "synthetic_classes": plan.num_classes,
            "synthetic_background": plan.background, "random_flip": False, "num_workers": 0}


def variant_recipes(plan: AblationPlan, variant: str, seed: int, run: str | Path
                    ) -> tuple[TokenizerTrainConfig, GeneratorTrainConfig]:
    """The tokenizer and generator recipes of one run (folder ``run``): the demo's recipes, steps scaled to the
    plan (every schedule of the tokenizer in proportion), then the variant's overrides."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    run = Path(run)
    demo = demo_plan(run, quick=False)
    tok = config_to_dict(demo.tokenizer)
    scale = plan.tokenizer_steps / demo.tokenizer.steps
    steps = plan.tokenizer_steps
    for key in ("optim.warmup_steps", "prior.weight_delay", "prior.weight_ramp", "codebook.continuous_warmup"):
        node = tok
        for part in key.split("."):
            node = node[part]
        _set(tok, key, max(1, round(node * scale)))
    _set(tok, "codebook.restart_every", max(1, min(demo.tokenizer.codebook.restart_every, steps // 8)))
    tok.update(steps=steps, batch_size=plan.tokenizer_batch, seed=seed, log_every=max(1, min(10, steps // 4)),
               eval_every=steps, sample_every=steps, checkpoint_every=max(1, steps // 4))
    tok["data"] = {**tok["data"], **_data_section(plan)}
    # the share of nested-dropout clips the ablation was measured with (docs/ablation.md), kept when the demo's
    # own share changed (0.5 since the adaptive-budget measurements): a finished or resumed ablation stays the same
    tok["nested_dropout_prob"] = ABLATION_NESTED_DROPOUT
    for key, value in VARIANTS[variant].items():
        _set(tok, key, value)
    gen = config_to_dict(demo.generator)
    gsteps = plan.generator_steps
    _set(gen, "model.num_classes", plan.num_classes)
    gen["tokens"] = {**gen["tokens"], "tokenizer": str(run / "tokenizer" / "tokenizer"), "cache": str(run / "cache")}
    gen["data"] = {**gen["data"], **_data_section(plan)}
    gen["sampling"] = {**gen["sampling"], "classes": plan.num_classes, "per_class": 1, "cfg_scale": plan.cfg_scale}
    _set(gen, "optim.warmup_steps", max(1, round(gen["optim"]["warmup_steps"] * gsteps / demo.generator.steps)))
    gen.update(steps=gsteps, batch_size=plan.generator_batch, seed=seed, log_every=max(1, min(10, gsteps // 4)),
               eval_every=gsteps, sample_every=gsteps, checkpoint_every=max(1, gsteps // 2))
    if plan.name == "quick":  # the demo's quick generator: 2 layers of 64
        _set(gen, "model.dim", 64)
        _set(gen, "model.n_layer", 2)
    return recipe_from_dict(tok, TokenizerTrainConfig), recipe_from_dict(gen, GeneratorTrainConfig)


# ------------------------------------------------------------------------------------------ evaluation
def held_out(plan: AblationPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out clips (synthetic seed 2): (n, 3, t, h, w) in [0, 1] and their (n,) labels."""
    data = SyntheticVideos(replace(plan.data, num_videos=plan.eval_clips, seed=2))
    batch = data.get_batch(list(range(plan.eval_clips)))  # labels cycle through the classes: balanced
    return batch["video"], batch["label"]


def train_detector(plan: AblationPlan, folder: Path, device: torch.device) -> ClassifierDetector:
    """The experiment's synthetic-data detector (trained once on the training clips, seed 0; kept in ``folder``)."""
    if not (folder / "model.safetensors").is_file():
        config = replace(VIDEO_CLASSIFIER_PRESETS["synthetic-32"], num_classes=plan.num_classes)
        data = SyntheticVideos(replace(plan.data, num_videos=8192))
        model = train_video_classifier(data, config=config, steps=plan.detector_steps, device=device)
        model.save_pretrained(folder)
    return ClassifierDetector(VideoClassifier.from_pretrained(folder, device=device), source=folder)


def _batches(n: int, size: int = 64):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def evaluate_run(plan: AblationPlan, tokenizer: LARPTokenizer, generator: LARPGenerator,
                 detector: ClassifierDetector, videos: torch.Tensor, labels: torch.Tensor,
                 real_features: torch.Tensor, seed: int) -> dict[str, Any]:
    """Every number of one run (see the module docstring); ``real_features`` are the detector's features of
    ``videos``."""
    device = tokenizer.device
    n, num_tokens = len(videos), tokenizer.config.num_tokens
    ids, recon_feats, sums = [], [], {"psnr": 0.0, "ssim": 0.0, "correct": 0}
    for rows in _batches(n):
        real = videos[rows].to(device)
        batch_ids = tokenizer.encode(real)
        fake = tokenizer.decode(batch_ids, num_frames=real.shape[2], clamp=True)
        ids.append(batch_ids.cpu())
        sums["psnr"] += psnr(real, fake).sum().item()
        sums["ssim"] += ssim(real, fake).sum().item()
        sums["correct"] += int((detector.predict(fake) == labels[rows]).sum())
        recon_feats.append(detector.features(fake).cpu())
    ids_all = torch.cat(ids)
    usage, perplexity = codebook_usage(ids_all, tokenizer.config.quantizer.codebook_size)
    result: dict[str, Any] = {"reconstruction": {
        "psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n, "class_accuracy": sums["correct"] / n,
        "fd": frechet_distance(real_features, torch.cat(recon_feats)), "codebook_usage": usage,
        "codebook_perplexity": perplexity}}
    # prefixes: decode only the first k tokens (nested dropout makes every prefix decodable)
    prefix = {}
    for k in plan.token_budgets:
        total = 0.0
        for rows in _batches(n):
            real = videos[rows].to(device)
            fake = tokenizer.decode(ids_all[rows, :k].to(device), num_frames=real.shape[2], clamp=True)
            total += psnr(real, fake).sum().item()
        prefix[str(k)] = total / n
    result["prefix_psnr"] = prefix
    # the generator's teacher-forced NLL of the held-out tokens, per position
    generator.eval()
    nll = torch.zeros(num_tokens, dtype=torch.float64)
    for rows in _batches(n):
        tokens, cond = ids_all[rows].to(device), labels[rows].to(device)
        logits = generator(tokens, cond).float()
        loss = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")  # (b, N)
        nll += loss.sum(0).double().cpu()
    per_position = (nll / n).tolist()
    quarter = max(1, num_tokens // 4)
    result["nll"] = {"per_token": sum(per_position) / num_tokens, "per_position": per_position,
                     "first_quarter": sum(per_position[:quarter]) / quarter,
                     "last_quarter": sum(per_position[-quarter:]) / quarter}
    # class-conditional samples
    rng = torch.Generator(device=device).manual_seed(derive_seed(seed, _SAMPLE_STREAM))
    classes = torch.arange(plan.num_classes).repeat_interleave(plan.samples_per_class)
    sample_feats, correct = [], 0
    for rows in _batches(len(classes)):
        cond = classes[rows].to(device)
        sample_ids = generator.generate(cond, cfg_scale=plan.cfg_scale, generator=rng)
        fake = tokenizer.decode(sample_ids, num_frames=videos.shape[2], clamp=True)
        correct += int((detector.predict(fake) == classes[rows]).sum())
        sample_feats.append(detector.features(fake).cpu())
    result["generation"] = {"fd": frechet_distance(real_features, torch.cat(sample_feats)),
                            "class_accuracy": correct / len(classes), "samples": len(classes)}
    return result


# ------------------------------------------------------------------------------------------ runs
def _train(train: Callable[..., Path], recipe, run_dir: Path, device: str, progress: bool) -> Path:
    if ckpt.latest_checkpoint(run_dir) is None and run_dir.exists():
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to resume
    return train(recipe, run_dir, resume=True, device=device, progress=progress)


def _last_val(run_dir: Path) -> dict[str, float]:
    lines = read_jsonl(run_dir / "metrics.jsonl")
    last = next((line for line in reversed(lines) if any(k.startswith("val_") for k in line)), {})
    return {k: v for k, v in last.items() if k.startswith("val_")}


def run_one(plan: AblationPlan, variant: str, seed: int, folder: Path, detector: ClassifierDetector,
            held: tuple[torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device,
            progress: bool = False) -> dict[str, Any]:
    """Train, tokenize, train the generator and evaluate one run in ``folder``; writes ``folder/result.json``."""
    tok_recipe, gen_recipe = variant_recipes(plan, variant, seed, folder)
    seconds = {}
    t0 = time.perf_counter()
    tok_folder = _train(train_tokenizer, tok_recipe, folder / "tokenizer", str(device), progress)
    seconds["tokenizer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen_folder = _train(train_generator, gen_recipe, folder / "generator", str(device), progress)
    seconds["generator"] = time.perf_counter() - t0  # includes encoding the token cache
    t0 = time.perf_counter()
    tokenizer = LARPTokenizer.from_pretrained(tok_folder, device=device).eval()
    generator = LARPGenerator.from_pretrained(gen_folder, device=device).eval()
    videos, labels, real_features = held
    result = evaluate_run(plan, tokenizer, generator, detector, videos, labels, real_features, seed)
    seconds["evaluate"] = time.perf_counter() - t0
    gen_val = _last_val(folder / "generator")
    result["generator_val"] = {"loss": gen_val.get("val_loss"), "top1": gen_val.get("val_top1")}
    result["tokenizer_val"] = _last_val(folder / "tokenizer")
    result.update(variant=variant, seed=seed, overrides=VARIANTS[variant],
                  seconds={k: round(v, 1) for k, v in seconds.items()})
    write_json_atomic(folder / DONE, result)
    # keep the exported models, recipes and metrics; drop what only a resume needed (the runs stay small)
    for name in ("cache", "tokenizer/checkpoints", "generator/checkpoints"):
        shutil.rmtree(folder / name, ignore_errors=True)
    return result


def _check_plan(out: Path, plan: AblationPlan) -> None:
    path = out / "plan.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(plan.to_dict())):
            raise ValueError(f"{path} holds another plan ({saved.get('name')!r}); finished runs there were made with "
                             f"other settings: choose another --out")
    else:
        write_json_atomic(path, plan.to_dict())


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "larp": __version__,
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _held(plan: AblationPlan, detector: ClassifierDetector, device: torch.device):
    """Held-out clips, labels, the detector's features of them and its class accuracy on them."""
    videos, labels = held_out(plan)
    with torch.no_grad():
        features = torch.cat([detector.features(videos[r].to(device)).cpu() for r in _batches(len(videos))])
        correct = sum(int((detector.predict(videos[r].to(device)) == labels[r]).sum()) for r in _batches(len(videos)))
    return (videos, labels, features), correct / len(videos)


def _worker(job: tuple) -> tuple[str, int, dict[str, Any], float]:
    """One run in a worker process (one CPU thread unless told otherwise): (variant, seed, result, seconds)."""
    out, plan_dict, variant, seed, device, threads = job
    torch.set_num_threads(threads)
    plan = AblationPlan(**{**plan_dict, "token_budgets": tuple(plan_dict["token_budgets"])})
    dev = torch.device(device)
    detector = train_detector(plan, Path(out) / "detector", dev)
    held, _ = _held(plan, detector, dev)
    t0 = time.perf_counter()
    result = run_one(plan, variant, seed, Path(out) / "runs" / variant / f"seed-{seed}", detector, held, dev)
    return variant, seed, result, time.perf_counter() - t0


def _line(variant: str, seed: int, r: dict[str, Any], seconds: float) -> str:
    return (f"{variant} seed {seed}: {seconds:.0f} s; PSNR {r['reconstruction']['psnr']:.2f}, "
            f"rFD {r['reconstruction']['fd']:.3f}, gFD {r['generation']['fd']:.3f}, "
            f"sample accuracy {r['generation']['class_accuracy']:.3f}, NLL/token {r['nll']['per_token']:.3f}")


def run_prior_ablation(out: str | Path, *, plan: str = "full", seeds: int = 3,
                       variants: Sequence[str] = DEFAULT_VARIANTS, device: str | None = None, jobs: int = 1,
                       progress: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) the experiment in ``out`` and return the report (also ``out/report.json``).

    Runs go seed-major (every variant of seed 0, then of seed 1, ...), so a stopped experiment has comparable
    seeds for every variant. Finished runs (``result.json``) are skipped.

    Args:
        jobs: runs trained at a time, each in its own process with ``max(1, cpus // jobs)`` threads (on a
            shared CPU, one thread per run is much faster than threads competing for the cores).
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(VARIANTS)}")
    out = Path(out).resolve()
    plan = ablation_plan(plan)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with FolderLock(out, what="prior ablation"):
        _check_plan(out, plan)
        started = time.perf_counter()
        t0 = time.perf_counter()
        trained = not (out / "detector" / "model.safetensors").is_file()
        detector = train_detector(plan, out / "detector", dev)
        held, real_accuracy = _held(plan, detector, dev)
        if trained or not (out / "detector.json").is_file():
            write_json_atomic(out / "detector.json", {"held_out_class_accuracy": real_accuracy,
                                                      "chance": 1 / plan.num_classes, "steps": plan.detector_steps,
                                                      "seconds": round(time.perf_counter() - t0, 1)})
        echo(f"detector: class accuracy {real_accuracy:.3f} on {len(held[0])} held-out real clips")
        pending = []
        for seed in range(seeds):
            for variant in variants:
                if (out / "runs" / variant / f"seed-{seed}" / DONE).is_file():
                    echo(f"{variant} seed {seed}: finished in an earlier run, skipped")
                else:
                    pending.append((variant, seed))
        if jobs == 1 or len(pending) < 2:
            for variant, seed in pending:
                t0 = time.perf_counter()
                r = run_one(plan, variant, seed, out / "runs" / variant / f"seed-{seed}", detector, held, dev, progress)
                echo(_line(variant, seed, r, time.perf_counter() - t0))
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            work = [(str(out), plan.to_dict(), v, s, str(dev), threads) for v, s in pending]
            context = multiprocessing.get_context("spawn")  # no forked torch state
            with ProcessPoolExecutor(max_workers=min(jobs, len(work)), mp_context=context) as pool:
                for variant, seed, r, seconds in pool.map(_worker, work):
                    echo(_line(variant, seed, r, seconds))
        report = build_report(out)
        echo(f"report: {out / 'report.md'} ({time.perf_counter() - started:.0f} s this invocation)")
        return report


# ------------------------------------------------------------------------------------------ report
#: The report's table: (label, path in a run's result, lower is better, digits).
METRICS: tuple[tuple[str, str, bool, int], ...] = (
    ("PSNR (dB)", "reconstruction.psnr", False, 2),
    ("SSIM", "reconstruction.ssim", False, 3),
    ("recon. FD", "reconstruction.fd", True, 3),
    ("recon. class acc.", "reconstruction.class_accuracy", False, 3),
    ("codebook use", "reconstruction.codebook_usage", False, 3),
    ("gen. FD", "generation.fd", True, 3),
    ("gen. class acc.", "generation.class_accuracy", False, 3),
    ("NLL/token (held-out)", "nll.per_token", True, 3),
    ("NLL first 1/4", "nll.first_quarter", True, 3),
    ("NLL last 1/4", "nll.last_quarter", True, 3),
    ("gen. val loss", "generator_val.loss", True, 3),
)


def _get(record: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        record = record[part]
    return record


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), min, max and the values."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n, "values": list(values)}


def build_report(out: str | Path) -> dict[str, Any]:
    """Gather every finished run in ``out`` into ``report.json``, ``report.md`` and ``plots/*.png``."""
    out = Path(out)
    plan = json.loads((out / "plan.json").read_text())
    results: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob(f"*/seed-*/{DONE}")):
        record = json.loads(path.read_text())
        results.setdefault(record["variant"], []).append(record)
    order = [v for v in VARIANTS if v in results]
    table: dict[str, dict[str, Any]] = {}
    for variant in order:
        runs = sorted(results[variant], key=lambda r: r["seed"])
        row = {path: summarize([_get(r, path) for r in runs]) for _, path, _, _ in METRICS}
        row["seeds"] = [r["seed"] for r in runs]
        row["nll.per_position"] = [sum(r["nll"]["per_position"][i] for r in runs) / len(runs)
                                   for i in range(len(runs[0]["nll"]["per_position"]))]
        row["prefix_psnr"] = {k: summarize([r["prefix_psnr"][k] for r in runs]) for k in runs[0]["prefix_psnr"]}
        row["seconds"] = {k: summarize([r["seconds"][k] for r in runs]) for k in runs[0]["seconds"]}
        table[variant] = row
    detector = json.loads((out / "detector.json").read_text()) if (out / "detector.json").is_file() else None
    report = {"plan": plan, "variants": order, "table": table, "detector": detector, "paper_table4": PAPER_TABLE4,
              "metrics": [{"label": m[0], "key": m[1], "lower_is_better": m[2]} for m in METRICS],
              "machine": machine()}
    report["plots"] = _plots(out / "plots", table)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", report_markdown(report))
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The table of means ± standard deviations over seeds, the paper's direction beside it."""
    table = report["table"]
    lines = ["| variant | seeds | " + " | ".join(m[0] for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for variant, row in table.items():
        cells = [f"{row[path]['mean']:.{d}f} ± {row[path]['std']:.{d}f}" for _, path, _, d in METRICS]
        lines.append(f"| {variant} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "Paper (LARP.md F.2, UCF-101, LARP-B), for direction only:", "",
              "| variant | PSNR | rFVD | gFVD |", "|---|---|---|---|"]
    for variant, row in PAPER_TABLE4.items():
        lines.append(f"| {variant} | {row['psnr']} | {row['rfvd']} | {row['gfvd']} |")
    budgets = sorted({int(k) for row in table.values() for k in row["prefix_psnr"]})
    lines += ["", "Prefix PSNR (dB) when decoding the first k tokens:", "",
              "| variant | " + " | ".join(f"k={k}" for k in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for variant, row in table.items():
        cells = (row["prefix_psnr"][str(k)] for k in budgets)
        lines.append(f"| {variant} | " + " | ".join(f"{c['mean']:.2f} ± {c['std']:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(folder: Path, table: dict[str, dict[str, Any]]) -> list[str]:
    """Per-position NLL, prefix PSNR and generation FD per seed; [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if not table:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = {variant: f"C{i}" for i, variant in enumerate(table)}  # one colour per variant in every panel
    for variant, row in table.items():
        curve = row["nll.per_position"]
        axes[0].plot(range(1, len(curve) + 1), curve, label=variant, color=colors[variant])
        ks = sorted(int(k) for k in row["prefix_psnr"])
        axes[1].errorbar(ks, [row["prefix_psnr"][str(k)]["mean"] for k in ks],
                         yerr=[row["prefix_psnr"][str(k)]["std"] for k in ks], label=variant, capsize=2,
                         color=colors[variant])
    axes[0].set(xlabel="token position", ylabel="held-out NLL (nats)", title="generator loss per position")
    axes[1].set(xlabel="tokens decoded (prefix)", ylabel="PSNR (dB)", title="prefix PSNR")
    names = list(table)
    for i, variant in enumerate(names):
        values = table[variant]["generation.fd"]["values"]
        axes[2].scatter([i] * len(values), values, s=14, color=colors[variant])
        axes[2].bar(i, table[variant]["generation.fd"]["mean"], alpha=0.35, color=colors[variant])
    axes[2].set_xticks(range(len(names)), names, rotation=20)
    axes[2].set(ylabel="Fréchet distance (detector)", title="generation FD (bars: mean; dots: seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "prior-ablation.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [str(path.relative_to(folder.parent))]
