"""Sampling from a :class:`~larp.models.generator.LARPGenerator` (LARP.md D.4).

Free functions: logit filtering (top-k, HF-style nucleus top-p), one sampling step without a host
round trip (an exponential race: ``argmax(logits - log E)`` with ``E ~ Exp(1)`` draws from
``softmax(logits)``, instead of ``torch.multinomial``; reproducible with a ``torch.Generator``), and
:func:`generate`, the official decoding loop with an explicit KV cache and classifier-free guidance on raw
logits.

Host work in :func:`generate` (gpt-fast style): the inputs are checked once per call (one host sync to
read the condition's value range), the positions are one device ``arange`` that the steps slice, the
causal mask is built once with the cache, and the cache is allocated in the compute dtype, so a decode
step only queues device work. With a ``generator`` on the model's device the noise is drawn there too. A
generator on another device (a CPU one with a CUDA model) draws each step's noise where it lives, so a
seed draws the same noise whatever the model's device; that noise is made on the host and copied (from
pinned memory, without blocking) every step.
"""

from __future__ import annotations

import torch

EOW_CHECK_EVERY = 8  # decode steps between the checks whether every window has ended (a host sync each)

__all__ = ["EOW_CHECK_EVERY", "filter_logits", "generate", "sample_logits", "top_k_filter", "top_p_filter"]


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
    if top_k == 1 or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(temperature, 1e-5)  # sample in float32 whatever the compute dtype
    logits = filter_logits(logits, top_k, top_p)
    return (logits - _exponential_noise(logits.shape, logits.device, generator).log()).argmax(dim=-1)


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
    cond = cond.to(device)
    if use_cfg:
        cond = torch.cat([cond, torch.full_like(cond, config.null_class)])
    rows = cond.shape[0]

    eow = config.eow_token if getattr(config, "end_of_window", False) else None

    def pick(logits: torch.Tensor, n: int) -> torch.Tensor:
        if use_cfg:
            cond_logits, uncond_logits = logits.split(batch)
            if cfg_interval < 0 or n == 0 or n - 1 <= cfg_interval:
                logits = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
            else:
                logits = cond_logits
        if eow is not None and (n == 0 or n == n_tokens - 1):
            logits = logits[..., :eow]  # a window has at least one id; the N-th id ends it without EOW
        return _sample(logits, temperature, top_k, top_p, generator)

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
            positions = torch.arange(seq_len, device=device)  # each step feeds a slice of it (a view)
            model.setup_cache(rows, seq_len, dtype=_compute_dtype(device, prefix.dtype), device=device)
            logits = model.forward_step(prefix, positions[:prefix_len])[:, -1]
            for n in range(n_tokens):
                token = emit(pick(logits, n), n)
                if n + 1 < n_tokens and not all_done(n):
                    fed = token.repeat(rows // batch)[:, None]
                    pos = prefix_len + n
                    logits = model.forward_step(model.embed_tokens(fed), positions[pos : pos + 1])[:, -1]
                elif n + 1 < n_tokens:
                    break
        else:
            h = prefix
            for n in range(n_tokens):
                token = emit(pick(model.forward_embeddings(h)[:, -1], n), n)
                if n + 1 < n_tokens and not all_done(n):
                    h = torch.cat([h, model.embed_tokens(token.repeat(rows // batch)[:, None])], dim=1)
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
