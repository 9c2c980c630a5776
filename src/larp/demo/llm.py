"""The demo's language-model stage (``larp demo --llm``): text-to-video and captioning with a stock HF LM.

On the captioned synthetic videos (:meth:`larp.data.synthetic.SyntheticVideos.attributes`), with the demo's
trained tokenizer and detector (``OUT/models/``), it

1. tokenizes training clips into a token dataset (``OUT/llm/tokens``), leaving out 8 of the 48
   (colour, shape, motion) combinations;
2. builds a word-level text tokenizer on the caption words (``tokenizers``), extends it with the video tokens
   (:class:`larp.llm.VideoVocabulary`) and writes both interleaved datasets (``OUT/llm/data/text-video`` with
   the loss on the video, ``OUT/llm/data/video-text`` with the loss on the caption);
3. trains one small ``LlamaForCausalLM`` built from a config (no downloaded weights) on both with
   ``transformers.Trainer``;
4. generates a video for each held-out caption (new clips of seen combinations and of the unseen ones;
   generation constrained to well-formed video ids by :meth:`VideoVocabulary.allowed_next`), decodes it with
   the LARP tokenizer and scores it: the detector's motion class, the colour (hue of the object's pixels) and
   the shape (how much of its bounding box it fills) against the caption;
5. captions held-out clips (greedy) and scores the caption's attributes by exact match.

It writes ``OUT/llm/results.json``, ``OUT/llm/samples.png`` (with matplotlib) and ``OUT/llm/report.html`` (a
fragment: the numbers, their chance levels and the samples), and the model in ``OUT/llm/model``.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from larp.data.synthetic import (CAPTION_TEMPLATES, CLASS_NAMES, COLOUR_NAMES, MOTION_PHRASES, SHAPES,
                                 SyntheticConfig, SyntheticVideos, caption, parse_caption)
from larp.data.token_dataset import SPECIAL_TOKENS, shard_name, write_dataset_info, write_shard
from larp.evaluation.detectors import ClassifierDetector
from larp.evaluation.video_classifier import VideoClassifier
from larp.files import write_json_atomic, write_text_atomic
from larp.llm.data import write_interleaved
from larp.llm.vocabulary import VideoVocabulary, prefix_allowed_tokens, resize_embeddings
from larp.models.tokenizer import LARPTokenizer
from larp.seeding import derive_seed
from larp.video_tokens import decode_windows, encode_windows

__all__ = ["LLMPlan", "held_out", "measure_objects", "run_llm_stage"]

# Fill of the bounding box: a disc fills pi/4 = 0.785 of it, a square all of it; the threshold is between.
_SQUARE_FILL = 0.89
# A pixel belongs to the object when its brightest channel exceeds this (the background is black).
_OBJECT_LEVEL = 0.3
# derive_seed key of this stage's streams (then 1 train clips, 2 eval clips, 3 data order, 4 sampling).
_KEY = 14


@dataclass(frozen=True)
class LLMPlan:
    """Sizes of the stage. The default takes about 6 minutes on a 2-core CPU shared with other jobs (5 of
    them training)."""

    train_videos: int = 4096
    eval_videos: int = 48  # per group (seen combinations, unseen combinations)
    steps: int = 1200
    batch_size: int = 16
    learning_rate: float = 2e-3
    hidden_size: int = 128
    layers: int = 3
    heads: int = 4
    # torch threads while the stage runs; None: 1 on a machine whose load exceeds its cores (OpenMP threads
    # spinning on busy cores made a step 10x slower on a loaded 2-core machine), else torch's default
    threads: int | None = None
    temperature: float = 0.7
    samples_shown: int = 12
    seed: int = 0


QUICK_PLAN = LLMPlan(train_videos=96, eval_videos=8, steps=4, batch_size=8, hidden_size=32, layers=1, heads=2,
                     samples_shown=4)


def held_out(colour: str, shape: str, motion: str) -> bool:
    """Whether a (colour, shape, motion) combination is left out of the training data: for every (shape,
    motion) pair one colour, so each colour, shape and motion still appears in training with others."""
    c, s, m = COLOUR_NAMES.index(colour), SHAPES.index(shape), CLASS_NAMES.index(motion)
    return (c + 2 * s + 3 * m) % len(COLOUR_NAMES) == 0


def _hue(rgb: torch.Tensor) -> torch.Tensor:
    """(b, 3) RGB -> (b,) hue in [0, 1)."""
    r, g, b = rgb.unbind(-1)
    high, low = rgb.max(-1).values, rgb.min(-1).values
    span = (high - low).clamp_min(1e-6)
    hue = torch.where(high == r, ((g - b) / span) % 6, torch.where(high == g, (b - r) / span + 2, (r - g) / span + 4))
    return (hue / 6) % 1.0


def measure_objects(video: torch.Tensor) -> list[dict[str, Any]]:
    """Colour and shape of the one object in each clip over a dark background.

    Args:
        video: (b, 3, t, s, s) in [0, 1].

    Returns:
        Per clip ``{"colour": a COLOUR_NAMES entry (the hue of the mean colour of the object's pixels in the
        first, middle and last frames), "shape": "square" or "circle" (the object fills more or less than
        0.89 of its bounding box), "fill": that fraction}``; ``None`` values when no pixel is bright enough.
    """
    frames = video.shape[2]
    picks = sorted({0, frames // 2, frames - 1})
    found = []
    for clip in video.float():
        colours, fills = [], []
        for t in picks:
            image = clip[:, t]  # (3, s, s)
            peak = image.max(dim=0).values
            mask = peak > _OBJECT_LEVEL
            if not mask.any():
                continue
            colours.append((image * mask).sum((1, 2)) / mask.sum())
            rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            coverage = (peak / peak[mask].mean()).clamp(0, 1)
            fills.append(float(coverage.sum() / box))
        if not colours:
            found.append({"colour": None, "shape": None, "fill": None, "rgb": None})
            continue
        rgb = torch.stack(colours).mean(0)
        hue = float(_hue(rgb[None])[0])
        fill = float(np.mean(fills))
        found.append({"colour": COLOUR_NAMES[int(math.floor(hue * 6 + 0.5)) % 6],
                      "shape": "square" if fill > _SQUARE_FILL else "circle", "fill": fill,
                      "rgb": (rgb / rgb.max().clamp_min(1e-6)).tolist()})
    return found


class AttributeProbe:
    """Colour and shape read from decoded videos the way the tokenizer renders them: nearest class centroid
    of the object's (brightness-normalised) mean colour, and a bounding-box-fill threshold halfway between the
    two shapes' means, both fitted on LARP reconstructions of training clips. (A small tokenizer shifts hues
    and blurs edges: the fixed hue bins and fill threshold of :func:`measure_objects` suit the real clips.)"""

    def __init__(self, measured: list[dict[str, Any]], clips: list[dict[str, Any]]):
        pairs = [(m, c) for m, c in zip(measured, clips) if m["rgb"] is not None]
        self.centroids = {}
        for name in COLOUR_NAMES:
            rows = [m["rgb"] for m, c in pairs if c["colour"] == name]
            if rows:
                self.centroids[name] = torch.tensor(rows).mean(0)
        means = {s: np.mean([m["fill"] for m, c in pairs if c["shape"] == s] or [np.nan]) for s in SHAPES}
        known = [value for value in means.values() if not np.isnan(value)]
        # no measured object of either shape (a tiny run): the fixed threshold of the real clips
        self.threshold = float(np.mean(known)) if known else _SQUARE_FILL
        self.square_above = bool(means["square"] >= means["circle"]) if len(known) == 2 else True

    def predict(self, measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = []
        for m in measured:
            if m.get("rgb") is None:
                found.append({"colour": None, "shape": None})
                continue
            rgb = torch.tensor(m["rgb"])
            colour = min(self.centroids, key=lambda n: float((self.centroids[n] - rgb).square().sum()))
            above = m["fill"] > self.threshold
            found.append({"colour": colour, "shape": "square" if above == self.square_above else "circle"})
        return found


def _clips(data: SyntheticVideos, count: int, unseen: bool, start: int = 0) -> list[dict[str, Any]]:
    """The first ``count`` clips of ``data`` (from ``start``) whose combination is (not) held out."""
    chosen: list[dict[str, Any]] = []
    index = start
    while len(chosen) < count:
        if index >= len(data):
            raise ValueError(f"fewer than {count} clips of {'unseen' if unseen else 'seen'} combinations in "
                             f"{len(data)} synthetic videos")
        batch = data.attributes(range(index, min(index + 512, len(data))))
        chosen += [a for a in batch if held_out(a["colour"], a["shape"], a["motion"]) == unseen]
        index += 512
    return chosen[:count]


def _encode(tokenizer: LARPTokenizer, data: SyntheticVideos, indices: list[int], batch: int = 64) -> np.ndarray:
    parts = [encode_windows(tokenizer, data.get_batch(indices[i:i + batch])["video"])
             for i in range(0, len(indices), batch)]
    return torch.cat(parts).numpy()


def _text_tokenizer(num_classes: int, shapes: tuple[str, ...]) -> Any:
    """A word-level tokenizer over every caption word (built locally with ``tokenizers``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [caption({"colour": c, "shape": s, "motion": m}, p) for c in COLOUR_NAMES for s in shapes
             for m in CLASS_NAMES[:num_classes] for p in range(len(CAPTION_TEMPLATES))]
    model = Tokenizer(models.WordLevel(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def _write_tokens(folder: Path, clips: list[dict[str, Any]], ids: np.ndarray, tokenizer: LARPTokenizer,
                  seed: int) -> dict[str, str]:
    """The training clips as a token dataset; returns {video: caption}."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"video": f"synthetic-{seed}-{clip['index']}", "label": clip["label"], "tokens": row,
             "window_lengths": [len(row)], "num_windows": 1} for clip, row in zip(clips, ids)]
    codebook = int(tokenizer.config.quantizer.codebook_size)
    write_shard(folder / shard_name(0), rows, codebook)
    write_dataset_info(folder, {"tokenizer": getattr(tokenizer, "source", None), "codebook_size": codebook,
                                "tokens_per_window": int(tokenizer.config.num_tokens),
                                "frames_per_window": int(tokenizer.config.frame_num),
                                "size": int(tokenizer.config.input_size), "num_videos": len(rows),
                                "num_windows": len(rows), "num_failed": 0, "shards": [shard_name(0)],
                                "special_tokens": SPECIAL_TOKENS, "source": "synthetic (captioned)",
                                "complete": True})
    return {row["video"]: clip["caption"] for row, clip in zip(rows, clips)}


def _train(model: Any, text_tokenizer: Any, folders: list[Path], out: Path, plan: LLMPlan, progress: bool,
           device: torch.device) -> dict[str, Any]:
    from datasets import concatenate_datasets, load_dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    parts = [load_dataset("parquet", data_files=sorted(str(p) for p in f.glob("shard-*.parquet")), split="train")
             for f in folders]
    train = concatenate_datasets(parts).select_columns(["input_ids", "attention_mask", "labels"])
    train = train.shuffle(seed=derive_seed(plan.seed, _KEY, 3))
    args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=plan.steps, per_device_train_batch_size=plan.batch_size,
        learning_rate=plan.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, plan.steps // 20),
        weight_decay=0.01, logging_steps=max(1, plan.steps // 10), save_strategy="no", report_to=[],
        use_cpu=device.type == "cpu", seed=plan.seed, disable_tqdm=not progress, dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda")
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(text_tokenizer, padding=True))
    if not progress:  # without the progress bar, Trainer prints every log as a dict
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"seconds": round(seconds, 1), "steps": plan.steps, "sequences": len(train),
            "final_loss": round(float(result.training_loss if not losses else losses[-1]), 4),
            "loss_curve": [round(float(x), 4) for x in losses]}


def _generate_videos(model: Any, text_tokenizer: Any, vocab: VideoVocabulary, captions: list[str],
                     plan: LLMPlan, batch: int = 32) -> list[list[list[int]]]:
    text_tokenizer.padding_side = "left"
    allowed = prefix_allowed_tokens(vocab)
    videos = []
    torch.manual_seed(derive_seed(plan.seed, _KEY, 4))
    for lo in range(0, len(captions), batch):
        prompts = [[text_tokenizer.bos_token_id] + text_tokenizer(c, add_special_tokens=False)["input_ids"]
                   + [vocab.video_start] for c in captions[lo:lo + batch]]
        encoded = text_tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=vocab.tokens_per_window + 2, do_sample=True,
                                 temperature=plan.temperature, top_k=0, top_p=1.0,
                                 prefix_allowed_tokens_fn=allowed, pad_token_id=text_tokenizer.pad_token_id)
        for row in out.cpu().tolist():
            videos.append(vocab.decode(row, complete=False))
    return videos


def _generate_captions(model: Any, text_tokenizer: Any, vocab: VideoVocabulary, ids: np.ndarray,
                       batch: int = 32) -> list[str]:
    text_tokenizer.padding_side = "left"
    allowed = prefix_allowed_tokens(vocab, text_ids=range(4, vocab.base), eos_id=text_tokenizer.eos_token_id)
    texts = []
    for lo in range(0, len(ids), batch):
        prompts = [[text_tokenizer.bos_token_id] + vocab.encode([row]) for row in ids[lo:lo + batch]]
        encoded = text_tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=16, do_sample=False,
                                 prefix_allowed_tokens_fn=allowed, pad_token_id=text_tokenizer.pad_token_id)
        for row in out[:, encoded["input_ids"].shape[1]:].cpu().tolist():
            texts.append(text_tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


def _accuracies(clips: list[dict[str, Any]], motion: list[int | None], measured: list[dict[str, Any]]) -> dict:
    n = len(clips)
    return {"motion": sum(m == c["label"] for m, c in zip(motion, clips)) / n,
            "colour": sum(m["colour"] == c["colour"] for m, c in zip(measured, clips)) / n,
            "shape": sum(m["shape"] == c["shape"] for m, c in zip(measured, clips)) / n, "clips": n}


def _score_videos(video: torch.Tensor, clips: list[dict[str, Any]], detector: ClassifierDetector,
                  probe: AttributeProbe | None) -> dict:
    """Motion by the detector; colour and shape by ``probe`` (decoded videos) or fixed measurements (None)."""
    motion = detector.predict(video).tolist()
    measured = measure_objects(video)
    return _accuracies(clips, motion, measured if probe is None else probe.predict(measured))


def _samples_png(path: Path, rows: list[tuple[str, torch.Tensor]]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install \"larp[plots]\"): no picture"
    frames = rows[0][1].shape[1]
    picks = [0, frames // 3, 2 * frames // 3, frames - 1]
    figure, axes = plt.subplots(len(rows), len(picks), figsize=(len(picks) * 1.3, len(rows) * 1.45))
    axes = np.atleast_2d(axes)
    for r, (title, clip) in enumerate(rows):
        for k, t in enumerate(picks):
            axes[r, k].imshow(clip[:, t].permute(1, 2, 0).clamp(0, 1).numpy())
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
        axes[r, 0].set_title(title, fontsize=7, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def _report_html(results: dict[str, Any], picture: str | None) -> str:
    t2v, cap = results["text_to_video"], results["captioning"]
    chance = results["chance"]

    def row(name: str, scores: dict, keys: tuple[str, ...]) -> str:
        cells = "".join(f"<td>{scores[k]:.3f}</td>" for k in keys)
        return f"<tr><td>{html.escape(name)}</td>{cells}<td>{scores['clips']}</td></tr>"

    keys = ("motion", "colour", "shape")
    head = "<tr><th></th><th>motion</th><th>colour</th><th>shape</th><th>clips</th></tr>"
    lines = [
        "<section id=\"llm\"><h2>LARP tokens in a language model</h2>",
        f"<p>A {results['model']['parameters'] / 1e6:.2f} M-parameter LlamaForCausalLM (built from a config, "
        f"word-level text tokenizer) trained with transformers.Trainer for {results['training']['steps']} steps "
        f"({results['training']['seconds']:.0f} s) on caption&rarr;video and video&rarr;caption sequences of the "
        f"demo tokenizer's ids; {len(results['held_out_combinations'])} of the 48 colour/shape/motion "
        f"combinations never seen in training.</p>",
        "<h3>Text to video: attributes of the generated videos that match the caption</h3>",
        f"<table>{head}", row("seen combinations, new clips", t2v["seen"], keys),
        row("unseen combinations", t2v["unseen"], keys),
        f"<tr><td>chance</td><td>{chance['motion']:.3f}</td><td>{chance['colour']:.3f}</td>"
        f"<td>{chance['shape']:.3f}</td><td></td></tr>",
        row("reference: the real clips", results["reference"]["real"], keys),
        row("reference: their LARP reconstructions", results["reference"]["reconstructed"], keys), "</table>",
        "<p>Motion: the demo's detector. Colour and shape of generated videos and reconstructions: a probe fitted "
        "on LARP reconstructions of training clips (nearest colour centroid, box-fill threshold); of the real "
        "clips: hue bins and box fill. The reconstructions row is what the tokenizer lets any generator reach.</p>",
        "<h3>Captioning: generated captions whose attributes match the clip</h3>",
        "<table><tr><th></th><th>motion</th><th>colour</th><th>shape</th><th>all three</th><th>clips</th></tr>",
    ]
    for name in ("seen", "unseen"):
        s = cap[name]
        lines.append(f"<tr><td>{name} combinations</td><td>{s['motion']:.3f}</td><td>{s['colour']:.3f}</td>"
                     f"<td>{s['shape']:.3f}</td><td>{s['all']:.3f}</td><td>{s['clips']}</td></tr>")
    lines.append(f"<tr><td>chance</td><td>{chance['motion']:.3f}</td><td>{chance['colour']:.3f}</td>"
                 f"<td>{chance['shape']:.3f}</td><td>{chance['all']:.4f}</td><td></td></tr></table>")
    if picture:
        lines.append("<p>Generated from held-out captions (frames 0, T/3, 2T/3, T-1; * marks an unseen "
                     "combination):</p><img src=\"llm/samples.png\" alt=\"text-to-video samples\">")
    elif results.get("picture_note"):
        lines.append(f"<p>{html.escape(results['picture_note'])}</p>")
    examples = "".join(f"<li>{html.escape(e['clip'])} &rarr; <i>{html.escape(e['generated'])}</i></li>"
                       for e in cap["examples"])
    lines += [f"<p>Captions generated for held-out clips:</p><ul>{examples}</ul>", "</section>"]
    return "\n".join(lines) + "\n"


def run_llm_stage(demo: str | Path, *, quick: bool = False, plan: LLMPlan | None = None,
                  device: str | None = None, progress: bool = True, reuse: bool = True,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the stage on the finished demo folder ``demo`` (its ``models/tokenizer`` and ``models/detector``);
    returns the results also written to ``demo/llm/results.json``. With ``reuse``, results of an earlier run
    with the same plan are returned as they are. Needs ``transformers``, ``tokenizers`` and ``datasets``
    (``pip install "larp[llm]"``)."""
    try:
        import datasets  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"the demo's LLM stage needs the llm extra: pip install \"larp[llm]\" ({error})") from None
    demo = Path(demo)
    plan = plan or (QUICK_PLAN if quick else LLMPlan())
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = demo / "models"
    for name in ("tokenizer", "detector"):
        if not (models / name).is_dir():
            raise FileNotFoundError(f"{models / name} not found: run `larp demo -o {demo}` first")
    out = demo / "llm"
    done = out / "results.json"
    if reuse and done.is_file():
        try:
            earlier = json.loads(done.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            earlier = None
        if isinstance(earlier, dict) and earlier.get("plan") == asdict(plan) and (out / "report.html").is_file():
            echo(f"  llm: done in an earlier run ({earlier.get('seconds', 0):.0f} s), reused")
            return earlier
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1)
    torch.set_num_threads(plan.threads or (1 if busy else threads))
    try:
        return _run(demo, out, models, plan, torch_device, progress, echo)
    finally:
        torch.set_num_threads(threads)


def _run(demo: Path, out: Path, models: Path, plan: LLMPlan, torch_device: torch.device, progress: bool,
         echo: Callable[[str], None]) -> dict[str, Any]:
    import transformers

    started = time.perf_counter()
    tokenizer = LARPTokenizer.from_pretrained(models / "tokenizer", device=torch_device).eval()
    detector = ClassifierDetector(VideoClassifier.from_pretrained(models / "detector", device=torch_device),
                                  source=models / "detector")
    config = tokenizer.config
    synthetic = SyntheticConfig(num_videos=1 << 20, frames=config.frame_num, size=config.input_size,
                                num_classes=detector.num_classes)
    train_data = SyntheticVideos(replace(synthetic, seed=derive_seed(plan.seed, _KEY, 1) % (1 << 31)))
    eval_data = SyntheticVideos(replace(synthetic, seed=derive_seed(plan.seed, _KEY, 2) % (1 << 31)))

    echo(f"  llm: tokenizing {plan.train_videos} captioned clips")
    train_clips = _clips(train_data, plan.train_videos, unseen=False)
    train_ids = _encode(tokenizer, train_data, [c["index"] for c in train_clips])
    captions = _write_tokens(out / "tokens", train_clips, train_ids, tokenizer, train_data.config.seed)
    text_tokenizer = _text_tokenizer(detector.num_classes, synthetic.shapes)
    vocab = VideoVocabulary.extend(text_tokenizer, tokenizer, fixed_length=True)
    folders = []
    for order in ("text-video", "video-text"):
        folders.append(out / "data" / order)
        write_interleaved(out / "tokens", folders[-1], text_tokenizer, vocab, captions=captions, order=order)
    fit = min(len(train_clips), 512)
    probe = AttributeProbe(measure_objects(decode_windows(tokenizer, torch.from_numpy(train_ids[:fit]).long(),
                                                          config.frame_num)), train_clips[:fit])
    tokenizing = time.perf_counter() - started

    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.set_seed(plan.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab.base, hidden_size=plan.hidden_size, intermediate_size=3 * plan.hidden_size,
        num_hidden_layers=plan.layers, num_attention_heads=plan.heads, num_key_value_heads=plan.heads,
        max_position_embeddings=128, bos_token_id=text_tokenizer.bos_token_id,
        eos_token_id=text_tokenizer.eos_token_id, pad_token_id=text_tokenizer.pad_token_id,
        tie_word_embeddings=True))
    resize_embeddings(model, vocab)
    echo(f"  llm: training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M-parameter Llama for "
         f"{plan.steps} steps")
    training = _train(model, text_tokenizer, folders, out, plan, progress, torch_device)
    model.eval()
    model.save_pretrained(out / "model")
    text_tokenizer.save_pretrained(out / "model")
    vocab.save(out / "model")

    echo("  llm: generating from held-out captions and captioning held-out clips")
    t0 = time.perf_counter()
    frames = config.frame_num
    groups = {"seen": _clips(eval_data, plan.eval_videos, unseen=False),
              "unseen": _clips(eval_data, plan.eval_videos, unseen=True)}
    t2v, cap, reference, shown = {}, {}, {"real": [], "reconstructed": []}, []
    for name, clips in groups.items():
        windows = _generate_videos(model, text_tokenizer, vocab, [c["caption"] for c in clips], plan)
        generated = decode_windows(tokenizer, torch.tensor(vocab.to_array([w[0] for w in windows])), frames)
        t2v[name] = _score_videos(generated, clips, detector, probe)
        shown += [(("* " if name == "unseen" else "") + c["caption"], v) for c, v in zip(clips, generated)]
        real = eval_data.get_batch([c["index"] for c in clips])["video"]
        ids = encode_windows(tokenizer, real).numpy()
        reference["real"].append(_score_videos(real, clips, detector, None))
        reference["reconstructed"].append(_score_videos(decode_windows(tokenizer, torch.from_numpy(ids), frames),
                                                        clips, detector, probe))
        texts = _generate_captions(model, text_tokenizer, vocab, ids)
        parsed = [parse_caption(t) for t in texts]
        n = len(clips)
        cap[name] = {key: sum(p[key] == c[key] for p, c in zip(parsed, clips)) / n
                     for key in ("colour", "shape", "motion")}
        cap[name]["all"] = sum(all(p[k] == c[k] for k in ("colour", "shape", "motion"))
                               for p, c in zip(parsed, clips)) / n
        cap[name]["clips"] = n
        cap.setdefault("examples", []).extend({"clip": c["caption"], "generated": t} for c, t in
                                              zip(clips[:3], texts[:3]))
    for key, parts in reference.items():  # seen and unseen together
        total = sum(p["clips"] for p in parts)
        reference[key] = {k: sum(p[k] * p["clips"] for p in parts) / total for k in ("motion", "colour", "shape")}
        reference[key]["clips"] = total
    half = max(1, plan.samples_shown // 2)
    picture_rows = shown[:half] + shown[plan.eval_videos:plan.eval_videos + half]
    note = _samples_png(out / "samples.png", picture_rows)
    results = {
        "plan": asdict(plan), "device": str(torch_device), "threads": torch.get_num_threads(),
        "model": {"parameters": sum(p.numel() for p in model.parameters()), "text_vocabulary": vocab.base,
                  "vocabulary": vocab.end, "folder": str(out / "model")},
        "vocabulary": vocab.to_dict(), "training": training, "tokenizing_seconds": round(tokenizing, 1),
        "evaluation_seconds": round(time.perf_counter() - t0, 1),
        "held_out_combinations": sorted(f"{c} {s} {m}" for c in COLOUR_NAMES for s in synthetic.shapes
                                        for m in CLASS_NAMES[:detector.num_classes] if held_out(c, s, m)),
        "chance": {"motion": 1 / detector.num_classes, "colour": 1 / len(COLOUR_NAMES),
                   "shape": 1 / len(synthetic.shapes),
                   "all": 1 / (detector.num_classes * len(COLOUR_NAMES) * len(synthetic.shapes))},
        "text_to_video": t2v, "captioning": cap, "reference": reference,
        "motion_phrases": list(MOTION_PHRASES[:detector.num_classes]), "picture_note": note,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.html", _report_html(results, None if note else "samples.png"))
    echo(f"  llm: text-to-video motion {t2v['seen']['motion']:.2f} / {t2v['unseen']['motion']:.2f} (seen / unseen "
         f"combinations; chance {1 / detector.num_classes:.2f}), colour {t2v['seen']['colour']:.2f} / "
         f"{t2v['unseen']['colour']:.2f} (chance {1 / 6:.2f}); captions all-correct {cap['seen']['all']:.2f} / "
         f"{cap['unseen']['all']:.2f}; {results['seconds']:.0f} s")
    return json.loads(json.dumps(results))
