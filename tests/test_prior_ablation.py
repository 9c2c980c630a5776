"""`larp experiment prior-ablation` (issue 15): the --quick experiment trains every variant, a resumed experiment
skips finished runs, and the report has every cell; the recipes differ by the variant's overrides only; the
held-out NLL is the generator's teacher-forced cross-entropy."""

import contextlib
import copy
import io
import json
import math

import pytest
import torch

from larp.cli import experiment_commands
from larp.cli.main import main
from larp.config import config_to_dict
from larp.demo.recipes import demo_plan
from larp.evaluation.image_metrics import psnr
from larp.experiments import prior_ablation as pa
from larp.models.generator import LARPGenerator
from larp.models.tokenizer import LARPTokenizer
from larp.training.generator_trainer import token_metrics


def _cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One CPU thread: on a shared 2-core machine, two threads spinning against other jobs are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, _one_thread):
    """Every variant once (seed 0), then the default variants again with two seeds: (folder, both outputs)."""
    out = tmp_path_factory.mktemp("ablation")
    first = _cli("experiment", "prior-ablation", "-o", str(out), "--quick", "--seeds", "1", "--variants", *pa.VARIANTS)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-0/result.json")}
    second = _cli("experiment", "prior-ablation", "-o", str(out), "--quick", "--seeds", "2")
    return out, first, second, stamps


def test_every_variant_trains_with_its_overrides(experiment):
    out, first, _, _ = experiment
    plan = pa.ablation_plan("quick")
    for variant in pa.VARIANTS:
        run = out / "runs" / variant / "seed-0"
        result = json.loads((run / "result.json").read_text())
        assert result["variant"] == variant and result["seed"] == 0
        lines = [json.loads(line) for line in (run / "tokenizer" / "metrics.jsonl").read_text().splitlines()]
        assert lines[-1]["step"] == plan.tokenizer_steps
        # the prior trained in every variant but no-prior, and only there is there no prior loss
        assert any("prior_ce" in line for line in lines) == (variant != "no-prior")
        assert (run / "tokenizer" / "tokenizer" / "config.json").is_file()
        assert (run / "generator" / "generator" / "config.json").is_file()
        assert not (run / "cache").exists() and not (run / "tokenizer" / "checkpoints").exists()
        tokenizer = LARPTokenizer.from_pretrained(run / "tokenizer" / "tokenizer")
        assert tokenizer.config.quantizer.stochastic == (variant != "prior-det-vq")
        assert f"{variant} seed 0:" in first


def test_a_resumed_experiment_skips_finished_runs(experiment):
    out, _, second, stamps = experiment
    assert len(stamps) == len(pa.VARIANTS)
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp  # not redone
    for variant in pa.DEFAULT_VARIANTS:
        assert f"{variant} seed 0: finished in an earlier run, skipped" in second
        assert (out / "runs" / variant / "seed-1" / "result.json").is_file()
    assert not (out / "runs" / "prior-lr-x1" / "seed-1").exists()  # not asked for the second time
    assert "9 finished runs of 5 variants" in second


def test_the_report_has_every_cell(experiment):
    out, _, _, _ = experiment
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert report["variants"] == list(pa.VARIANTS)
    for variant in pa.VARIANTS:
        row = report["table"][variant]
        seeds = [0, 1] if variant in pa.DEFAULT_VARIANTS else [0]
        assert row["seeds"] == seeds
        results = [json.loads((out / "runs" / variant / f"seed-{s}" / "result.json").read_text()) for s in seeds]
        cells = []
        for _, key, _, digits in pa.METRICS:
            values = [pa._get(r, key) for r in results]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            assert row[key]["values"] == values and math.isfinite(mean)
            assert row[key]["mean"] == pytest.approx(mean) and row[key]["std"] == pytest.approx(std)
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        assert f"| {variant} | {len(seeds)} | " + " | ".join(cells) + " |" in markdown
        assert set(row["prefix_psnr"]) == {str(k) for k in pa.ablation_plan("quick").token_budgets}
    assert "Paper (LARP.md F.2" in markdown and "| no-prior | 27.95 | 23 | 190 |" in markdown
    assert (out / "plots" / "prior-ablation.png").stat().st_size > 1000


def test_held_out_numbers_match_a_recomputation(experiment):
    out, _, _, _ = experiment
    plan = pa.ablation_plan("quick")
    run = out / "runs" / "prior" / "seed-1"
    result = json.loads((run / "result.json").read_text())
    tokenizer = LARPTokenizer.from_pretrained(run / "tokenizer" / "tokenizer").eval()
    generator = LARPGenerator.from_pretrained(run / "generator" / "generator").eval()
    videos, labels = pa.held_out(plan)
    assert labels.tolist() == [i % plan.num_classes for i in range(plan.eval_clips)]
    with torch.no_grad():
        ids = tokenizer.encode(videos)
        loss = token_metrics(generator(ids, labels), ids)["loss"].item()
        prefix = psnr(videos, tokenizer.decode(ids[:, :4], clamp=True)).mean().item()
        full = psnr(videos, tokenizer.decode(ids, clamp=True)).mean().item()
    nll = result["nll"]
    assert nll["per_token"] == pytest.approx(loss, rel=1e-4)
    assert sum(nll["per_position"]) / len(nll["per_position"]) == pytest.approx(loss, rel=1e-4)
    assert nll["first_quarter"] == pytest.approx(sum(nll["per_position"][:8]) / 8)
    assert result["prefix_psnr"]["4"] == pytest.approx(prefix, abs=1e-3)
    assert result["reconstruction"]["psnr"] == pytest.approx(full, abs=1e-3)


def test_recipes_differ_by_the_variant_overrides_only(tmp_path):
    full = config_to_dict(pa.variant_recipes(pa.ablation_plan("full"), "prior", 0, tmp_path)[0])
    demo = config_to_dict(demo_plan(tmp_path).tokenizer)  # the full plan trains the demo's tokenizer recipe
    assert (full["steps"], full["batch_size"], full["prior"], full["codebook"], full["optim"], full["model"]) == (
        demo["steps"], demo["batch_size"], demo["prior"], demo["codebook"], demo["optim"], demo["model"])
    # but the nested-dropout share the ablation was measured with, whatever the demo's is now
    assert full["nested_dropout_prob"] == pa.ABLATION_NESTED_DROPOUT == 0.1 != demo["nested_dropout_prob"]
    plan = pa.ablation_plan("small")
    base_tok, base_gen = (config_to_dict(r) for r in pa.variant_recipes(plan, "prior", 3, tmp_path))
    assert base_tok["steps"] == 400 and base_tok["seed"] == 3 and base_gen["seed"] == 3
    # the demo's schedules (1,600 steps) scaled to 400: prior from step 225, ramp 75, warm-up 175
    assert (base_tok["prior"]["weight_delay"], base_tok["prior"]["weight_ramp"]) == (225, 75)
    assert base_tok["codebook"]["continuous_warmup"] == 175
    assert base_tok["data"]["synthetic_classes"] == base_gen["model"]["num_classes"] == 8
    assert base_gen["data"] == base_tok["data"]
    for variant, overrides in pa.VARIANTS.items():
        tok, gen = (config_to_dict(r) for r in pa.variant_recipes(plan, variant, 3, tmp_path))
        assert gen == base_gen
        want = copy.deepcopy(base_tok)
        for key, value in overrides.items():
            node, expected = tok, want
            *parents, last = key.split(".")
            for part in parents:
                node, expected = node[part], expected[part]
            assert node[last] == value != expected[last]
            expected[last] = value
        assert tok == want  # nothing else differs
    with pytest.raises(ValueError, match="unknown variant 'x'"):
        pa.variant_recipes(plan, "x", 0, tmp_path)


def test_summaries_and_the_cli_names():
    s = pa.summarize([1.0, 2.0, 4.0])
    assert (s["mean"], s["min"], s["max"], s["n"]) == (7 / 3, 1.0, 4.0, 3)
    assert s["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert pa.summarize([5.0])["std"] == 0.0
    assert experiment_commands.VARIANTS == tuple(pa.VARIANTS)
    assert experiment_commands.DEFAULT_VARIANTS == pa.DEFAULT_VARIANTS
    assert experiment_commands.PLANS == pa.PLANS == tuple(pa.ablation_plan(name).name for name in pa.PLANS)


def test_another_plan_in_the_folder_is_refused(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps({**pa.ablation_plan().to_dict()}))
    assert main(["experiment", "prior-ablation", "-o", str(tmp_path), "--quick"]) == 1
    assert "holds another plan ('full')" in capsys.readouterr().err


def test_a_worker_runs_one_run_as_the_main_process_does(experiment):
    """`--jobs N` hands each run to `_worker` in a process of its own: here called in this process."""
    out, _, _, _ = experiment
    plan = pa.ablation_plan("quick")
    job = (str(out), plan.to_dict(), "prior-lr-x1", 1, "cpu", torch.get_num_threads())
    variant, seed, result, seconds = pa._worker(job)
    assert (variant, seed) == ("prior-lr-x1", 1) and seconds > 0
    saved = json.loads((out / "runs" / "prior-lr-x1" / "seed-1" / "result.json").read_text())
    assert saved["nll"] == result["nll"] and saved["generation"] == result["generation"]
    recipe = (out / "runs" / "prior-lr-x1" / "seed-1" / "tokenizer" / "recipe.yaml").read_text()
    assert "lr_mult: 1.0" in recipe and "seed: 1" in recipe
