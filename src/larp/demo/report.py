"""The demo's report: ``metrics.json`` (every number) and ``report.html`` (the numbers, GIFs and plots).

The HTML is one self-standing file that refers to the GIFs and PNGs next to it by relative paths, so the
demo folder can be moved or zipped whole.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from larp.demo.plot import Series, line_plot, write_png

if TYPE_CHECKING:
    from larp.demo.pipeline import Context

__all__ = ["write_report", "quality_bars"]


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _column(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    picked = [(row["step"], row[key]) for row in rows if key in row]
    return [p[0] for p in picked], [p[1] for p in picked]


def quality_bars(evaluation: dict[str, Any], applies: bool) -> dict[str, dict[str, Any]]:
    """The demo's two bars: the detector's class accuracy on reconstructions and on class-conditional samples."""
    from larp.demo.pipeline import BARS

    bars = {}
    for name, task, bar in (("reconstructions", "reconstruction", BARS["reconstruction"]),
                            ("samples", "generation", BARS["samples"])):
        result = evaluation[task]
        value = result["class_accuracy"]
        bars[name] = {"value": value, "chance": result["chance_accuracy"], "bar": bar, "met": value >= bar,
                      "applies": applies}
    return bars


def _plots(ctx: Context) -> dict[str, str]:
    """Draw the training curves and the token-budget curves; returns {name: path relative to the demo folder}."""
    folder = ctx.out / "plots"
    tok = _read_metrics(ctx.runs / "tokenizer" / "metrics.jsonl")
    gen = _read_metrics(ctx.runs / "generator" / "metrics.jsonl")
    pred = _read_metrics(ctx.runs / "frame-predictor" / "metrics.jsonl")
    budgets = ctx.results["evaluate"]["token_budgets"]
    chance = ctx.results["evaluate"]["reconstruction"].get("chance_accuracy")
    tokens = [row["tokens"] for row in budgets]
    figures = {
        "tokenizer_psnr": line_plot(
            [Series("train", *_column(tok, "psnr")), Series("held-out", *_column(tok, "val_psnr"), marker=True)],
            title="Tokenizer: reconstruction PSNR", xlabel="step", ylabel="PSNR (dB)"),
        "tokenizer_codes": line_plot(
            [Series("codebook use", *_column(tok, "val_usage"), marker=True),
             Series("prior top-1", *_column(tok, "val_prior_top1"), marker=True),
             Series("prior top-5", *_column(tok, "val_prior_top5"), marker=True),
             Series("prior weight / max", *_prior_weight(tok))],
            title="Tokenizer: codebook and AR prior (held-out)", xlabel="step", ylabel="fraction"),
        "generator_loss": line_plot(
            [Series("class-cond. train", *_column(gen, "loss")), Series("class-cond. held-out", *_column(gen, "val_loss"), marker=True),
             Series("frame pred. train", *_column(pred, "loss")), Series("frame pred. held-out", *_column(pred, "val_loss"), marker=True)],
            title="Generators: next-token loss", xlabel="step", ylabel="cross-entropy (nats)"),
        "psnr_vs_tokens": line_plot(
            [Series("PSNR", tokens, [row["psnr"] for row in budgets], marker=True)],
            title="Reconstruction PSNR vs tokens kept", xlabel="tokens (prefix of the sequence)", ylabel="PSNR (dB)"),
        "accuracy_vs_tokens": line_plot(
            [Series("class accuracy", tokens, [row["class_accuracy"] for row in budgets], marker=True),
             Series("chance", [tokens[0], tokens[-1]], [chance, chance], color=(150, 150, 150))],
            title="Motion class recognised vs tokens kept", xlabel="tokens (prefix of the sequence)", ylabel="accuracy"),
    }
    paths = {}
    for name, image in figures.items():
        write_png(folder / f"{name}.png", image)
        paths[name] = f"plots/{name}.png"
    return paths


def _prior_weight(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    steps, weights = _column(rows, "prior_weight")
    top = max(weights, default=0.0) or 1.0
    return steps, [w / top for w in weights]


# ------------------------------------------------------------------------------------------ HTML
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.met { color: #0a7a3d; font-weight: 600; } .missed { color: #b3261e; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; } figure { margin: 0; } figcaption { font-size: 0.9em; color: #555; }
img.gif { image-rendering: pixelated; } img.plot { width: 520px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6em 1em; }
code { background: #f4f4f4; padding: 1px 4px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="num">{value:.4g}</td>'
        if isinstance(value, int):
            return f'<td class="num">{value}</td>'
        return f"<td>{value}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(src: str, caption: str, css: str = "gif") -> str:
    return f'<figure><img class="{css}" src="{_e(src)}" alt="{_e(caption)}"><figcaption>{caption}</figcaption></figure>'


def _html(metrics: dict[str, Any]) -> str:
    ev, media, bars = metrics["evaluation"], metrics["media"], metrics["bars"]
    quick = metrics["plan"] == "quick"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>LARP demo</title><style>{_CSS}</style></head><body>",
             "<h1>LARP demo</h1>",
             "<p>A LARP tokenizer (holistic queries, stochastic VQ, an autoregressive prior and nested token dropout), "
             "a class-conditional AR generator and a frame predictor, trained from scratch on the built-in synthetic "
             "videos (one shape moving right, left, down or up), then scored on held-out clips with the synthetic-data "
             "detector: a small video classifier trained on real clips, whose features give the Fréchet distance and "
             "whose prediction gives the class accuracy.</p>"]
    if quick:
        parts.append("<p class='note'><b>Quick run.</b> It checks that every stage works; the models are trained for a "
                     "few steps only, so the numbers below mean nothing and the bars are not applied.</p>")
    rows = []
    for name, bar in bars.items():
        verdict = ("<span class='met'>met</span>" if bar["met"] else "<span class='missed'>missed</span>") \
            if bar["applies"] else "not applied (quick run)"
        rows.append([f"class accuracy on {name}", bar["value"], bar["chance"], bar["bar"], verdict])
    parts += ["<h2>Quality bars</h2>", _table(["measure", "value", "chance", "bar", "verdict"], rows)]
    missed = [name for name, bar in bars.items() if bar["applies"] and not bar["met"]]
    if missed:
        parts.append(f"<p class='note'><b>Bar missed</b> on {', '.join(missed)}: the detector could not tell the motion "
                     "class often enough. Train longer (the recipes in <code>metrics.json</code>) and compare.</p>")

    rec, gen, pred = ev["reconstruction"], ev["generation"], ev["prediction"]
    parts += ["<h2>Metrics</h2>", _table(["task", "clips", "PSNR (dB)", "SSIM", "FVD (synthetic detector)", "class accuracy", "other"], [
        ["reconstruction", rec["clips"], rec["psnr"], rec["ssim"], rec["fvd"], rec["class_accuracy"],
         f"codebook use {rec['codebook_usage']:.2f}, perplexity {rec['codebook_perplexity']:.1f}"],
        ["class-conditional samples", gen["clips"], "", "", gen["fvd"], gen["class_accuracy"],
         f"CFG {metrics['plan_settings']['cfg_scale']}; NLL real {gen['nll_real']:.3f}, sampled {gen['nll_sampled']:.3f}"],
        ["frame prediction", pred["clips"], pred["psnr"], "", pred["fvd"], pred["class_accuracy"],
         f"PSNR of the predicted frames; NLL sampled {pred['nll_sampled']:.3f}"],
    ])]
    parts.append("<p>FVD here is the Fréchet distance of the synthetic-data detector's features (not I3D; not comparable "
                 "to the paper's FVD). Held-out real clips score " + f"{metrics['detector']['real_clip_accuracy']:.3f}"
                 " class accuracy with this detector.</p>")
    parts += ["<h3>Token budgets (nested dropout)</h3>",
              _table(["tokens kept", "PSNR (dB)", "SSIM", "class accuracy"],
                     [[row["tokens"], row["psnr"], row["ssim"], row["class_accuracy"]] for row in ev["token_budgets"]])]

    parts += ["<h2>Videos</h2>", "<p>Held-out clips, one row per class (right, left, down, up), and their reconstructions "
              f"from {metrics['tokens_per_clip']} tokens.</p><div class='grid'>",
              _figure(media["real"], "real clips"),
              _figure(media["reconstruction"],
                      f"reconstructions ({media['reconstruction_recognised']} of {media['reconstruction_count']} recognised)"),
              "</div><h3>Class-conditional samples</h3><div class='grid'>"]
    for item in media["samples"]:
        parts.append(_figure(item["gif"], f"class <b>{_e(item['class'])}</b>: {item['recognised']} of {item['count']} recognised"))
    parts += ["</div>", f"<h3>Frame prediction</h3><p>Top row: held-out clips. Bottom row: the frame predictor's "
              f"continuation given their first {media['condition_frames']} frames.</p><div class='grid'>"]
    for item in media["prediction"]:
        parts.append(_figure(item["gif"], f"{_e(item['class'])} clips"))
    parts.append("</div><h2>Training curves</h2><div class='grid'>")
    for name, path in metrics["plots"].items():
        parts.append(_figure(path, name.replace("_", " "), "plot"))
    parts.append("</div>")

    timing_rows = [[name, seconds] for name, seconds in metrics["timings"].items()]
    timing_rows.append(["total", metrics["total_seconds"]])
    parts += ["<h2>Stages</h2>", _table(["stage", "seconds"], timing_rows),
              "<h2>Models</h2><p>Load them with <code>from_pretrained</code>:</p><pre>"
              "import larp\n"
              f"tokenizer = larp.LARPTokenizer.from_pretrained({metrics['models']['tokenizer']!r})\n"
              f"generator = larp.LARPGenerator.from_pretrained({metrics['models']['generator']!r})\n"
              f"predictor = larp.LARPGenerator.from_pretrained({metrics['models']['frame-predictor']!r})</pre>",
              f"<p>Machine: {_e(metrics['machine'])}</p></body></html>"]
    return "\n".join(parts)


def write_report(ctx: Context) -> dict[str, Any]:
    """Write ``plots/``, ``metrics.json`` and ``report.html`` from what the earlier stages measured."""
    from larp.demo.pipeline import STAGES, machine

    state = json.loads((ctx.out / "stages.json").read_text())
    timings = {name: state["stages"][name]["seconds"] for name in STAGES if name in state["stages"]}
    evaluation = ctx.results["evaluate"]
    models = {name: str(ctx.models / name) for name in ("tokenizer", "generator", "frame-predictor", "detector")}
    metrics = {
        "plan": ctx.plan.name,
        "bars": quality_bars(evaluation, applies=ctx.plan.name != "quick"),
        "evaluation": evaluation,
        "detector": ctx.results["detector"],
        "training": {name: ctx.results[stage] for name, stage in (("tokenizer", "tokenizer"), ("generator", "generator"),
                                                                  ("frame-predictor", "predictor"))},
        "media": ctx.results["media"],
        "plots": _plots(ctx),
        "timings": timings,
        "total_seconds": round(sum(timings.values()), 1),  # the report stage itself takes about a second
        "tokens_per_clip": ctx.plan.tokenizer.model.num_tokens,
        "models": models,
        "plan_settings": {k: v for k, v in ctx.plan.to_dict().items() if k not in ("tokenizer", "generator", "predictor")},
        "recipes": {k: ctx.plan.to_dict()[k] for k in ("tokenizer", "generator", "predictor")},
        "machine": machine(),
        "device": str(ctx.device),
        "report": str(ctx.out / "report.html"),
    }
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (ctx.out / "report.html").write_text(_html(metrics))
    return {"report": metrics["report"], "metrics": str(ctx.out / "metrics.json")}
