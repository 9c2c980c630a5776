"""Running an evaluation protocol: clips -> tokenizer (and generator) -> metrics and Fréchet distances.

``evaluate(task, protocol, models, source, ...)`` scores the clips a :class:`ClipSource` selects. The parts,
one job each:

* :mod:`larp.evaluation.clips`: the clips, cut into fixed batches numbered once for all processes; process
  ``r`` of ``w`` takes batches ``r, r + w, ...`` (:func:`~larp.evaluation.protocols.shard`), and every random
  draw of batch ``k`` comes from a generator seeded by ``derive_seed(protocol.seed, k)``. So a run's samples do
  not depend on the number of processes, and the reduced statistics equal a single-process run (up to
  float64 summation order).
* :mod:`larp.evaluation.tasks`: what one batch of reconstruction, generation or prediction computes.
* :mod:`larp.evaluation.accumulate`: the running sums, saved atomically every few batches under
  ``work_dir`` so a stopped run resumes (same settings and process count), and reduced over processes.
* this module: the detector, the precisions, the loop over this process's batches, and the result record.

Real-data feature statistics are cached under ``<cache>/fvd-stats/``, keyed by the data's content, the
protocol's clip settings and the detector's sha256, so a second evaluation on the same data only runs the
model; a cache file that cannot be read is ignored with a warning and recomputed. The result is a JSON
record (settings, overrides, versions, resolved precisions, the detector and where it came from, counts,
values) and a one-line summary.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from larp.evaluation.accumulate import (
    Accumulator,
    load_partial,
    load_real_stats,
    save_partial,
    save_real_stats,
)
from larp.evaluation.clips import SYNTHETIC, BatchPlan, ClipSource, digest, plan_batches, read_batch
from larp.evaluation.detectors import ClassifierDetector, FeatureDetector, load_detector
from larp.evaluation.fvd import FeatureStats, frechet_distance_from_stats
from larp.evaluation.image_metrics import code_statistics
from larp.evaluation.protocols import EvalProtocol
from larp.evaluation.tasks import TASKS, Models, Precisions, score_batch
from larp.precision import resolve_precision
from larp.seeding import derive_seed
from larp.version import __version__
from larp.weights import cache_dir

__all__ = [
    "ClipSource",
    "Models",
    "SYNTHETIC",
    "evaluate",
    "resolve_detector",
    "resolve_precisions",
    "summary_line",
    "synthetic_detector",
]

logger = logging.getLogger(__name__)

SAVE_EVERY = 8  # batches between two saves of the partial statistics


# ------------------------------------------------------------------------------------------ detector
def synthetic_detector(protocol: EvalProtocol, device: torch.device, *, folder: str | os.PathLike | None = None,
                       steps: int = 300, progress: bool = False) -> ClassifierDetector:
    """The synthetic-data detector for the protocol's clip size, kept in ``folder`` (default: cached under
    ``<cache>/detectors/``).

    When the folder holds none, one is trained now on the synthetic training set (seed 0, never the held-out
    clips) for ``steps`` steps and saved there; this is logged (INFO, with the folder) and recorded by the
    detector's ``provenance`` (``trained_now``, ``path``), which every result record made with it includes.
    """
    from dataclasses import replace

    from larp.data.synthetic import SyntheticConfig, SyntheticVideos
    from larp.evaluation.video_classifier import VIDEO_CLASSIFIER_PRESETS, VideoClassifier, train_video_classifier

    if folder is None:
        folder = cache_dir() / "detectors" / f"synthetic-{protocol.frames}x{protocol.size}"
    folder = Path(folder)
    trained_now = not (folder / "model.safetensors").is_file()
    if trained_now:
        logger.info("no synthetic-data detector in %s: training one now (%d steps) and keeping it there", folder, steps)
        config = replace(VIDEO_CLASSIFIER_PRESETS["synthetic-32"], frames=protocol.frames, input_size=protocol.size)
        data = SyntheticVideos(SyntheticConfig(num_videos=8192, seed=0, frames=protocol.frames, size=protocol.size))
        train_video_classifier(data, config=config, steps=steps, progress=progress).save_pretrained(folder)
    else:
        logger.info("synthetic-data detector from %s", folder)
    detector = ClassifierDetector(VideoClassifier.from_pretrained(folder, device=device), source=folder)
    detector.kind = "synthetic-classifier"
    detector.provenance = {"trained_now": trained_now, "path": str(folder)}
    return detector


def resolve_detector(spec: str | None, protocol: EvalProtocol, device: torch.device, progress: bool, *,
                     trust: bool = False) -> FeatureDetector | None:
    """The protocol's detector, or the one named by ``spec``; ``"none"`` turns the FVD off.

    Args:
        trust: load a TorchScript file that is not the pinned I3D (``--trust-detector``; recorded).
    """
    spec = spec or protocol.detector
    if spec == "none":
        return None
    if spec == SYNTHETIC:
        return synthetic_detector(protocol, device, progress=progress)
    return load_detector(spec, device, trust=trust)


# ------------------------------------------------------------------------------------------ settings
def resolve_precisions(task: str, p: EvalProtocol, device: torch.device | str) -> Precisions:
    """The protocol's precisions as :func:`larp.precision.resolve_precision` resolves them on ``device``
    (the generator's only for the tasks that run one: None for reconstruction).

    Raises:
        ValueError: a precision the device cannot run (fp16 off CUDA), saying which override fixes it.
    """

    def one(name: str) -> str:
        value = getattr(p, name)
        try:
            return resolve_precision(value, device)
        except ValueError as error:
            raise ValueError(f"protocol {p.name} asks for {name}={value}, which cannot run here ({error}); "
                             f"override it with --set {name}=bf16 (or fp32, or auto): the override is "
                             "recorded with the result") from None

    return Precisions(tokenizer=one("precision"),
                      generator=one("generator_precision") if task != "reconstruction" else None)


def _settings_key(task: str, p: EvalProtocol, sources: dict[str, Any], detector: FeatureDetector | None,
                  data_fingerprint: str) -> str:
    record = {"task": task, "protocol": p.to_dict(), "sources": sources, "data": data_fingerprint,
              "detector": detector.sha256 if detector else None}
    return digest(json.dumps(record, sort_keys=True, default=str))


def _real_stats_path(p: EvalProtocol, detector: FeatureDetector, data_fingerprint: str) -> Path:
    clip_fields = {k: getattr(p, k) for k in ("frames", "size", "clip_selection", "num_samples", "seed", "fvd_size")}
    key = digest(json.dumps({"data": data_fingerprint, "clips": clip_fields, "detector": detector.sha256},
                            sort_keys=True))
    return cache_dir() / "fvd-stats" / f"{p.name}-{key[:24]}.safetensors"


# ------------------------------------------------------------------------------------------ the run
def _score_batches(task: str, p: EvalProtocol, models: Models, source: ClipSource, plan: BatchPlan,
                   acc: Accumulator, precision: Precisions, partial: Path, *, need_real: bool, progress: bool,
                   stop_after: int | None) -> bool:
    """Score this process's batches not yet in ``acc``, saving ``acc`` to ``partial`` every few batches.

    Returns:
        False when stopped by ``stop_after`` (as if killed), True when every batch is done.
    """
    device = models.tokenizer.device
    done = set(acc.done)
    todo = [k for k in plan.mine if k not in done]
    with tqdm(total=plan.clips(plan.mine), initial=plan.clips(acc.done), desc=f"evaluate {p.name}", unit="clip",
              disable=not progress, dynamic_ncols=True) as bar:
        for count, k in enumerate(todo, 1):
            batch = plan.batches[k]
            real, kept = read_batch(source, batch)
            acc.add("skipped", len(batch) - len(kept))
            if kept:
                labels = torch.tensor([source.label(item) for item in kept])
                rng = torch.Generator(device).manual_seed(derive_seed(p.seed, k))
                score_batch(task, p, models, real, labels, rng, acc, precision, need_real_features=need_real,
                            score_classes=source.labels_are_detector_classes)
            acc.done.append(k)
            bar.update(len(batch))
            stop = stop_after is not None and count >= stop_after
            if count % SAVE_EVERY == 0 or count == len(todo) or stop:
                save_partial(partial, acc)
            if stop:
                return False
    return True


def evaluate(
    task: str,
    protocol: EvalProtocol,
    models: Models,
    source: ClipSource,
    *,
    overrides: dict[str, Any],
    sources: dict[str, Any],
    work_dir: str | os.PathLike,
    info=None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Score ``source`` under ``protocol`` for ``task``; returns the result record on the main process.

    Args:
        task: ``"reconstruction"``, ``"generation"`` or ``"prediction"`` (must be the protocol's).
        overrides: the protocol fields changed from the paper's (``resolve_protocol``), recorded.
        sources: what was evaluated (tokenizer, generator, data, detector spec), recorded as given.
        work_dir: where the partial statistics of this run live (resume: run again with the same one).
        info: a ``larp.training.distributed.DistInfo`` (None: one process); with several processes the
            statistics are summed over them.
        stop_after: stop after this many batches of this process, as if killed; for tests.

    Raises:
        ValueError: a task that is not the protocol's, a precision the device cannot run, or no clip scored.
    """
    if task != protocol.task:
        raise ValueError(f"protocol {protocol.name} is a {protocol.task} protocol, not {task} (tasks: {list(TASKS)})")
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    p, detector = protocol, models.detector
    precision = resolve_precisions(task, p, models.tokenizer.device)
    started = time.perf_counter()

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    key = _settings_key(task, p, sources, detector, source.fingerprint)
    partial = work_dir / f"partial-{key[:16]}-rank{rank}-of-{world}.pt"
    real_path = _real_stats_path(p, detector, source.fingerprint) if detector is not None else None
    cached_real = load_real_stats(real_path)
    need_real = detector is not None and cached_real is None
    acc = load_partial(partial)
    if acc is not None:
        logger.info("resuming %s: %d batch(es) of this process already scored", p.name, len(acc.done))
    else:
        codebook = models.tokenizer.config.quantizer.codebook_size
        acc = Accumulator.empty(detector.feature_dim if detector is not None else 1, codebook)

    plan = plan_batches(source.items, p.batch_size, rank, world)
    if not _score_batches(task, p, models, source, plan, acc, precision, partial, need_real=need_real,
                          progress=progress and rank == 0, stop_after=stop_after):
        return None
    if world > 1:
        acc = acc.reduced(_sum_over_processes(info))
    partial.unlink(missing_ok=True)  # complete: a new run starts afresh (the result holds everything)
    if rank != 0:
        return None
    if need_real:
        save_real_stats(real_path, acc.real, {"detector": detector.name, "detector_sha256": detector.sha256,
                                              "protocol": p.name})
        cached_real = acc.real
    return _record(task, p, overrides, sources, models, acc, cached_real, source, world, precision,
                   time.perf_counter() - started)


def _sum_over_processes(info):
    from larp.training import distributed as dist

    # on the process's device: NCCL reduces CUDA tensors only
    return lambda tensor: dist.all_reduce_sum(tensor.to(info.device), info).cpu()


# ------------------------------------------------------------------------------------------ the record
def _results(task: str, models: Models, acc: Accumulator, real: FeatureStats | None) -> dict[str, float]:
    clips = acc.sums.get("clips", 0.0)
    if clips == 0:
        raise ValueError(f"no clip could be scored ({int(acc.sums.get('skipped', 0))} skipped): see the warnings above")
    results = {name: acc.sums[name] / clips for name in ("mse", "psnr", "ssim", "lpips", "nll_sampled", "nll_real")
               if name in acc.sums}
    if "class_correct" in acc.sums:
        results["class_accuracy"] = acc.sums["class_correct"] / clips
        results["chance_accuracy"] = 1.0 / models.detector.num_classes
    if task == "reconstruction":
        usage, perplexity = code_statistics(acc.codes)
        results["codebook_usage"], results["codebook_perplexity"] = float(usage), float(perplexity)
    if models.detector is not None:
        results["fvd"] = frechet_distance_from_stats(real, acc.fake)
    return results


def _record(task: str, p: EvalProtocol, overrides: dict[str, Any], sources: dict[str, Any], models: Models,
            acc: Accumulator, real: FeatureStats | None, source: ClipSource, world: int, precision: Precisions,
            elapsed: float) -> dict[str, Any]:
    return {
        "task": task,
        "protocol": p.to_dict(),
        "overrides": overrides,
        "comparable_to_reference": not overrides,
        "results": _results(task, models, acc, real),
        "counts": {"clips": int(acc.sums["clips"]), "skipped": int(acc.sums.get("skipped", 0)),
                   "selected": len(source.items), "real_feature_clips": int(real.count) if real is not None else 0},
        "detector": models.detector.describe() if models.detector is not None else None,
        "sources": sources,
        "effective_precision": {"tokenizer": precision.tokenizer, "generator": precision.generator},
        "versions": {"larp": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(models.tokenizer.device),
        "processes": world,
        "elapsed_s": round(elapsed, 2),
    }


def summary_line(record: dict[str, Any]) -> str:
    """One line: protocol, the values, counts and the detector."""
    names = {"fvd": "FVD", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "class_accuracy": "class acc",
             "nll_real": "NLL(real)", "nll_sampled": "NLL(sampled)", "codebook_usage": "codebook use"}
    r = record["results"]
    parts = [f"{label} {r[key]:.4g}" for key, label in names.items() if key in r]
    detector = record["detector"]
    if detector:
        where = f", detector {detector['name']} sha256 {detector['sha256'][:12]}"
        if detector.get("detector_trusted_by_user"):
            where += " (not the pinned I3D: trusted by the user)"
        if detector.get("trained_now"):
            where += " (trained by this run)"
    else:
        where = ", no FVD"
    return f"{record['protocol']['name']}: " + "  ".join(parts) + f"  ({record['counts']['clips']} clips{where})"
