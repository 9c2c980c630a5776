"""`larp demo`: the quick plan end to end, stage reuse, one demo per folder, and the report's plots."""

import contextlib
import io
import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch

import larp
from larp.cli.main import main
from larp.demo.pipeline import clear, run_demo
from larp.demo.plot import PLOTS_NEED_MATPLOTLIB, Series, line_plot
from larp.demo.recipes import demo_plan
from larp.demo.report import write_report
from larp.files import FolderLock, read_jsonl

mpimg = pytest.importorskip("matplotlib.image")  # the `test` extra installs it: the suite checks the plots

PLOT_NAMES = ("tokenizer_psnr", "tokenizer_codes", "generator_loss", "psnr_vs_tokens", "accuracy_vs_tokens",
              "budget_psnr", "budget_fvd", "budget_class_accuracy")


def _image(path) -> np.ndarray:
    """(h, w, 3) floats in [0, 1] of a PNG (alpha dropped)."""
    return mpimg.imread(path, format="png")[..., :3]


def _ink(image: np.ndarray) -> float:
    """Fraction of the pixels that are not white."""
    return float((image < 0.95).any(-1).mean())


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo for the whole module: (its folder, what the CLI printed)."""
    out = tmp_path_factory.mktemp("quick") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["-q", "demo", "--quick", "--out", str(out)]) == 0
    return out, printed.getvalue()


# ------------------------------------------------------------------------------------------ plots
def test_line_plot_writes_a_png_of_its_size_with_each_series_in_its_colour(tmp_path):
    path = line_plot(tmp_path / "a.png", [Series("up", [0, 1, 2], [0, 1, 2], color="#c80000"),
                                          Series("flat", [0, 2], [1, 1], color="#0000c8", marker=True)],
                     title="t", xlabel="x", ylabel="y", size=(320, 200))
    image = _image(path)
    assert image.shape == (200, 320, 3)
    for rgb in ((0.784, 0.0, 0.0), (0.0, 0.0, 0.784)):  # each line is drawn, not just listed in the legend
        assert (np.abs(image - rgb) < 0.05).all(-1).sum() > 100, rgb
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left behind

    other = _image(line_plot(tmp_path / "b.png", [Series("up", [0, 1, 2], [2, 1, 0], color="#c80000"),
                                                  Series("flat", [0, 2], [1, 1], color="#0000c8", marker=True)],
                             title="t", xlabel="x", ylabel="y", size=(320, 200)))
    assert np.abs(other - image).max() > 0.5  # other data, another picture
    with pytest.raises(ValueError, match="differ in length"):
        line_plot(tmp_path / "c.png", [Series("bad", [0, 1], [0])])


def test_line_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib...` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape('pip install "larp[plots]"')):
        line_plot(tmp_path / "a.png", [Series("s", [0, 1], [0, 1])])
    assert not (tmp_path / "a.png").exists()


# ------------------------------------------------------------------------------------------ the demo
def test_demo_quick_end_to_end(quick_demo):
    out, printed = quick_demo
    assert "report: " in printed and "not applied" in printed and PLOTS_NEED_MATPLOTLIB not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    html = (out / "report.html").read_text()
    # every GIF and plot the report shows exists and is a real file of its kind
    sources = re.findall(r'src="([^"]+)"', html)
    for src in sources:
        data = (out / src).read_bytes()
        assert data[:6] in (b"GIF89a", b"GIF87a") or data[:8] == b"\x89PNG\r\n\x1a\n", src
    assert len(metrics["media"]["samples"]) == 4

    # the plots: 640x400 PNGs, shown in the report, each with drawn content, no two alike
    assert tuple(metrics["plots"]) == PLOT_NAMES
    images = {}
    for name, src in metrics["plots"].items():
        assert src in sources
        images[name] = _image(out / src)
        assert images[name].shape == (400, 640, 3), name
        assert _ink(images[name]) > 0.02, name  # axes, labels and lines, not a blank canvas
    assert all(np.abs(images[a] - images[b]).max() > 0.5 for a in PLOT_NAMES for b in PLOT_NAMES if a < b)

    ev, plan = metrics["evaluation"], demo_plan(out, quick=True)
    assert [row["tokens"] for row in ev["token_budgets"]] == list(plan.token_budgets)
    # the token-budget curve at the full budget is the reconstruction task, scored by another code path
    full = ev["token_budgets"][-1]
    assert full["tokens"] == plan.tokenizer.model.num_tokens
    for key in ("psnr", "ssim", "class_accuracy"):
        assert full[key] == pytest.approx(ev["reconstruction"][key], abs=1e-4), key
    assert ev["reconstruction"]["clips"] == ev["prediction"]["clips"] == plan.eval_clips
    assert ev["generation"]["clips"] == 4 * plan.samples_per_class
    for task in ("reconstruction", "generation", "prediction"):
        correct = ev[task]["class_accuracy"] * ev[task]["clips"]
        assert correct == pytest.approx(round(correct), abs=1e-6), task  # a fraction of whole clips
        assert ev[task]["chance_accuracy"] == 0.25
    # the bars report the evaluation's numbers, and a quick run is not held to them
    assert metrics["bars"]["reconstructions"]["value"] == ev["reconstruction"]["class_accuracy"]
    assert metrics["bars"]["samples"]["value"] == ev["generation"]["class_accuracy"]
    assert metrics["bars"]["samples"]["applies"] is False and metrics["bars"]["samples"]["bar"] == 0.8
    assert set(metrics["timings"]) == {"detector", "tokenizer", "generator", "predictor", "evaluate", "budget", "media"}

    # the budget stage: fixed vs adaptive at the plan's budgets. Its fixed curve is the evaluate stage's (one code
    # path); every clip at K tokens is one allocation of K per clip, so the optimal one is never below it
    budget = metrics["budget"]
    rows = {(r["policy"], r["budget"]): r for r in budget["curves"]}
    assert sorted(rows) == sorted((p, k) for p in ("fixed", "adaptive") for k in plan.token_budgets)
    for fixed_row in ev["token_budgets"]:
        k = fixed_row["tokens"]
        fixed, adaptive = rows["fixed", k], rows["adaptive", k]
        assert fixed["psnr"] == pytest.approx(fixed_row["psnr"], abs=1e-6), k
        assert fixed["class_accuracy"] == fixed_row["class_accuracy"], k
        assert adaptive["mean_tokens"] <= k and adaptive["psnr"] >= fixed["psnr"] - 1e-4, k
        assert "ssim" not in fixed and fixed["fvd"] >= 0
    assert [round(t["target_psnr"], 6) for t in budget["targets"]] == [
        round(budget["fixed_psnr_at_candidates"][budget["candidates"].index(k)], 6) for k in plan.budget_targets_at]
    assert "Adaptive token budgets" in html
    assert metrics["total_seconds"] == pytest.approx(sum(metrics["timings"].values()), abs=0.1)
    assert metrics["machine"]["larp"] == larp.__version__

    # the FVD separates reconstructions from noise, even with the quick plan's 20-step detector: the Fréchet
    # distance of held-out clips to uniform noise is well above the one to their reconstructions (measured:
    # 0.18 vs 0.046)
    from larp.demo.pipeline import Context, held_out
    from larp.evaluation.fvd import frechet_distance

    ctx = Context(out, plan, torch.device("cpu"), progress=False)
    videos, _ = held_out(ctx, plan.eval_clips)
    detector = ctx.detector()
    with torch.no_grad():
        real = detector.features(videos)
        noise = detector.features(torch.rand(videos.shape, generator=torch.Generator().manual_seed(0)))
    assert frechet_distance(real, noise) > 2 * ev["reconstruction"]["fvd"]

    # the models load with from_pretrained and work together
    tokenizer = larp.LARPTokenizer.from_pretrained(metrics["models"]["tokenizer"])
    generator = larp.LARPGenerator.from_pretrained(metrics["models"]["generator"])
    predictor = larp.LARPGenerator.from_pretrained(metrics["models"]["frame-predictor"])
    ids = generator.generate(torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0))
    assert tokenizer.decode(ids).shape == (2, 3, 16, 32, 32)
    assert predictor.config.frame_prediction and not generator.config.frame_prediction


def test_one_demo_per_folder_then_reuse(quick_demo, capsys):
    out, _ = quick_demo
    state = (out / "stages.json").read_text()
    log_lines = len(read_jsonl(out / "runs" / "tokenizer" / "metrics.jsonl"))
    with FolderLock(out, what="demo"):  # another demo is running there
        assert main(["demo", "--quick", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert "another demo is writing there" in err and str(out) in err and len(err.splitlines()) == 1
        assert main(["demo", "--quick", "--fresh", "--out", str(out)]) == 1  # --fresh does not clear a live demo
        capsys.readouterr()
        assert (out / "stages.json").read_text() == state and (out / "report.html").is_file()
    # released: a second run reuses every stage but the report, which is redrawn from the recorded results
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == 7 and "[8/8] report ..." in printed
    assert len(read_jsonl(out / "runs" / "tokenizer" / "metrics.jsonl")) == log_lines
    # a different plan in the same folder is refused
    assert main(["demo", "--out", str(out)]) == 1
    assert "--fresh" in capsys.readouterr().err


def test_report_without_matplotlib_says_how_to_get_the_plots(quick_demo, tmp_path, monkeypatch):
    out, _ = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    curves = {name: read_jsonl(out / "runs" / name / "metrics.jsonl") for name in ("tokenizer", "generator", "frame-predictor")}
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths = write_report(tmp_path, metrics, curves)
    html = (tmp_path / "report.html").read_text()
    assert 'No plots: the plots need matplotlib: pip install &quot;larp[plots]&quot;' in html
    assert "plots/" not in html and not (tmp_path / "plots").exists()
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["plots"] == {} and written["evaluation"] == metrics["evaluation"]
    assert paths["report"] == str(tmp_path / "report.html")
    monkeypatch.undo()
    # with matplotlib back, the same values give the plots
    write_report(tmp_path, metrics, curves)
    assert sorted(p.stem for p in (tmp_path / "plots").iterdir()) == sorted(PLOT_NAMES)


def test_demo_resumes_after_a_failed_stage_and_is_deterministic(quick_demo, tmp_path, monkeypatch, capsys):
    from larp.demo import pipeline

    out = tmp_path / "demo"

    def broken(ctx):
        raise RuntimeError("disk full")

    monkeypatch.setitem(pipeline._STAGE_FUNCTIONS, "media", broken)
    assert main(["-q", "demo", "--quick", "--out", str(out)]) == 1
    assert "disk full" in capsys.readouterr().err
    state = json.loads((out / "stages.json").read_text())
    assert list(state["stages"]) == ["detector", "tokenizer", "generator", "predictor", "evaluate", "budget"]
    monkeypatch.undo()
    assert main(["-q", "demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == 6 and (out / "report.html").is_file()
    # the quick plan is seeded: another folder, another process state, the same numbers
    first = json.loads((quick_demo[0] / "metrics.json").read_text())
    second = json.loads((out / "metrics.json").read_text())
    for task in ("reconstruction", "generation", "prediction"):
        for key, value in first["evaluation"][task].items():
            assert second["evaluation"][task][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, key)
    assert second["detector"] == first["detector"]


def test_the_llm_stage_joins_the_demo_and_its_report(quick_demo, tmp_path):
    pytest.importorskip("transformers", reason="the LLM stage needs the llm extra: pip install 'larp[llm]'")
    pytest.importorskip("datasets", reason="the LLM stage needs the llm extra: pip install 'larp[llm]'")
    out = tmp_path / "demo"
    shutil.copytree(quick_demo[0], out, ignore=shutil.ignore_patterns(".lock"))
    printed = io.StringIO()
    metrics = run_demo(out, quick=True, progress=False, llm=True, echo=lambda line: printed.write(line + "\n"))
    lines = printed.getvalue().splitlines()
    assert lines[0] == "[1/9] detector: done in an earlier run" + lines[0].split("earlier run", 1)[1]
    assert "[8/9] llm ..." in lines and any(line.startswith("[9/9] report") for line in lines)
    assert metrics["llm"] == json.loads((out / "llm" / "results.json").read_text())
    assert "llm" in metrics["timings"] and "text to video, unseen caption combinations" in printed.getvalue()
    report = (out / "report.html").read_text()
    assert "<section id=\"llm\">" in report and report.index("<section id=\"llm\">") < report.index("</body>")
    # a later run without --llm keeps the finished stage in the report; --fresh removes it
    assert run_demo(out, quick=True, progress=False, echo=lambda line: None)["llm"] == metrics["llm"]
    clear(out)  # what --fresh does first
    assert not (out / "llm").exists()
