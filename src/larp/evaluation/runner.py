"""Running an evaluation protocol: clips -> tokenizer (and generator) -> metrics and Fréchet distances.

``evaluate(task, protocol, sources, ...)`` scores the clips :func:`~larp.evaluation.protocols.select_clips`
chooses. They are cut into fixed batches, numbered once for all processes; process ``r`` of ``w`` takes
batches ``r, r + w, ...``, and every random draw of batch ``k`` comes from a generator seeded by
``(protocol.seed, k)``. So a run's samples do not depend on the number of processes, and the reduced
statistics equal a single-process run (up to float64 summation order).

Long runs are resumable: each process saves its partial statistics every few batches under ``work_dir``
and skips the batches it has finished when started again with the same settings (and process count).
Real-data feature statistics are cached under ``<cache>/fvd-stats/``, keyed by the data's content, the
protocol's clip settings and the detector's sha256, so a second evaluation on the same data only runs
the model. The result is a JSON record (settings, overrides, versions, detector sha256, counts, values)
and a one-line summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

import larp
from larp.data.video_io import condition_clip, probe_video, read_video
from larp.evaluation.detectors import ClassifierDetector, FeatureDetector, load_detector
from larp.evaluation.fvd import FeatureStats, all_reduce, frechet_distance_from_stats
from larp.evaluation.image_metrics import psnr, ssim
from larp.evaluation.protocols import EvalProtocol, select_clips
from larp.losses.perceptual import cache_dir

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
_SAVE_EVERY = 8  # batches between two saves of the partial statistics


# ------------------------------------------------------------------------------------------ data
class ClipSource:
    """The videos of a manifest, a folder, or the built-in synthetic set, as clips ``(video, start)``."""

    def __init__(self, data: str, protocol: EvalProtocol, *, root: str | None = None, progress: bool = False):
        self.data, self.protocol = data, protocol
        if data == SYNTHETIC:
            from larp.data.synthetic import SyntheticConfig, SyntheticVideos

            count = protocol.num_samples or 512
            # the held-out set: training recipes draw their clips with seed 0 (validation: the first 256 of seed 1)
            self.synthetic = SyntheticVideos(SyntheticConfig(num_videos=count, seed=1, frames=protocol.frames,
                                                             size=protocol.size))
            self.entries, counts = None, [protocol.frames] * count
            self.fingerprint = _digest(json.dumps(self.synthetic.config.__dict__, sort_keys=True, default=str))
        else:
            from larp.data.datasets import load_entries

            self.synthetic = None
            self.entries = load_entries(data, root=root)
            self.fingerprint = _data_fingerprint(data, self.entries)
            counts = _frame_counts(self.entries, self.fingerprint, progress)
        self.items = select_clips(counts, protocol)

    def label(self, item: tuple[int, int]) -> int:
        index = item[0]
        return self.synthetic.label(index) if self.synthetic is not None else self.entries[index].label

    def read(self, item: tuple[int, int]) -> torch.Tensor:
        """(3, frames, size, size) in [0, 1]; short videos repeat their last frame."""
        index, start = item
        if self.synthetic is not None:
            return self.synthetic[index]["video"]
        p = self.protocol
        return read_video(self.entries[index].path, start=start, num_frames=p.frames, size=p.size, pad=True)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _data_fingerprint(data: str, entries) -> str:
    """The manifest's bytes (or the folder's file list with sizes): what identifies the real clips."""
    path = Path(data)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    listing = [(e.path, e.label, os.path.getsize(e.path) if os.path.exists(e.path) else -1) for e in entries]
    return _digest(json.dumps(listing))


def _frame_counts(entries, fingerprint: str, progress: bool) -> list[int]:
    """Frames of every video, counted once per dataset (cached: counting decodes the packets)."""
    path = cache_dir() / "frame-counts" / f"{fingerprint[:32]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    counts = []
    for entry in tqdm(entries, desc="count frames", unit="video", disable=not progress):
        try:
            counts.append(probe_video(entry.path).num_frames)
        except Exception as error:  # a corrupt video has no clip; it is skipped and counted
            logger.warning("skipping %s: %s", entry.path, error)
            counts.append(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts))
    os.replace(tmp, path)
    return counts


# ------------------------------------------------------------------------------------------ models
@dataclass
class Models:
    tokenizer: Any
    generator: Any = None
    detector: FeatureDetector | None = None
    lpips: Any = None


def synthetic_detector(protocol: EvalProtocol, device: torch.device, *, folder: str | os.PathLike | None = None,
                       steps: int = 300, progress: bool = False) -> ClassifierDetector:
    """The synthetic-data detector for the protocol's clip size: trained once on the synthetic training
    set (seed 0, never the held-out clips) for ``steps`` steps and kept in ``folder`` (default: cached under
    ``<cache>/detectors/``)."""
    from dataclasses import replace

    from larp.data.synthetic import SyntheticConfig, SyntheticVideos
    from larp.evaluation.video_classifier import VIDEO_CLASSIFIER_PRESETS, VideoClassifier, train_video_classifier

    folder = Path(folder) if folder is not None else cache_dir() / "detectors" / f"synthetic-{protocol.frames}x{protocol.size}"
    if not (folder / "model.safetensors").is_file():
        logger.info("training the synthetic-data detector (once; kept in %s)", folder)
        config = replace(VIDEO_CLASSIFIER_PRESETS["synthetic-32"], frames=protocol.frames, input_size=protocol.size)
        data = SyntheticVideos(SyntheticConfig(num_videos=8192, seed=0, frames=protocol.frames, size=protocol.size))
        train_video_classifier(data, config=config, steps=steps, progress=progress).save_pretrained(folder)
    return ClassifierDetector(VideoClassifier.from_pretrained(folder, device=device), source=folder)


def resolve_detector(spec: str | None, protocol: EvalProtocol, device: torch.device, progress: bool) -> FeatureDetector | None:
    """The protocol's detector, or the one named by ``spec``; ``"none"`` turns the FVD off."""
    spec = spec or protocol.detector
    if spec == "none":
        return None
    if spec == SYNTHETIC:
        return synthetic_detector(protocol, device, progress=progress)
    return load_detector(spec, device)


# ------------------------------------------------------------------------------------------ per batch
def _precision(name: str, device: torch.device) -> str:
    """fp16 autocast on a CPU is slow and poorly supported: bf16 is used there (and recorded)."""
    return "bf16" if name == "fp16" and device.type == "cpu" else name


def _autocast(name: str, device: torch.device):
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP[name])


@dataclass
class Accumulator:
    """One process's running statistics: feature moments, metric sums and code counts."""

    real: FeatureStats
    fake: FeatureStats
    sums: dict[str, float]
    codes: torch.Tensor
    done: list[int]

    def add(self, name: str, values: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.double().sum())

    def state_dict(self) -> dict[str, Any]:
        return {"real": self.real.state_dict(), "fake": self.fake.state_dict(), "sums": self.sums,
                "codes": self.codes, "done": self.done}


def _resize(video: torch.Tensor, size: int | None) -> torch.Tensor:
    """(b, 3, t, h, w) -> frames resized to size x size (bilinear, antialias; the official FP protocol)."""
    if size is None or video.shape[-1] == size and video.shape[-2] == size:
        return video
    b, c, t, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames.reshape(b, t, c, size, size).transpose(1, 2).clamp(0, 1)


@torch.no_grad()
def _score_batch(task: str, p: EvalProtocol, models: Models, real: torch.Tensor | None, labels: torch.Tensor,
                 rng: torch.Generator, acc: Accumulator, *, need_real_features: bool, score_classes: bool) -> None:
    """Run one batch of the task and add its numbers to ``acc``."""
    tokenizer = models.tokenizer
    device = tokenizer.device
    tok_precision, gen_precision = _precision(p.precision, device), _precision(p.generator_precision, device)
    if real is not None:
        real = real.to(device)
    if task == "reconstruction":
        with _autocast(tok_precision, device):
            ids = tokenizer.encode(real, stochastic=not p.deterministic_tokens, generator=rng)
            fake = tokenizer.decode(ids, num_frames=real.shape[2], clamp=True).float()
        acc.codes += torch.bincount(ids.flatten().cpu(), minlength=acc.codes.numel())
        mse = (fake - real).pow(2).flatten(1).mean(1)
        acc.add("mse", mse)
        acc.add("psnr", psnr(real, fake))
        if min(real.shape[-2:]) >= 11:
            acc.add("ssim", ssim(real, fake))
        if models.lpips is not None:
            acc.add("lpips", models.lpips.forward_video(fake, real, reduction="none").mean(1))
    else:
        generator = models.generator
        if task == "generation":
            cond, cfg = labels.to(device), p.cfg_scale
        else:
            with _autocast(tok_precision, device):
                cond = tokenizer.encode(condition_clip(real, p.condition_frames),
                                        stochastic=p.condition_tokens_stochastic, generator=rng)
            cfg = 1.0
        with _autocast(gen_precision, device):
            ids = generator.generate(cond, cfg_scale=cfg, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                     generator=rng)
            # the sampled sequences' teacher-forced NLL (the official report's NLL_sampled)
            logits = generator(ids, cond).float()
        acc.add("nll_sampled", F.cross_entropy(logits.transpose(1, 2), ids, reduction="none").mean(1))
        if task == "generation":  # the teacher-forced NLL of the real clips' tokens (held-out data: held-out NLL)
            with _autocast(tok_precision, device):
                real_ids = tokenizer.encode(real, stochastic=False)
            with _autocast(gen_precision, device):
                real_logits = generator(real_ids, cond).float()
            acc.add("nll_real", F.cross_entropy(real_logits.transpose(1, 2), real_ids, reduction="none").mean(1))
        with _autocast(tok_precision, device):
            fake = tokenizer.decode(ids, num_frames=p.frames, clamp=True).float()
        if task == "prediction":
            if p.paste_condition_frames:
                fake[:, :, : p.condition_frames] = real[:, :, : p.condition_frames]
            k = p.condition_frames
            acc.add("psnr", psnr(real[:, :, k:], fake[:, :, k:]))  # of the predicted frames only
    acc.add("clips", torch.ones(fake.shape[0]))
    if models.detector is not None:
        fake_scored = _resize(fake, p.fvd_size)
        acc.fake.update(models.detector.features(fake_scored))
        if need_real_features:
            acc.real.update(models.detector.features(_resize(real, p.fvd_size)))
        if score_classes and isinstance(models.detector, ClassifierDetector) and labels.ge(0).all():
            acc.add("class_correct", (models.detector.predict(fake_scored) == labels.cpu()).float())


# ------------------------------------------------------------------------------------------ the run
def _settings_key(task: str, p: EvalProtocol, sources: dict[str, Any], detector: FeatureDetector | None, data_fp: str) -> str:
    record = {"task": task, "protocol": p.to_dict(), "sources": sources, "data": data_fp,
              "detector": detector.sha256 if detector else None}
    return _digest(json.dumps(record, sort_keys=True, default=str))


def _real_stats_path(p: EvalProtocol, detector: FeatureDetector, data_fp: str) -> Path:
    clip_fields = {k: getattr(p, k) for k in ("frames", "size", "clip_selection", "num_samples", "seed", "fvd_size")}
    key = _digest(json.dumps({"data": data_fp, "clips": clip_fields, "detector": detector.sha256}, sort_keys=True))
    return cache_dir() / "fvd-stats" / f"{p.name}-{key[:24]}.safetensors"


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
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Score ``source`` under ``protocol`` for ``task``; returns the result record on the main process.

    Args:
        sources: what was evaluated (tokenizer, generator, data, detector spec), recorded as given.
        work_dir: where the partial statistics of this run live (resume: run again with the same one).
        info: a ``larp.training.distributed.DistInfo`` (None: one process).
        reduce_sum: sums a tensor over processes (None: one process).
        stop_after: stop after this many batches of this process, as if killed; for tests.
    """
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    main = rank == 0
    p, detector = protocol, models.detector
    started = time.perf_counter()
    key = _settings_key(task, p, sources, detector, source.fingerprint)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = work_dir / f"partial-{key[:16]}-rank{rank}-of-{world}.pt"

    real_path = _real_stats_path(p, detector, source.fingerprint) if detector is not None else None
    cached_real = FeatureStats.load(real_path) if real_path is not None and real_path.is_file() else None
    dim = detector.feature_dim if detector is not None else 1
    codebook = models.tokenizer.config.quantizer.codebook_size
    acc = Accumulator(FeatureStats(dim), FeatureStats(dim), {}, torch.zeros(codebook, dtype=torch.float64), [])
    if partial.is_file():
        state = torch.load(partial, map_location="cpu", weights_only=True)
        acc = Accumulator(FeatureStats.from_state_dict(state["real"]), FeatureStats.from_state_dict(state["fake"]),
                          dict(state["sums"]), state["codes"], list(state["done"]))
        logger.info("resuming %s: %d batch(es) of this process already scored", p.name, len(acc.done))

    items = source.items
    batches = [items[i : i + p.batch_size] for i in range(0, len(items), p.batch_size)]
    mine = [k for k in range(len(batches)) if k % world == rank]
    todo = [k for k in mine if k not in set(acc.done)]
    need_real = detector is not None and cached_real is None
    need_video = True  # generation too: the real clips' tokens give the held-out NLL
    device = models.tokenizer.device
    bar = tqdm(total=sum(len(batches[k]) for k in mine), initial=sum(len(batches[k]) for k in acc.done),
               desc=f"evaluate {p.name}", unit="clip", disable=not (progress and main), dynamic_ncols=True)
    for count, k in enumerate(todo, 1):
        batch = batches[k]
        real, kept = None, batch
        if need_video:
            clips, kept = [], []
            for item in batch:
                try:
                    clips.append(source.read(item))
                    kept.append(item)
                except Exception as error:  # a corrupt video: skipped, counted, reported
                    logger.warning("skipping clip %s: %s", item, error)
            acc.sums["skipped"] = acc.sums.get("skipped", 0.0) + len(batch) - len(kept)
            real = torch.stack(clips) if clips else None
        if kept:
            labels = torch.tensor([source.label(item) for item in kept])
            rng = torch.Generator(device).manual_seed(p.seed * 1_000_003 + k)
            # class accuracy only where the labels are the detector's classes (the synthetic data); a folder's
            # labels number its sub-folders alphabetically
            _score_batch(task, p, models, real, labels, rng, acc, need_real_features=need_real,
                         score_classes=source.synthetic is not None)
        acc.done.append(k)
        bar.update(len(batch))
        if count % _SAVE_EVERY == 0 or count == len(todo) or (stop_after is not None and count >= stop_after):
            _save(partial, acc.state_dict())
        if stop_after is not None and count >= stop_after:
            bar.close()
            return None
    bar.close()

    # reduce over processes
    if reduce_sum is not None:
        acc.real, acc.fake = all_reduce(acc.real, reduce_sum), all_reduce(acc.fake, reduce_sum)
        # every process sends every name (a process without batches has none), with a flag: present anywhere
        names = _METRIC_SUMS
        values = [acc.sums.get(n, 0.0) for n in names] + [float(n in acc.sums) for n in names]
        totals = reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()
        acc.sums = {n: totals[i] for i, n in enumerate(names) if totals[len(names) + i] > 0}
        acc.codes = reduce_sum(acc.codes)
    partial.unlink(missing_ok=True)  # complete: a new run starts afresh (the result holds everything)
    if not main:
        return None
    if need_real and real_path is not None:
        real_path.parent.mkdir(parents=True, exist_ok=True)
        acc.real.metadata = {"detector": detector.name, "detector_sha256": detector.sha256, "protocol": p.name}
        acc.real.save(real_path)
        cached_real = acc.real
    record = _record(task, p, overrides, sources, models, acc, cached_real, source, world, time.perf_counter() - started)
    return record


_METRIC_SUMS = ("clips", "skipped", "mse", "psnr", "ssim", "lpips", "nll_sampled", "nll_real", "class_correct")


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _record(task, p: EvalProtocol, overrides, sources, models: Models, acc: Accumulator, real: FeatureStats | None,
            source: ClipSource, world: int, elapsed: float) -> dict[str, Any]:
    clips = acc.sums.get("clips", 0.0)
    if clips == 0:
        raise ValueError(f"no clip could be scored ({int(acc.sums.get('skipped', 0))} skipped): see the warnings above")
    results: dict[str, float] = {}
    for name in ("mse", "psnr", "ssim", "lpips", "nll_sampled", "nll_real"):
        if name in acc.sums:
            results[name] = acc.sums[name] / clips
    if "class_correct" in acc.sums:
        results["class_accuracy"] = acc.sums["class_correct"] / clips
        results["chance_accuracy"] = 1.0 / models.detector.num_classes
    if task == "reconstruction":
        codes = acc.codes
        probs = codes / codes.sum()
        results["codebook_usage"] = float((codes > 0).double().mean())
        results["codebook_perplexity"] = math.exp(-float((probs[probs > 0] * probs[probs > 0].log()).sum()))
    if models.detector is not None:
        results["fvd"] = frechet_distance_from_stats(real, acc.fake)
    device = models.tokenizer.device
    return {
        "task": task,
        "protocol": p.to_dict(),
        "overrides": overrides,
        "comparable_to_reference": not overrides,
        "results": results,
        "counts": {"clips": int(clips), "skipped": int(acc.sums.get("skipped", 0)), "selected": len(source.items),
                   "real_feature_clips": int(real.count) if real is not None else 0},
        "detector": {"name": models.detector.name, "sha256": models.detector.sha256} if models.detector else None,
        "sources": sources,
        "effective_precision": {"tokenizer": _precision(p.precision, device),
                                "generator": _precision(p.generator_precision, device)},
        "versions": {"larp": larp.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device),
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
    where = f", detector {detector['name']} sha256 {detector['sha256'][:12]}" if detector else ", no FVD"
    return f"{record['protocol']['name']}: " + "  ".join(parts) + f"  ({record['counts']['clips']} clips{where})"
