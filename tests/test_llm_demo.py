"""The demo's language-model stage (larp.demo.llm): its measurements, its held-out split and a tiny run."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from larp.data.synthetic import CLASS_NAMES, COLOUR_NAMES, SHAPES, SyntheticVideos, parse_caption
from larp.demo.llm import AttributeProbe, LLMPlan, held_out, measure_objects


def test_measurements_read_the_real_clips():
    data = SyntheticVideos(num_videos=64, seed=11)
    measured = measure_objects(data.get_batch(range(64))["video"])
    truth = data.attributes(range(64))
    assert [m["colour"] for m in measured] == [t["colour"] for t in truth]
    assert sum(m["shape"] == t["shape"] for m, t in zip(measured, truth)) >= 63
    assert measure_objects(torch.zeros(1, 3, 4, 8, 8)) == [{"colour": None, "shape": None, "fill": None, "rgb": None}]


def test_the_held_out_combinations_leave_every_attribute_in_training():
    combos = [(c, s, m) for c in COLOUR_NAMES for s in SHAPES for m in CLASS_NAMES[:4]]
    unseen = [combo for combo in combos if held_out(*combo)]
    assert len(unseen) == 8
    assert sorted((s, m) for _, s, m in unseen) == sorted((s, m) for s in SHAPES for m in CLASS_NAMES[:4])
    seen = [combo for combo in combos if not held_out(*combo)]
    for k, values in enumerate((COLOUR_NAMES, SHAPES, CLASS_NAMES[:4])):
        assert {combo[k] for combo in seen} == set(values)


def test_the_probe_takes_the_nearest_colour_and_the_fill_threshold():
    measured = [{"rgb": [1.0, 0.2, 0.2], "fill": 0.95}, {"rgb": [0.2, 0.2, 1.0], "fill": 0.75},
                {"rgb": [0.9, 0.3, 0.2], "fill": 0.85}, {"rgb": [0.1, 0.3, 1.0], "fill": 0.7}]
    clips = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "circle"},
             {"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "circle"}]
    probe = AttributeProbe(measured, clips)
    assert probe.threshold == pytest.approx((0.9 + 0.725) / 2)
    found = probe.predict([{"rgb": [0.8, 0.1, 0.3], "fill": 0.9}, {"rgb": [0.3, 0.3, 0.9], "fill": 0.8},
                           {"rgb": None, "fill": None}])
    assert found == [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "circle"},
                     {"colour": None, "shape": None}]


@pytest.mark.slow
def test_the_stage_runs_on_a_demo_folder(tmp_path):
    pytest.importorskip("transformers", reason="the LLM stage needs the llm extra: pip install 'larp[llm]'")
    pytest.importorskip("datasets", reason="the LLM stage needs the llm extra: pip install 'larp[llm]'")
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from larp.demo.llm import run_llm_stage
    from larp.evaluation.video_classifier import VideoClassifier, VideoClassifierConfig
    from larp.llm import VideoVocabulary
    from larp.models.tokenizer import LARPTokenizer

    torch.manual_seed(0)
    LARPTokenizer.from_preset("larp-tiny").save_pretrained(tmp_path / "models" / "tokenizer")
    VideoClassifier(VideoClassifierConfig(width=4, feature_dim=8)).save_pretrained(tmp_path / "models" / "detector")
    plan = LLMPlan(train_videos=24, eval_videos=4, steps=2, batch_size=4, hidden_size=16, layers=1, heads=2,
                   samples_shown=2, threads=1)
    results = run_llm_stage(tmp_path, plan=plan, progress=False, echo=lambda line: None)
    out = tmp_path / "llm"
    assert json.loads((out / "results.json").read_text()) == results
    # no training caption names a held-out combination; both orders hold every training clip
    for order in ("text-video", "video-text"):
        captions = pq.read_table(out / "data" / order).column("caption").to_pylist()
        assert len(captions) == 24
        assert not any(held_out(**{k: v for k, v in parse_caption(c).items()}) for c in captions)
    assert len(results["held_out_combinations"]) == 8
    # the scores are fractions of the evaluated clips; the fixed measurements read the real clips exactly
    for group in ("seen", "unseen"):
        for key in ("motion", "colour", "shape"):
            assert Fraction(results["text_to_video"][group][key]).limit_denominator(100).denominator in (1, 2, 4)
        assert results["captioning"][group]["clips"] == 4
    assert results["reference"]["real"]["colour"] == 1.0
    assert results["chance"] == {"motion": 0.25, "colour": 1 / 6, "shape": 0.5, "all": 1 / 48}
    # the model and its vocabulary reload; the report fragment names the chance levels
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    vocab = VideoVocabulary.load(out / "model", tokenizer)
    assert vocab == VideoVocabulary(**{k: results["vocabulary"][k] for k in (
        "base", "codebook_size", "tokens_per_window", "fixed_length", "text_vocab_size", "names")})
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.get_input_embeddings().weight.shape[0] == vocab.end
    fragment = (out / "report.html").read_text()
    assert "chance" in fragment and "0.250" in fragment and "0.167" in fragment
    # a second run with the same plan reuses the results; another plan runs again
    lines = []
    assert run_llm_stage(tmp_path, plan=plan, progress=False, echo=lines.append) == results
    assert lines == [f"  llm: done in an earlier run ({results['seconds']:.0f} s), reused"]


def test_larp_llm_imports_without_transformers():
    """transformers stays optional: the bridge, the CLI and the stage's module import without it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['transformers'] = None; sys.modules['tokenizers'] = None\n"
            "import larp, larp.llm, larp.cli.main, larp.demo.llm\n"
            "from larp.llm import VideoVocabulary\n"
            "v = VideoVocabulary(base=10, codebook_size=4)\n"
            "assert v.decode(v.encode([[3, 0]])) == [[3, 0]]\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
