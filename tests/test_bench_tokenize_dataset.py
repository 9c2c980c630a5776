"""benchmarks/bench_tokenize_dataset.py --quick: the counts and the split it reports are consistent."""

from __future__ import annotations

import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_quick_mode_tokenizes_the_generated_folder(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_tokenize_dataset as bench

    record = bench.main(["--quick", "--folder", str(tmp_path / "videos"), "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text()) == json.loads(json.dumps(record))
    (case,) = record["cases"]
    # 6 videos of 20, 17 and 5 frames (twice) in 16-frame windows: 2 + 2 + 1 windows each time
    assert case["preset"] == "larp-tiny" and case["videos"] == 6
    assert case["windows"] == 10 and case["frames"] == 2 * (20 + 17 + 5)
    assert 0 < case["decode_s"] and 0 < case["model_s"] and case["decode_s"] + case["model_s"] <= case["seconds"] + 0.002
    assert abs(case["windows_per_s"] * case["seconds"] - 10) < 0.01 * 10  # both rounded to 3 decimals
    assert case["peak_rss_mb"] >= case["rss_after_model_mb"] > 0
    assert len(list((tmp_path / "videos").glob("video-*.mp4"))) == 6


def test_a_cap_per_preset_limits_the_windows(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_tokenize_dataset as bench

    paths = bench.make_folder(tmp_path, 3, bench.QUICK_MIXES)
    import larp

    tokenizer = larp.LARPTokenizer.from_preset("larp-tiny").eval()
    result = bench.tokenize_folder(tokenizer, paths, batch_size=2, max_windows=1, precision="fp32")
    assert result["windows"] == 3 and result["frames"] == 16 + 16 + 5
    assert bench.parse_max_windows(["larp-l=2"]) == {"larp-l": 2}
