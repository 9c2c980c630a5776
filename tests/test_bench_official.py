"""The benchmarks' --official-src option: larp beside the official LARP code in one process.

The comparisons need a checkout of the official code (``LARP_OFFICIAL_SRC``) and ``timm==1.0.15`` +
``easydict`` importable (see tools/official_code.py); they are skipped, with the reason, otherwise. The
timing and import-stub logic is checked without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.syspath_prepend(str(REPO / "tools"))


def _official_src() -> str:
    src = os.environ.get("LARP_OFFICIAL_SRC")
    if not src:
        pytest.skip("LARP_OFFICIAL_SRC is not set (a checkout of github.com/hywang66/LARP)")
    missing = [name for name in ("timm", "easydict") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the official code needs {missing} importable (timm==1.0.15, easydict)")
    return src


# ------------------------------------------------------------------------------------------ no official code
def test_alternate_interleaves_and_swaps_the_order(benchmarks):
    from common import alternate

    calls = []
    times = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, CPU, 3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B / B A / A B
    assert [len(t) for t in times.values()] == [3, 3] and all(t >= 0 for t in times["a"] + times["b"])


def test_ratio_summary_gives_both_ratios(benchmarks):
    from common import ratio_summary

    row = ratio_summary([1.0, 2.0, 4.0], [3.0, 2.0, 8.0])
    assert (row["larp_s"], row["official_s"]) == (2.0, 3.0)
    assert row["ratio_official_over_larp"] == 1.5
    assert row["median_pair_ratio"] == 2.0  # pairs 3.0, 1.0, 2.0


def test_a_missing_package_imports_as_a_stand_in(benchmarks):
    import official_code

    name = "larp_test_absent_package_4b1d"
    assert official_code.install_import_stubs((name, "json")) == [name]  # json exists: left alone
    module = importlib.import_module(f"{name}.sub.deeper")
    members = {module.Mode.BILINEAR: "bilinear", module.Mode.BICUBIC: "bicubic"}
    assert len(members) == 2  # enum-like members stay distinct keys
    assert module.Thing(1, key=2) is module.Thing
    assert name in official_code.stubbed_modules()
    assert official_code.install_import_stubs((name,)) == []  # once per process


def test_a_cast_mode_leaves_the_fp32_model_exact(benchmarks):
    import bench_tokenizer

    model = bench_tokenizer.build_tokenizer("larp-tiny", CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cast = bench_tokenizer.in_mode(model, "bf16")
    assert cast is not model and cast.x_embedder.proj.weight.dtype == torch.bfloat16
    assert bench_tokenizer.in_mode(model, "bf16-autocast") is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------ with the official code
def test_tokenizer_matches_the_official_code_at_fp32(benchmarks, tmp_path):
    src = _official_src()
    import bench_tokenizer

    official_cls, official_code = bench_tokenizer.load_official(src)
    assert str(Path(src).resolve()) not in [str(Path(p).resolve()) for p in sys.path if p]  # not left on sys.path
    report = bench_tokenizer.compare_preset("larp-tiny", ["fp32", "bf16"], 2, 1, CPU, official_cls, official_code,
                                            tmp_path)
    fp32, bf16 = report["modes"]
    assert report["parameters"] == report["official_parameters"]
    assert fp32["ids_equal_larp_vs_official"] == 1.0 and fp32["official_ids_equal_to_official_fp32"] == 1.0
    assert fp32["decoded_max_abs_diff"] < 1e-5
    assert fp32["encode"]["larp_s"] > 0 and fp32["encode"]["official_s"] > 0
    assert "float32" in bf16["official_error"]  # the official VQ refuses a bf16 codebook
    assert bf16["larp_ids_equal_to_larp_fp32"] > 0.9


def test_generator_matches_the_official_sampler_greedy(benchmarks, tmp_path):
    src = _official_src()
    import bench_sampling

    official_ar, official_code = bench_sampling.load_official(src)
    case = {"batch": 3, "tokens": 32, "cfg_scale": 1.25}
    row = bench_sampling.compare_with_official("ar-tiny", "tiny", case, 1, 32, CPU, official_ar, official_code,
                                               tmp_path)
    assert row["greedy_check"]["ids_equal"], row["greedy_check"]
    assert row["larp_s"] > 0 and row["official_s"] > 0 and row["tokens"] == 32
