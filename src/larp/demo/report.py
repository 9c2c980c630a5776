"""The demo's report: ``metrics.json`` (every number), ``plots/*.png`` and ``report.html``.

The report is given values, not the pipeline: the metrics the stages measured (a JSON-able dict) and the rows
of the training runs' ``metrics.jsonl`` files it plots. The HTML is one self-standing file that refers to the
GIFs and PNGs next to it by relative paths, so the demo folder can be moved or zipped whole.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from larp.demo.plot import PLOTS_NEED_MATPLOTLIB, Series, line_plot, matplotlib_available
from larp.evaluation.budget import plot_rate_quality
from larp.files import write_json_atomic, write_text_atomic

__all__ = ["quality_bars", "write_report"]

logger = logging.getLogger(__name__)

Rows = list[dict[str, Any]]  # the records of one metrics.jsonl file


def _column(rows: Rows, key: str) -> tuple[list[float], list[float]]:
    picked = [(row["step"], row[key]) for row in rows if key in row]
    return [p[0] for p in picked], [p[1] for p in picked]


def quality_bars(evaluation: dict[str, Any], bars: Mapping[str, float], applies: bool) -> dict[str, dict[str, Any]]:
    """The demo's two bars: the detector's class accuracy on reconstructions and on class-conditional samples.

    Args:
        evaluation: the evaluate stage's results (``reconstruction`` and ``generation`` records).
        bars: the required class accuracy per task, ``{"reconstruction": ..., "samples": ...}``.
        applies: False for a quick run, whose numbers are not held to the bars.
    """
    out = {}
    for name, task, bar in (("reconstructions", "reconstruction", bars["reconstruction"]),
                            ("samples", "generation", bars["samples"])):
        result = evaluation[task]
        value = result["class_accuracy"]
        out[name] = {"value": value, "chance": result["chance_accuracy"], "bar": bar, "met": value >= bar,
                     "applies": applies}
    return out


def _prior_weight(rows: Rows) -> tuple[list[float], list[float]]:
    steps, weights = _column(rows, "prior_weight")
    top = max(weights, default=0.0) or 1.0
    return steps, [w / top for w in weights]


def write_plots(folder: Path, curves: Mapping[str, Rows], evaluation: dict[str, Any],
                budget: dict[str, Any] | None = None) -> dict[str, str]:
    """Draw the training curves and the token-budget curves as PNGs in ``folder``.

    Args:
        curves: the metrics.jsonl records of the ``tokenizer``, ``generator`` and ``frame-predictor`` runs.
        evaluation: the evaluate stage's results (``token_budgets`` rows, the reconstruction's chance accuracy).
        budget: the budget stage's results (fixed vs adaptive curves): ``budget_<metric>`` plots; None: none.

    Returns:
        {plot name: path relative to the demo folder}.
    """
    tok, gen, pred = curves["tokenizer"], curves["generator"], curves["frame-predictor"]
    budgets = evaluation["token_budgets"]
    chance = evaluation["reconstruction"]["chance_accuracy"]
    tokens = [row["tokens"] for row in budgets]
    budget_axis = "tokens kept (a prefix of the sequence)"
    fractions = (0.0, 1.05)
    plots = {
        "tokenizer_psnr": (
            [Series("train", *_column(tok, "psnr")), Series("held-out", *_column(tok, "val_psnr"), marker=True)],
            dict(title="Tokenizer: reconstruction PSNR", xlabel="step", ylabel="PSNR (dB)")),
        "tokenizer_codes": (
            [Series("codebook use", *_column(tok, "val_usage"), marker=True),
             Series("prior top-1", *_column(tok, "val_prior_top1"), marker=True),
             Series("prior top-5", *_column(tok, "val_prior_top5"), marker=True),
             Series("prior weight / max", *_prior_weight(tok))],
            dict(title="Tokenizer: codebook and AR prior (held-out)", xlabel="step", ylabel="fraction", ylim=fractions)),
        "generator_loss": (
            [Series("class-cond. train", *_column(gen, "loss")),
             Series("class-cond. held-out", *_column(gen, "val_loss"), marker=True),
             Series("frame pred. train", *_column(pred, "loss")),
             Series("frame pred. held-out", *_column(pred, "val_loss"), marker=True)],
            dict(title="Generators: next-token loss", xlabel="step", ylabel="cross-entropy (nats)")),
        "psnr_vs_tokens": (
            [Series("PSNR", tokens, [row["psnr"] for row in budgets], marker=True)],
            dict(title="Reconstruction PSNR vs tokens kept", xlabel=budget_axis, ylabel="PSNR (dB)")),
        "accuracy_vs_tokens": (
            [Series("class accuracy", tokens, [row["class_accuracy"] for row in budgets], marker=True),
             Series("chance", [tokens[0], tokens[-1]], [chance, chance], color="0.5", dashed=True)],
            dict(title="Motion class recognised vs tokens kept", xlabel=budget_axis, ylabel="accuracy", ylim=fractions)),
    }
    paths = {}
    for name, (series, labels) in plots.items():
        line_plot(folder / f"{name}.png", series, **labels)
        paths[name] = f"{folder.name}/{name}.png"
    if budget is not None:
        for metric, path in plot_rate_quality(folder, budget, prefix="budget").items():
            paths[f"budget_{metric}"] = f"{folder.name}/{Path(path).name}"
    return paths


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

    budget = metrics.get("budget")
    if budget is not None:
        parts += _budget_html(budget, {k: v for k, v in metrics["plots"].items() if k.startswith("budget_")})

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
    parts.append("</div><h2>Training curves</h2>")
    if metrics["plots"]:
        parts.append("<div class='grid'>")
        for name, path in metrics["plots"].items():
            if not name.startswith("budget_"):  # those are shown with the budget tables
                parts.append(_figure(path, name.replace("_", " "), "plot"))
        parts.append("</div>")
    else:
        parts.append(f"<p class='note'>No plots: {_e(PLOTS_NEED_MATPLOTLIB)}, then run the demo again "
                     "(only the report is redrawn).</p>")

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


def _budget_html(budget: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """The budget stage: fixed vs adaptive lengths at equal mean tokens, and the per-clip PSNR targets."""
    parts = ["<h3>Adaptive token budgets</h3>",
             f"<p>{budget['clips']} held-out clips. <b>Fixed</b>: every clip keeps its first K tokens. <b>Adaptive</b>: "
             "the clips share K tokens per clip on average (never more), each clip's length chosen among "
             f"{budget['candidates']} to maximise the summed PSNR over the measured rate-quality curves. The Fréchet "
             "distance and class accuracy are the synthetic-data detector's.</p>"]
    columns = [c for c in ("psnr", "ssim", "lpips", "fvd", "class_accuracy") if any(c in r for r in budget["curves"])]
    names = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "fvd": "Fréchet distance", "class_accuracy": "class accuracy"}
    parts.append(_table(["policy", "K", "mean tokens", *(names[c] for c in columns)],
                        [[r["policy"], r["budget"], r["mean_tokens"], *(r.get(c, "") for c in columns)]
                         for r in budget["curves"]]))
    if budget["targets"]:
        def named(value):
            return value if value is not None else "none"

        rows = [[r["target_psnr"], named(r["smallest_fixed_reaching"]), named(r.get("smallest_adaptive_budget_reaching")),
                 r["adaptive_mean_tokens"], r["adaptive_share_meeting"]] for r in budget["targets"]]
        parts += ["<p>PSNR targets. On the mean: the smallest fixed length whose mean PSNR reaches the target, against "
                  "the smallest budget K above whose adaptive allocation reaches it. On every clip: each clip takes the "
                  "fewest tokens whose PSNR meets the target, all of them when none does (the clips that never reach "
                  "it spend the maximum).</p>",
                  _table(["target PSNR (dB)", "fixed length (mean)", "adaptive K (mean)",
                          "per-clip target: mean tokens", "per-clip target: clips meeting it"], rows)]
    if plots:
        parts.append("<div class='grid'>" + "".join(_figure(p, n.replace("_", " "), "plot") for n, p in plots.items())
                     + "</div>")
    return parts


def write_report(out: Path, metrics: dict[str, Any], curves: Mapping[str, Rows]) -> dict[str, str]:
    """Write ``out/plots/``, ``out/metrics.json`` and ``out/report.html``.

    Args:
        out: the demo folder.
        metrics: every number of the run (plan, bars, evaluation, media, timings, machine, ...); the report
            adds ``plots`` ({name: relative path}, empty without matplotlib) and ``report`` (the HTML's path).
        curves: the metrics.jsonl records of the ``tokenizer``, ``generator`` and ``frame-predictor`` runs.

    Returns:
        {"report": path of report.html, "metrics": path of metrics.json}.
    """
    if matplotlib_available():
        plots = write_plots(out / "plots", curves, metrics["evaluation"], metrics.get("budget"))
    else:
        logger.warning("no plots in the report: %s", PLOTS_NEED_MATPLOTLIB)
        plots = {}
    metrics = {**metrics, "plots": plots, "report": str(out / "report.html")}
    write_json_atomic(out / "metrics.json", metrics)
    page = _html(metrics)
    fragment = out / "llm" / "report.html"  # the llm stage's section (larp.demo.llm), when it ran
    if metrics.get("llm") and fragment.is_file():
        page = page.replace("</body>", fragment.read_text(encoding="utf-8") + "</body>")
    write_text_atomic(out / "report.html", page)
    return {"report": metrics["report"], "metrics": str(out / "metrics.json")}
