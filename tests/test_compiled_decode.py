"""gpt-fast-style decoding: prefill + a single-token decode step that ``torch.compile(fullgraph=True)`` captures
whole (no graph break, no host read) and that gives the eager tokens for a seed; on CUDA, CUDA graphs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from larp.models import sampling
from larp.models.generator import GENERATOR_PRESETS, LARPGenerator
from larp.models.sampling import compiled_decode_step, decode_step, prefill
from tests.conftest import perturb_

# inductor imports torch.utils.mkldnn, which uses the deprecated torch.jit.script_method (torch's own warning)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch and counts its own graphs."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _model(end_of_window: bool = False, seed: int = 3) -> LARPGenerator:
    torch.manual_seed(seed)
    config = dataclasses.replace(GENERATOR_PRESETS["ar-tiny"], end_of_window=end_of_window)
    model = perturb_(LARPGenerator(config), seed=seed, scale=0.1)
    if end_of_window:  # windows that end early: a bias on the EOW logit
        output = torch.nn.Linear(config.dim, config.output_size)
        with torch.no_grad():
            output.weight.copy_(model.output.weight)
            output.bias.zero_()
            output.bias[config.eow_token] = 3.0
        model.output = output
    return model.eval()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_hand_written_loop_with_a_fullgraph_decode_step_equals_generate():
    """The two public pieces, prefill and decode_step, make generate's tokens; the step compiles with
    fullgraph=True (a graph break would raise) into one graph that every step reuses."""
    model = _model()
    cond = torch.tensor([0, 5, 9])
    options = dict(temperature=0.9, top_k=20, top_p=0.9)
    expected = model.generate(cond, cfg_scale=1.25, generator=torch.Generator().manual_seed(1), **options)

    step = torch.compile(decode_step, fullgraph=True, backend="aot_eager")
    generator = torch.Generator().manual_seed(1)
    config, batch = model.config, cond.shape[0]
    noise = lambda: torch.empty(batch, config.vocab_size).exponential_(generator=generator)  # noqa: E731
    rows = torch.cat([cond, torch.full_like(cond, config.null_class)])
    with torch.no_grad():
        model.setup_cache(2 * batch, config.seq_len)
        logits = prefill(model, model.embed_condition(rows), torch.arange(1))
        tokens = [sampling._pick(logits, noise(), copies=2, guidance=1.25, eow_cut=None, **options)]
        position = torch.ones(1, dtype=torch.long)
        for _ in range(config.max_seq_len - 1):
            tokens.append(step(model, tokens[-1], position, noise(), copies=2, guidance=1.25, **options))
            position += 1
        model.reset_cache()
    assert torch.equal(torch.stack(tokens, dim=1), expected)
    assert _graphs() == 1 and not counters["graph_break"]


def test_generate_compiled_without_code_generation_equals_eager_in_every_branch():
    """CFG with an interval (guided, then unguided steps), end-of-window windows (the last step cannot draw EOW,
    the early stop runs outside the step), greedy: one graph per branch, reused by the next call."""
    model = _model()
    cond = torch.tensor([1, 2, 3, 4])
    kw = dict(cfg_scale=2.0, cfg_interval=3, top_k=8, top_p=0.95)
    eager = model.generate(cond, generator=torch.Generator().manual_seed(2), **kw)
    compiled = model.generate(cond, generator=torch.Generator().manual_seed(2), compile="aot_eager", **kw)
    assert torch.equal(compiled, eager)
    assert _graphs() == 2  # guided and unguided decode steps
    again = model.generate(cond, generator=torch.Generator().manual_seed(2), compile="aot_eager", **kw)
    assert torch.equal(again, eager) and _graphs() == 2  # a second call compiles nothing
    greedy = model.generate(cond[:2], top_k=1, compile="aot_eager")
    assert torch.equal(greedy, model.generate(cond[:2], top_k=1))

    eow = _model(end_of_window=True, seed=5)
    ids, lengths = eow.generate(torch.arange(6), generator=torch.Generator().manual_seed(4), return_lengths=True)
    assert lengths.min() < eow.config.max_seq_len  # windows do end early here
    got, got_lengths = eow.generate(torch.arange(6), generator=torch.Generator().manual_seed(4), return_lengths=True,
                                    compile="aot_eager")
    assert torch.equal(got, ids) and torch.equal(got_lengths, lengths)
    assert not eow.has_cache and not model.has_cache


@pytest.mark.slow  # cold: ~30 s of C++ compilation on a loaded 2-core CPU; ~3 s with inductor's cache warm
def test_inductor_compiled_sampling_gives_the_eager_tokens():
    """The real thing on CPU: inductor code for the decode step (C++), fullgraph, same tokens for a seed."""
    model = _model()
    cond = torch.tensor([0, 5, 9])
    kw = dict(cfg_scale=1.25, temperature=1.0, top_k=20, top_p=0.9)
    eager = model.generate(cond, generator=torch.Generator().manual_seed(1), **kw)
    compiled = model.generate(cond, generator=torch.Generator().manual_seed(1), compile=True, **kw)
    assert torch.equal(compiled, eager)
    assert _graphs() == 1 and not counters["graph_break"]


def test_compile_option_errors_are_clear():
    model = _model()
    with pytest.raises(ValueError, match="compile needs the KV cache"):
        model.generate(torch.tensor([0]), compile=True, use_cache=False)
    with pytest.raises(ValueError, match="inductor mode .* or a backend"):
        model.generate(torch.tensor([0]), compile="fast")
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.cache_tensors()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs, sync debug mode)")
def test_cuda_graph_decoding_equals_eager_and_never_syncs():
    """compile=True on CUDA: inductor + CUDA graphs ("reduce-overhead"); the same tokens as eager for a seed,
    and, once compiled, a whole decode loop under set_sync_debug_mode("error") (a sync would raise)."""
    model = _model().cuda()
    cond = torch.tensor([0, 5, 9], device="cuda")
    kw = dict(cfg_scale=1.25, temperature=1.0, top_k=20, top_p=0.9)
    seed = lambda: torch.Generator("cuda").manual_seed(1)  # noqa: E731
    eager = model.generate(cond, generator=seed(), **kw)
    for _ in range(3):  # compile, warm up, record the CUDA graph
        compiled = model.generate(cond, generator=seed(), compile=True, **kw)
    assert torch.equal(compiled, eager)

    step = compiled_decode_step("reduce-overhead")
    config, batch = model.config, cond.shape[0]
    rows = torch.cat([cond, torch.full_like(cond, config.null_class)])
    generator = seed()
    with torch.no_grad():
        model.setup_cache(2 * batch, config.seq_len)
        for tensor in model.cache_tensors():
            torch._dynamo.mark_static_address(tensor)

        def noise() -> torch.Tensor:
            return torch.empty(batch, config.vocab_size, device="cuda").exponential_(generator=generator)

        logits = prefill(model, model.embed_condition(rows), torch.arange(1, device="cuda"))
        token = sampling._pick(logits, noise(), copies=2, guidance=1.25, eow_cut=None,
                               temperature=1.0, top_k=20, top_p=0.9)
        tokens = [token]
        position = torch.ones(1, dtype=torch.long, device="cuda")
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(config.max_seq_len - 1):
                torch.compiler.cudagraph_mark_step_begin()
                tokens.append(step(model, tokens[-1], position, noise(), copies=2, guidance=1.25,
                                   temperature=1.0, top_k=20, top_p=0.9).clone())
                position += 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
        model.reset_cache()
    assert torch.equal(torch.stack(tokens, dim=1), eager)


def test_sample_cli_compile_flag_reaches_generate_and_keeps_the_ids(tmp_path, tiny_tokenizer, monkeypatch):
    """``larp sample --compile`` samples through the compiled step: the same ids as without the flag. (Graph
    capture only here; the inductor build is tested above.)"""
    import numpy as np

    from larp.cli.main import main

    tokenizer = str(tiny_tokenizer.save_pretrained(tmp_path / "tokenizer"))
    generator = str(_model().save_pretrained(tmp_path / "ar"))
    seen = []
    resolve = sampling._resolve_compile

    def capture_only(compile, device):
        seen.append(compile)
        return resolve("aot_eager" if compile is True else compile, device)

    monkeypatch.setattr(sampling, "_resolve_compile", capture_only)
    ids = {}
    for name, flag in (("eager", []), ("compiled", ["--compile"])):
        args = ["sample", "--generator", generator, "--tokenizer", tokenizer, "--class", "3", "7", "--num", "2",
                "--cfg-scale", "1.5", "--seed", "4", "--batch-size", "4", "-o", str(tmp_path / name), *flag]
        assert main(args) == 0
        ids[name] = np.stack([np.load(tmp_path / name / f"class{c}-{i}.npy") for c in (3, 7) for i in range(2)])
    assert seen == [False, True] and np.array_equal(ids["compiled"], ids["eager"])
    assert _graphs() == 1
