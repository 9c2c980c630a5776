"""Sampling from a :class:`~larp.models.generator.LARPGenerator` (LARP.md D.4).

Free functions: logit filtering (top-k, HF-style nucleus top-p), one sampling step without a host
round trip (an exponential race: ``argmax(logits - log E)`` with ``E ~ Exp(1)`` draws from
``softmax(logits)``, instead of ``torch.multinomial``; reproducible with a ``torch.Generator``), and
:func:`generate`, the official decoding loop with an explicit KV cache and classifier-free guidance on raw
logits.

Decoding is split as in gpt-fast: :func:`prefill` runs the conditioning prefix through the KV cache, and
:func:`decode_step` feeds one token and samples the next. The decode step reads nothing back to the host
and has no graph break, so ``torch.compile(decode_step, fullgraph=True)`` compiles it whole (on CUDA with
``mode="reduce-overhead"``: CUDA graphs); ``generate(..., compile=True)`` does that. Everything that is not
device work stays outside the step and runs once per call: the input checks (one host sync to read the
condition's value range), the causal mask (built with the cache), the cache allocation in the compute
dtype (so the step casts nothing but the logits to float32 for sampling). The position is one device
tensor of one element, advanced in place after each step. The step's sampling noise is drawn outside it
(the same ``exponential_`` call on the same generator as before, so a seed gives the same tokens compiled
or not); with a ``generator`` on the model's device it is drawn there. A generator on another device (a
CPU one with a CUDA model) draws each step's noise where it lives, so a seed draws the same noise whatever
the model's device; that noise is made on the host and copied (from pinned memory, without blocking).
The early stop of end-of-window models (a host read every ``EOW_CHECK_EVERY`` steps) is outside the step.
"""

from __future__ import annotations

import torch

EOW_CHECK_EVERY = 8  # decode steps between the checks whether every window has ended (a host sync each)

__all__ = [
    "EOW_CHECK_EVERY", "compiled_decode_step", "decode_step", "filter_logits", "generate", "prefill", "sample_logits",
    "top_k_filter", "top_p_filter",
]


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep logits >= the k-th largest along the last dim (ties kept), the rest -inf. ``top_k <= 0``: no-op."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """HF nucleus filtering: drop tokens whose cumulative probability (descending) exceeds ``top_p``,
    shifted right so that the first token crossing the threshold is kept. ``top_p >= 1``: no-op."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits.float(), dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative > top_p
    remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k, then top-p (the official order)."""
    return top_p_filter(top_k_filter(logits, top_k), top_p)


def _check_options(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one id per row of ``logits`` (..., V) -> int64 (...). ``top_k == 1`` or ``temperature == 0``
    is greedy (argmax). Reproducible for a given ``generator``; no host sync when the generator is on the
    logits' device (or None)."""
    _check_options(temperature, top_k, top_p)
    return _sample(logits, temperature, top_k, top_p, generator)


def _sample(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """:func:`sample_logits` without the option checks (done once per :func:`generate` call)."""
    noise = None if _greedy(temperature, top_k) else _exponential_noise(logits.shape, logits.device, generator)
    return _sample_with_noise(logits, temperature, top_k, top_p, noise)


def _greedy(temperature: float, top_k: int) -> bool:
    return top_k == 1 or temperature == 0


def _sample_with_noise(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Draw with given Exp(1) ``noise`` (float32, the logits' shape; None when greedy): device work only."""
    if _greedy(temperature, top_k):
        return logits.argmax(dim=-1)
    logits = logits.float() / max(temperature, 1e-5)  # sample in float32 whatever the compute dtype
    logits = filter_logits(logits, top_k, top_p)
    return (logits - noise.log()).argmax(dim=-1)


def _exponential_noise(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Exp(1) draws (float32, ``shape``) on ``device``, made by ``generator`` on the generator's own device."""
    if generator is None or generator.device == device:
        return torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=generator)
    # Drawn where the generator lives (the same numbers as on that device), then copied. Pinned host
    # memory makes the copy asynchronous; the caching host allocator keeps the buffer until it is done.
    pinned = generator.device.type == "cpu" and device.type == "cuda"
    noise = torch.empty(shape, dtype=torch.float32, device=generator.device, pin_memory=pinned)
    return noise.exponential_(generator=generator).to(device, non_blocking=pinned)


def _compute_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype attention computes in: the autocast dtype when autocast is on for ``device``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


# ------------------------------------------------------------------------------------------ decoding
def prefill(model, prefix: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Run the conditioning embeddings ``prefix`` (rows, s, dim) at ``positions`` (s,) through the model's KV
    cache (``model.setup_cache`` first) -> the logits (rows, V) that predict the first token."""
    return model.forward_step(prefix, positions)[:, -1]


def _pick(
    logits: torch.Tensor,
    noise: torch.Tensor | None,
    *,
    copies: int,
    guidance: float | None,
    eow_cut: int | None,
    temperature: float,
    top_k: int,
    top_p: float,
) -> torch.Tensor:
    """One id per sample from logits (copies * b, V): with ``copies == 2`` the rows are [conditional; null
    class], mixed by classifier-free guidance when ``guidance`` is a scale, else the conditional half is
    sampled; ``eow_cut`` keeps the ids below it (EOW excluded)."""
    if copies > 1:
        cond_logits, uncond_logits = logits.split(logits.shape[0] // copies)
        logits = cond_logits if guidance is None else uncond_logits + (cond_logits - uncond_logits) * guidance
    if eow_cut is not None:
        logits = logits[..., :eow_cut]  # a window has at least one id; the N-th id ends it without EOW
    return _sample_with_noise(logits, temperature, top_k, top_p, noise)


def decode_step(
    model,
    token: torch.Tensor,
    input_pos: torch.Tensor,
    noise: torch.Tensor | None,
    *,
    copies: int = 1,
    guidance: float | None = None,
    eow_cut: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Feed the last ids ``token`` (b,) at position ``input_pos`` (a 1-element device tensor) through the KV
    cache and draw the next ids (b,). Device work only: no host read, no graph break, no cast but the
    logits' to float32, so ``torch.compile(decode_step, fullgraph=True)`` compiles it whole
    (:func:`compiled_decode_step`).

    Args:
        model: a ``LARPGenerator`` with its KV cache set up for ``copies * b`` rows and the prefix prefilled.
        noise: Exp(1) draws, float32 (b, V') with V' the ids sampled from (the output size, or ``eow_cut``);
            None when greedy (``top_k == 1`` or ``temperature == 0``).
        copies: 2 when the cache holds each row twice (conditional, then null class) for CFG, else 1.
        guidance: the CFG scale when this step is guided; None samples from the conditional rows.
        eow_cut: sample among the ids below it (an end-of-window model's last position excludes EOW).
        temperature, top_k, top_p: as :func:`sample_logits` (checked by the caller).
    """
    fed = token.repeat(copies)[:, None]
    logits = model.forward_step(model.embed_tokens(fed), input_pos)[:, -1]
    return _pick(logits, noise, copies=copies, guidance=guidance, eow_cut=eow_cut, temperature=temperature,
                 top_k=top_k, top_p=top_p)


_BACKENDS = ("eager", "aot_eager")  # no code generation: graph capture only (proves fullgraph; for debugging)
_COMPILED: dict[tuple[str, str | None], object] = {}


def compiled_decode_step(mode: str | None = None, backend: str = "inductor"):
    """:func:`decode_step` under ``torch.compile(fullgraph=True, dynamic=False)`` (one compiled callable per
    (backend, mode), kept for the process, so later ``generate`` calls reuse its graphs). ``mode`` is an
    inductor mode; "reduce-overhead" captures the step in a CUDA graph on CUDA (gpt-fast's decoding). Each
    batch size (and CFG / end-of-window branch) is one graph; ``torch._dynamo.reset()`` frees them all."""
    key = (backend, mode)
    if key not in _COMPILED:
        options = {"mode": mode} if backend == "inductor" else {}
        _COMPILED[key] = torch.compile(decode_step, fullgraph=True, dynamic=False, backend=backend, **options)
    return _COMPILED[key]


def _resolve_compile(compile: bool | str, device: torch.device) -> tuple[str, str | None] | None:
    """``generate``'s ``compile`` option -> (backend, mode), or None for eager decoding."""
    if compile is False:
        return None
    if compile is True:
        return "inductor", ("reduce-overhead" if device.type == "cuda" else None)
    modes = tuple(torch._inductor.list_mode_options())
    if isinstance(compile, str) and compile in modes:
        return "inductor", compile
    if isinstance(compile, str) and compile in _BACKENDS:
        return compile, None
    raise ValueError(f"compile must be True, False, an inductor mode {list(modes)} or a backend {list(_BACKENDS)}, "
                     f"got {compile!r}")


@torch.no_grad()
def generate(
    model,
    cond: torch.Tensor,
    *,
    cfg_scale: float = 1.0,
    cfg_interval: int = -1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    return_lengths: bool = False,
    compile: bool | str = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample ``max_seq_len`` token ids per condition -> int64 (b, max_seq_len).

    An ``end_of_window`` model samples variable-length windows: a row ends when it draws the end-of-window
    id (never as its first id; a row that reaches ``max_seq_len`` ids ends there, EOW being impossible at the
    last position); its ids past the end are -1. Finished rows are fed a placeholder so the batch goes on,
    and decoding stops once every row has ended (checked every ``EOW_CHECK_EVERY`` steps: one host sync each).

    Args:
        model: a ``LARPGenerator`` (run in eval mode here; its mode is restored afterwards).
        cond: class ids (b,) for a class-conditional model; condition-clip token ids (b, max_seq_len),
            without SEP, for frame prediction.
        cfg_scale: classifier-free guidance on raw logits, ``uncond + s * (cond - uncond)`` with the null
            class (class-conditional only; the batch is doubled). 1 = off.
        cfg_interval: -1 = guidance for every token; otherwise only for the first ``cfg_interval + 2``
            tokens (the official rule: the prefill token, then decode steps ``i <= cfg_interval``).
        temperature, top_k, top_p: as :func:`sample_logits`; ``top_k=1`` is greedy.
        generator: a ``torch.Generator`` for reproducible sampling.
        use_cache: decode with the KV cache (default) or recompute the whole prefix at each step.
        return_lengths: also return each window's length (b,) (``max_seq_len`` for a fixed-length model).
        compile: run the decode step compiled (:func:`compiled_decode_step`, ``fullgraph=True``; the same
            tokens as eager for a seed, up to floating-point differences of the generated code). True: inductor,
            with CUDA graphs ("reduce-overhead") on CUDA; or an inductor mode name, or "eager"/"aot_eager"
            (graph capture without code generation). The first call of a shape compiles (seconds to minutes);
            later calls reuse it. Needs ``use_cache``.

    Returns:
        ids (b, max_seq_len), or (ids, lengths) with ``return_lengths``.

    Raises:
        ValueError: invalid condition or options, CFG requested for a frame-prediction model or one
            without a null class.
    """
    config = model.config
    # Every check happens here, once: the decode loop below queues device work only.
    _check_options(temperature, top_k, top_p)
    model.check_condition(cond)  # the one host sync of the call (reads the class-id / token range)
    use_cfg = float(cfg_scale) != 1.0
    if use_cfg and config.frame_prediction:
        raise ValueError("classifier-free guidance is not available for frame prediction (use cfg_scale=1)")
    if use_cfg and not config.has_null_class:
        raise ValueError("this model has no null class (class_dropout_prob = 0), so cfg_scale must be 1")
    if isinstance(cfg_interval, bool) or not isinstance(cfg_interval, int) or cfg_interval < -1:
        raise ValueError(f"cfg_interval must be an integer >= -1, got {cfg_interval!r}")

    batch = cond.shape[0]
    n_tokens, prefix_len = config.max_seq_len, config.cls_token_num
    device = model.tok_embeddings.weight.device
    compiled = _resolve_compile(compile, device)
    if compiled is not None and not use_cache:
        raise ValueError("compile needs the KV cache (use_cache=True): the uncached loop has a new shape every step")
    cond = cond.to(device)
    if use_cfg:
        cond = torch.cat([cond, torch.full_like(cond, config.null_class)])
    rows = cond.shape[0]
    eow = config.eow_token if getattr(config, "end_of_window", False) else None
    greedy = _greedy(temperature, top_k)
    sampling = dict(copies=rows // batch, temperature=temperature, top_k=top_k, top_p=top_p)

    def step_options(n: int) -> dict:
        """Guidance and EOW cut of the id sampled at step n (Python values: a compiled step specialises on
        them, one graph per combination: at most guided/unguided x with/without the EOW cut)."""
        guided = use_cfg and (cfg_interval < 0 or n == 0 or n - 1 <= cfg_interval)
        cut = eow is not None and (n == 0 or n == n_tokens - 1)
        return dict(guidance=float(cfg_scale) if guided else None, eow_cut=eow if cut else None)

    def noise(options: dict) -> torch.Tensor | None:
        """The step's Exp(1) noise, drawn outside the (compilable) step from ``generator``."""
        if greedy:
            return None
        size = options["eow_cut"] if options["eow_cut"] is not None else config.output_size
        return _exponential_noise(torch.Size((batch, size)), device, generator)

    done = torch.zeros(batch, dtype=torch.bool, device=device) if eow is not None else None

    def emit(token: torch.Tensor, n: int) -> torch.Tensor:
        """Record the id sampled at step n; return the id to feed back (EOW models: -1 past a row's end in
        ``out``, and a placeholder 0 fed for ended rows)."""
        if done is None:
            out[:, n] = token
            return token
        done.logical_or_(token == eow)
        out[:, n] = token.masked_fill(done, -1)
        return token.masked_fill(done, 0)

    def all_done(n: int) -> bool:
        return done is not None and (n + 1) % EOW_CHECK_EVERY == 0 and bool(done.all())

    was_training = model.training
    model.eval()
    if eow is None:
        out = torch.empty(batch, n_tokens, dtype=torch.long, device=device)
    else:  # -1 wherever no id is written: past each row's end, and every step after all rows ended
        out = torch.full((batch, n_tokens), -1, dtype=torch.long, device=device)
    try:
        prefix = model.embed_condition(cond)
        if use_cache:
            seq_len = prefix_len + n_tokens - 1  # the last token is sampled, never fed back
            model.setup_cache(rows, seq_len, dtype=_compute_dtype(device, prefix.dtype), device=device)
            step = decode_step
            if compiled is not None:
                step = compiled_decode_step(compiled[1], backend=compiled[0])
                if compiled[1] in ("reduce-overhead", "max-autotune"):  # the modes that capture CUDA graphs
                    for tensor in model.cache_tensors():  # updated in place inside the CUDA graph
                        torch._dynamo.mark_static_address(tensor)
            options = step_options(0)
            logits = prefill(model, prefix, torch.arange(prefix_len, device=device))
            token = emit(_pick(logits, noise(options), **options, **sampling), 0)
            input_pos = torch.full((1,), prefix_len, dtype=torch.long, device=device)  # advanced in place
            for n in range(1, n_tokens):
                if all_done(n - 1):
                    break
                options = step_options(n)
                if compiled is not None:
                    torch.compiler.cudagraph_mark_step_begin()
                sampled = step(model, token, input_pos, noise(options), **options, **sampling)
                if compiled is not None:
                    sampled = sampled.clone()  # a CUDA graph's output is overwritten by its next replay
                token = emit(sampled, n)
                input_pos += 1
        else:
            h = prefix
            for n in range(n_tokens):
                options = step_options(n)
                token = emit(_pick(model.forward_embeddings(h)[:, -1], noise(options), **options, **sampling), n)
                if n + 1 < n_tokens and not all_done(n):
                    h = torch.cat([h, model.embed_tokens(token.repeat(sampling["copies"])[:, None])], dim=1)
                elif n + 1 < n_tokens:
                    break
    finally:
        if use_cache:
            model.reset_cache()
        model.train(was_training)
    if not return_lengths:
        return out
    lengths = (out >= 0).sum(dim=1) if eow is not None else torch.full((batch,), n_tokens, device=device)
    return out, lengths
