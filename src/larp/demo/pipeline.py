"""``larp demo``: the whole of LARP on the built-in synthetic data, on one machine, in stages.

Stages, each a function of the demo's :class:`Context` that writes into the demo folder:

1. ``detector``  trains the synthetic-data detector (a small video classifier: FVD features, class accuracy);
2. ``tokenizer`` trains a LARP tokenizer with the AR prior and nested token dropout;
3. ``generator`` trains a class-conditional AR generator on its tokens;
4. ``predictor`` trains a frame-prediction AR generator (continues the first 5 frames of a clip);
5. ``evaluate``  scores reconstructions, token budgets, samples and predictions on held-out clips;
6. ``budget``    fixed vs adaptive token budgets on the held-out clips: at each mean number of tokens per clip,
                 PSNR, the detector's Fréchet distance and class accuracy of every clip at that length against
                 the PSNR-optimal allocation of the same total (:mod:`larp.evaluation.budget`);
7. ``media``     writes GIFs: real clips, reconstructions, samples per class, predictions;
   ``llm``       only with ``llm=True`` (``larp demo --llm``): text-to-video and captioning with a small Hugging
                 Face Llama on the demo tokenizer's ids (:mod:`larp.demo.llm`; needs ``larp[llm]``);
8. ``report``    draws the plots (with matplotlib, when installed) and writes ``report.html`` and ``metrics.json``.

A finished stage is recorded in ``stages.json`` with its duration and is skipped by the next run (a killed
training stage resumes from its last checkpoint), except the report, which is redrawn from the recorded
results every time (a second), so that a later run picks up a newly installed matplotlib. ``fresh=True``
starts over. One demo at a time writes in a folder: a run holds ``OUT/.lock`` until it ends. The folder::

    OUT/report.html  metrics.json  stages.json
    OUT/models/{tokenizer,generator,frame-predictor,detector}/   loadable with from_pretrained
    OUT/runs/{tokenizer,generator,frame-predictor}/              recipes, metrics.jsonl, checkpoints, samples
    OUT/cache/  OUT/eval/  OUT/media/  OUT/plots/
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from larp.data.synthetic import CLASS_NAMES, SyntheticConfig, SyntheticVideos
from larp.data.video_io import condition_clip, make_grid, write_video
from larp.demo.plot import PLOTS_NEED_MATPLOTLIB
from larp.demo.recipes import DemoPlan, demo_plan
from larp.demo.report import quality_bars, write_report
from larp.evaluation.budget import encode_ids, rate_quality, score_lengths
from larp.evaluation.detectors import ClassifierDetector
from larp.evaluation.protocols import resolve_protocol
from larp.evaluation.runner import ClipSource, Models, evaluate, summary_line, synthetic_detector
from larp.evaluation.video_classifier import VideoClassifier
from larp.files import FolderLock, read_jsonl, write_atomic, write_json_atomic
from larp.models.generator import LARPGenerator
from larp.models.tokenizer import LARPTokenizer
from larp.training import checkpoint as ckpt
from larp.training.generator_trainer import train_generator
from larp.training.tokenizer_trainer import train_tokenizer
from larp.version import __version__

__all__ = ["STAGES", "BARS", "run_demo"]

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("detector", "tokenizer", "generator", "predictor", "evaluate", "budget", "media", "report")
#: Stages run only when asked (``larp demo --llm``), just before the report: ``llm`` needs the llm extra.
OPTIONAL_STAGES: tuple[str, ...] = ("llm",)
#: The demo's quality bars (default plan): the detector's class accuracy on reconstructions and on samples.
BARS: dict[str, float] = {"reconstruction": 0.9, "samples": 0.8}
# Folders the demo owns inside OUT; --fresh removes these and nothing else.
_OWNED = ("models", "llm", "runs", "cache", "eval", "media", "plots", "stages.json", "metrics.json", "report.html")
_ALWAYS_RUN = ("report",)  # stages redone by every run, even when an earlier run finished them
_GIF_SCALE = 3  # the 32x32 clips are upscaled (nearest) in the GIFs so that they can be seen
_GIF_FPS = 8.0


@dataclass
class Context:
    """What every stage sees: the demo folder, the plan, the device and the results gathered so far."""

    out: Path
    plan: DemoPlan
    device: torch.device
    progress: bool
    results: dict[str, Any] = field(default_factory=dict)  # stage name -> what it measured (JSON-able)
    seconds: dict[str, float] = field(default_factory=dict)  # stage name -> its duration (in the run that did it)

    @property
    def models(self) -> Path:
        return self.out / "models"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def tokenizer(self) -> LARPTokenizer:
        return LARPTokenizer.from_pretrained(self.models / "tokenizer", device=self.device).eval()

    def generator(self, name: str) -> LARPGenerator:
        return LARPGenerator.from_pretrained(self.models / name, device=self.device).eval()

    def detector(self) -> ClassifierDetector:
        folder = self.models / "detector"
        return ClassifierDetector(VideoClassifier.from_pretrained(folder, device=self.device), source=folder)


# ------------------------------------------------------------------------------------------ held-out clips
def held_out(ctx: Context, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` clips of the held-out synthetic set (seed 1; training uses seed 0).

    Returns (count, 3, t, h, w) videos in [0, 1] and their (count,) labels.
    """
    model = ctx.plan.tokenizer.model
    data = SyntheticVideos(SyntheticConfig(num_videos=count, seed=1, frames=model.frame_num, size=model.input_size,
                                           num_classes=ctx.plan.tokenizer.data.synthetic_classes))
    items = [data[i] for i in range(count)]
    return torch.stack([item["video"] for item in items]), torch.tensor([item["label"] for item in items])


def _protocol(name: str, ctx: Context, **overrides):
    """A synthetic protocol scored on the plan's number of clips: (protocol, the overrides applied)."""
    return resolve_protocol(name, {"num_samples": ctx.plan.eval_clips, **overrides})


# ------------------------------------------------------------------------------------------ stages
def stage_detector(ctx: Context) -> dict[str, Any]:
    protocol, _ = _protocol("synthetic-recon", ctx)
    detector = synthetic_detector(protocol, ctx.device, folder=ctx.models / "detector", steps=ctx.plan.detector_steps,
                                  progress=ctx.progress)
    videos, labels = held_out(ctx, ctx.plan.eval_clips)
    with torch.no_grad():
        accuracy = (detector.predict(videos.to(ctx.device)) == labels).float().mean().item()
    return {"real_clip_accuracy": accuracy, "chance": 1 / ctx.plan.tokenizer.data.synthetic_classes}


def _train(kind: str, run_dir: Path, export_to: Path, train: Callable[..., Path], recipe, ctx: Context) -> dict:
    if ckpt.latest_checkpoint(run_dir) is None and run_dir.exists():
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to resume
    started = time.perf_counter()
    folder = train(recipe, run_dir, resume=True, device=str(ctx.device), progress=ctx.progress)
    if not (folder / "config.json").is_file():
        raise RuntimeError(f"the {kind} run in {run_dir} stopped before its last step; run the demo again to resume it")
    if export_to.exists():
        shutil.rmtree(export_to)
    shutil.copytree(folder, export_to)
    lines = read_jsonl(run_dir / "metrics.jsonl")
    last_val = next((line for line in reversed(lines) if any(k.startswith("val_") for k in line)), {})
    return {"steps": recipe.steps, "seconds": round(time.perf_counter() - started, 1),
            "final": {k: v for k, v in last_val.items() if k.startswith("val_")}, "model": str(export_to)}


def stage_tokenizer(ctx: Context) -> dict[str, Any]:
    return _train("tokenizer", ctx.runs / "tokenizer", ctx.models / "tokenizer", train_tokenizer, ctx.plan.tokenizer, ctx)


def stage_generator(ctx: Context) -> dict[str, Any]:
    return _train("generator", ctx.runs / "generator", ctx.models / "generator", train_generator, ctx.plan.generator, ctx)


def stage_predictor(ctx: Context) -> dict[str, Any]:
    return _train("frame predictor", ctx.runs / "frame-predictor", ctx.models / "frame-predictor", train_generator,
                  ctx.plan.predictor, ctx)


def token_budget_curve(tokenizer: LARPTokenizer, detector: ClassifierDetector, videos: torch.Tensor,
                       labels: torch.Tensor, budgets: tuple[int, ...], batch_size: int = 64) -> list[dict[str, float]]:
    """PSNR, SSIM and the detector's class accuracy when decoding only the first k tokens of each clip (the fixed
    curve of :func:`larp.evaluation.budget.score_lengths`).

    Args:
        videos: (n, 3, t, h, w) in [0, 1]; labels: (n,).
        budgets: token counts k (a nested-dropout tokenizer decodes any prefix).
    """
    ids = encode_ids(tokenizer, videos, batch_size)
    rows = []
    for k in budgets:
        scores = score_lengths(tokenizer, videos, ids, torch.full((len(videos),), k), labels=labels, detector=detector,
                               batch_size=batch_size)
        rows.append({"tokens": k, "psnr": scores["psnr"], "ssim": scores["ssim"],
                     "class_accuracy": scores["class_accuracy"]})
    return rows


def stage_evaluate(ctx: Context) -> dict[str, Any]:
    plan, tokenizer, detector = ctx.plan, ctx.tokenizer(), ctx.detector()
    classes = plan.tokenizer.data.synthetic_classes
    sources = {"data": "synthetic", "tokenizer": str(ctx.models / "tokenizer")}
    results: dict[str, Any] = {}
    runs = (  # task, protocol, generator folder in models/, protocol overrides
        ("reconstruction", "synthetic-recon", None, {}),
        ("generation", "synthetic-gen", "generator",
         {"num_samples": classes * plan.samples_per_class, "cfg_scale": plan.cfg_scale}),
        ("prediction", "synthetic-fp", "frame-predictor", {}),
    )
    for task, name, generator, overrides in runs:
        protocol, applied = _protocol(name, ctx, **overrides)
        models = Models(tokenizer, ctx.generator(generator) if generator else None, detector)
        run_sources = {**sources, "generator": str(ctx.models / generator)} if generator else sources
        record = evaluate(task, protocol, models, ClipSource("synthetic", protocol), overrides=applied,
                          sources=run_sources, work_dir=ctx.out / "eval" / "partial", progress=ctx.progress)
        write_json_atomic(ctx.out / "eval" / f"{task}.json", record)
        logger.info("%s", summary_line(record))
        results[task] = record["results"] | {"clips": record["counts"]["clips"]}
    videos, labels = held_out(ctx, plan.eval_clips)
    results["token_budgets"] = token_budget_curve(tokenizer, detector, videos, labels, plan.token_budgets)
    return results


def stage_budget(ctx: Context) -> dict[str, Any]:
    """Fixed vs adaptive budgets at the plan's token budgets (SSIM left out: the slowest metric on a CPU), and
    per-clip PSNR targets set at the fixed curve's mean PSNR of a few budgets."""
    plan = ctx.plan
    videos, labels = held_out(ctx, plan.eval_clips)
    result = rate_quality(ctx.tokenizer(), videos, budgets=plan.token_budgets, labels=labels, detector=ctx.detector(),
                          targets_at=plan.budget_targets_at, score_ssim=False, batch_size=128)
    return result


def _gif(path: Path, videos: torch.Tensor, nrow: int) -> str:
    """Write (n, 3, t, h, w) clips as one upscaled grid GIF; returns the path relative to the demo folder."""
    grid = make_grid(videos.float().cpu(), nrow=nrow, padding=1, pad_value=1.0)
    grid = grid.repeat_interleave(_GIF_SCALE, dim=-1).repeat_interleave(_GIF_SCALE, dim=-2)
    write_atomic(path, lambda tmp: write_video(tmp, grid, fps=_GIF_FPS))
    return f"{path.parent.name}/{path.name}"


def stage_media(ctx: Context) -> dict[str, Any]:
    plan, tokenizer, detector = ctx.plan, ctx.tokenizer(), ctx.detector()
    classes, per_class = plan.tokenizer.data.synthetic_classes, plan.gif_clips
    media = ctx.out / "media"
    # real clips: the first `per_class` held-out clips of every class, one row per class
    videos, labels = held_out(ctx, max(64, 8 * classes * per_class))
    chosen = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(classes)])
    real, real_labels = videos[chosen].to(ctx.device), labels[chosen]
    rng = torch.Generator(device=ctx.device).manual_seed(plan.seed)
    with torch.no_grad():
        recon = tokenizer.decode(tokenizer.encode(real), clamp=True)
        generator = ctx.generator("generator")
        sample_labels = torch.arange(classes, device=ctx.device).repeat_interleave(per_class)
        samples = tokenizer.decode(generator.generate(sample_labels, cfg_scale=plan.cfg_scale, generator=rng), clamp=True)
        predictor = ctx.generator("frame-predictor")
        k = plan.predictor.condition_frames
        cond = tokenizer.encode(condition_clip(real, k))
        predicted = tokenizer.decode(predictor.generate(cond, generator=rng), clamp=True)
        sample_pred = detector.predict(samples)
        recon_pred = detector.predict(recon)
    out: dict[str, Any] = {"real": _gif(media / "real.gif", real, per_class),
                           "reconstruction": _gif(media / "reconstruction.gif", recon, per_class),
                           "samples": [], "prediction": []}
    for c in range(classes):
        rows = slice(c * per_class, (c + 1) * per_class)
        out["samples"].append({
            "class": CLASS_NAMES[c],
            "gif": _gif(media / f"samples-{CLASS_NAMES[c]}.gif", samples[rows], per_class),
            "recognised": int((sample_pred[rows] == c).sum()), "count": per_class,
        })
    out["reconstruction_recognised"] = int((recon_pred == real_labels).sum())
    out["reconstruction_count"] = len(real_labels)
    # predictions: each held-out clip (top) above its prediction from the first k frames (bottom)
    for c in range(classes):
        rows = slice(c * per_class, (c + 1) * per_class)
        pair = torch.cat([real[rows], predicted[rows]])
        out["prediction"].append({"class": CLASS_NAMES[c], "gif": _gif(media / f"prediction-{CLASS_NAMES[c]}.gif", pair, per_class)})
    out["condition_frames"] = k
    return out


def stage_report(ctx: Context) -> dict[str, Any]:
    evaluation = ctx.results["evaluate"]
    timings = {name: ctx.seconds[name] for name in STAGES + OPTIONAL_STAGES
               if name in ctx.seconds and name != "report"}
    plan = ctx.plan.to_dict()
    recipes = ("tokenizer", "generator", "predictor")
    metrics = {
        "plan": ctx.plan.name,
        "bars": quality_bars(evaluation, BARS, applies=ctx.plan.name != "quick"),
        "evaluation": evaluation,
        "budget": ctx.results["budget"],
        "detector": ctx.results["detector"],
        "training": {"tokenizer": ctx.results["tokenizer"], "generator": ctx.results["generator"],
                     "frame-predictor": ctx.results["predictor"]},
        "media": ctx.results["media"],
        "llm": ctx.results.get("llm"),  # None unless the llm stage ran (larp demo --llm)
        "timings": timings,
        "total_seconds": round(sum(timings.values()), 1),  # the report itself takes about a second
        "tokens_per_clip": ctx.plan.tokenizer.model.num_tokens,
        "models": {name: str(ctx.models / name) for name in ("tokenizer", "generator", "frame-predictor", "detector")},
        "plan_settings": {k: v for k, v in plan.items() if k not in recipes},
        "recipes": {k: plan[k] for k in recipes},
        "machine": machine(),
        "device": str(ctx.device),
    }
    curves = {name: read_jsonl(ctx.runs / name / "metrics.jsonl") for name in ("tokenizer", "generator", "frame-predictor")}
    return write_report(ctx.out, metrics, curves)


def stage_llm(ctx: Context) -> dict[str, Any]:
    from larp.demo.llm import run_llm_stage  # transformers is optional: imported only when the stage runs

    return run_llm_stage(ctx.out, quick=ctx.plan.name == "quick", device=str(ctx.device), progress=ctx.progress)


_STAGE_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "detector": stage_detector,
    "tokenizer": stage_tokenizer,
    "generator": stage_generator,
    "predictor": stage_predictor,
    "evaluate": stage_evaluate,
    "budget": stage_budget,
    "media": stage_media,
    "llm": stage_llm,
    "report": stage_report,
}


# ------------------------------------------------------------------------------------------ the run
def _load_state(path: Path, plan: DemoPlan) -> dict[str, Any]:
    if not path.is_file():
        return {"plan": plan.name, "stages": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): pass --fresh to start over there") from None
    if state.get("plan") != plan.name:
        raise ValueError(f"{path.parent} holds a {state.get('plan')!r} demo, not a {plan.name!r} one: "
                         f"pass --fresh to start over there, or choose another --out")
    return state


def clear(out: Path) -> None:
    """Remove what an earlier demo wrote in ``out`` (and nothing else)."""
    for name in _OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "larp": __version__, "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def run_demo(out: str | os.PathLike = "larp-demo", *, quick: bool = False, fresh: bool = False,
             device: str | None = None, progress: bool = True, llm: bool = False,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) the demo in ``out``; returns the metrics also written to ``out/metrics.json``.

    Args:
        quick: the mechanics-only plan (about 20 s on a 2-core CPU; its numbers mean nothing).
        llm: also the ``llm`` stage (text-to-video and captioning with a Hugging Face Llama; ``larp[llm]``).
        fresh: forget what an earlier run in ``out`` finished.
        device: "cpu", "cuda", ... (default: CUDA when available).
        echo: where the stage headers and the final summary go.

    Raises:
        larp.files.FolderLockedError: another demo is running in ``out``.
    """
    out = Path(out).resolve()
    # One demo per folder for the whole run: two would train the same runs and append every metrics line
    # twice. The lock dies with the process, so a killed demo never leaves the folder stuck.
    with FolderLock(out, what="demo"):
        if fresh:
            clear(out)
        plan = demo_plan(out, quick=quick)
        state_path = out / "stages.json"
        state = _load_state(state_path, plan)
        ctx = Context(out, plan, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), progress)
        started = time.perf_counter()
        # an llm stage finished by an earlier run stays in the report
        llm = llm or "llm" in state["stages"]
        stages = STAGES[:-1] + OPTIONAL_STAGES + STAGES[-1:] if llm else STAGES
        for number, name in enumerate(stages, 1):
            done = state["stages"].get(name)
            if done is not None and name not in _ALWAYS_RUN:
                ctx.results[name], ctx.seconds[name] = done["results"], done["seconds"]
                echo(f"[{number}/{len(stages)}] {name}: done in an earlier run ({done['seconds']:.0f} s), reused")
                continue
            echo(f"[{number}/{len(stages)}] {name} ...")
            t0 = time.perf_counter()
            ctx.results[name] = _STAGE_FUNCTIONS[name](ctx)
            ctx.seconds[name] = round(time.perf_counter() - t0, 1)
            state["stages"][name] = {"seconds": ctx.seconds[name], "results": ctx.results[name]}
            write_json_atomic(state_path, state)
            echo(f"[{number}/{len(stages)}] {name}: {ctx.seconds[name]:.0f} s")
        metrics = json.loads((out / "metrics.json").read_text())
    echo(summary(metrics, time.perf_counter() - started))
    return metrics


def summary(metrics: dict[str, Any], elapsed: float) -> str:
    """The lines printed at the end of a demo."""
    bars = metrics["bars"]
    lines = [f"demo finished in {elapsed / 60:.1f} min this run ({metrics['total_seconds'] / 60:.1f} min of stages in all)"]
    for name, bar in bars.items():
        verdict = ("met" if bar["met"] else "MISSED") if bar["applies"] else "not applied: a quick run checks the mechanics only"
        lines.append(f"  class accuracy on {name}: {bar['value']:.3f} (chance {bar['chance']:.2f}, bar {bar['bar']:.2f}: {verdict})")
    r = metrics["evaluation"]
    lines.append(f"  reconstruction PSNR {r['reconstruction']['psnr']:.2f} dB, SSIM {r['reconstruction']['ssim']:.3f}; "
                 f"FVD (synthetic detector) reconstruction {r['reconstruction']['fvd']:.3f}, samples {r['generation']['fvd']:.3f}, "
                 f"predictions {r['prediction']['fvd']:.3f}")
    budget = {(row["policy"], row["budget"]): row for row in metrics.get("budget", {}).get("curves", [])}
    shown = [k for (policy, k) in budget if policy == "fixed" and k < metrics["tokens_per_clip"]]
    if shown:
        k = shown[len(shown) // 2]
        lines.append(f"  {k} tokens per clip: PSNR {budget['fixed', k]['psnr']:.2f} dB with every clip at {k}, "
                     f"{budget['adaptive', k]['psnr']:.2f} dB adaptive at the same mean (all budgets: in the report)")
    llm = metrics.get("llm")
    if llm:
        unseen, chance = llm["text_to_video"]["unseen"], llm["chance"]
        lines.append(f"  text to video, unseen caption combinations: motion {unseen['motion']:.3f} (chance "
                     f"{chance['motion']:.2f}), colour {unseen['colour']:.3f} ({chance['colour']:.2f}), shape "
                     f"{unseen['shape']:.3f} ({chance['shape']:.2f})")
    if not metrics["plots"]:
        lines.append(f"  {PLOTS_NEED_MATPLOTLIB}")
    lines.append(f"  report: {metrics['report']}")
    return "\n".join(lines)
