"""`larp demo`: the quick plan end to end, stage reuse, and the report's PNG plots."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch

import larp
from larp.cli.main import main
from larp.demo.plot import Series, encode_png, line_plot, nice_ticks
from larp.demo.recipes import demo_plan


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal reader for the PNGs encode_png writes (8-bit RGB, filter 0, one IDAT)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks[kind] = body
        pos += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_png_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(_decode_png(encode_png(image)), image)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.astype(np.float32))


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    ticks = nice_ticks(12.3, 22.9)
    assert ticks[0] <= 12.3 and ticks[-1] >= 22.9 and np.allclose(np.diff(ticks), 5) and len(ticks) <= 8
    assert nice_ticks(5, 5)[0] <= 5 <= nice_ticks(5, 5)[-1]  # a flat series still gets an axis


def test_line_plot_draws_each_series_in_its_colour():
    red, blue = (200, 0, 0), (0, 0, 200)
    image = line_plot([Series("up", [0, 1, 2], [0, 1, 2], color=red), Series("flat", [0, 2], [1, 1], color=blue)],
                      title="t", xlabel="x", ylabel="y", size=(320, 200))
    assert image.shape == (200, 320, 3) and image.dtype == np.uint8
    for color in (red, blue):
        assert (image == color).all(-1).sum() > 50  # a line, not a dot
    with pytest.raises(ValueError, match="differ in length"):
        line_plot([Series("bad", [0, 1], [0])])


def test_demo_quick_end_to_end_then_reuses_its_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report: " in printed and "not applied" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    html = (out / "report.html").read_text()
    # every GIF and plot the report shows exists and is a real file of its kind
    for src in __import__("re").findall(r'src="([^"]+)"', html):
        data = (out / src).read_bytes()
        assert data[:6] in (b"GIF89a", b"GIF87a") or data[:8] == b"\x89PNG\r\n\x1a\n", src
    assert len(metrics["media"]["samples"]) == 4 and "psnr_vs_tokens" in metrics["plots"]
    assert _decode_png((out / metrics["plots"]["psnr_vs_tokens"]).read_bytes()).shape[2] == 3
    ev = metrics["evaluation"]
    assert [row["tokens"] for row in ev["token_budgets"]] == list(demo_plan(out, quick=True).token_budgets)
    for task in ("reconstruction", "generation", "prediction"):
        assert 0.0 <= ev[task]["class_accuracy"] <= 1.0 and ev[task]["fvd"] >= 0.0
    assert metrics["bars"]["samples"]["applies"] is False
    assert set(metrics["timings"]) >= {"tokenizer", "generator", "predictor", "evaluate"}

    # the models load with from_pretrained and work together
    tokenizer = larp.LARPTokenizer.from_pretrained(metrics["models"]["tokenizer"])
    generator = larp.LARPGenerator.from_pretrained(metrics["models"]["generator"])
    predictor = larp.LARPGenerator.from_pretrained(metrics["models"]["frame-predictor"])
    ids = generator.generate(torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0))
    assert tokenizer.decode(ids).shape == (2, 3, 16, 32, 32)
    assert predictor.config.frame_prediction and not generator.config.frame_prediction

    # a second run reuses every stage; a different plan in the same folder is refused
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reused") == 7
    assert main(["demo", "--out", str(out)]) == 1
    assert "--fresh" in capsys.readouterr().err


def test_demo_resumes_after_a_failed_stage(tmp_path, monkeypatch, capsys):
    from larp.demo import pipeline

    out = tmp_path / "demo"
    calls = []

    def broken(ctx):
        calls.append("media")
        raise RuntimeError("disk full")

    monkeypatch.setitem(pipeline._STAGE_FUNCTIONS, "media", broken)
    assert main(["-q", "demo", "--quick", "--out", str(out)]) == 1
    assert "disk full" in capsys.readouterr().err
    state = json.loads((out / "stages.json").read_text())
    assert list(state["stages"]) == ["detector", "tokenizer", "generator", "predictor", "evaluate"]
    monkeypatch.undo()
    assert main(["-q", "demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == 5 and (out / "report.html").is_file()
