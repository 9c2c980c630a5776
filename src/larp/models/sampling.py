"""Sampling from a :class:`~larp.models.generator.LARPGenerator` (LARP.md D.4).

Free functions: logit filtering (top-k, HF-style nucleus top-p), one sampling step that never syncs with
the host (an exponential race: ``argmax(logits - log E)`` with ``E ~ Exp(1)`` draws from
``softmax(logits)``; reproducible with a ``torch.Generator``), and :func:`generate`, the official
decoding loop with an explicit KV cache and classifier-free guidance on raw logits.
"""

from __future__ import annotations

import torch

__all__ = ["filter_logits", "generate", "sample_logits", "top_k_filter", "top_p_filter"]


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
    is greedy (argmax). No host synchronisation; reproducible for a given ``generator``."""
    _check_options(temperature, top_k, top_p)
    if top_k == 1 or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(temperature, 1e-5)
    logits = filter_logits(logits, top_k, top_p)
    device = generator.device if generator is not None else logits.device
    noise = torch.empty(logits.shape, dtype=torch.float32, device=device).exponential_(generator=generator)
    return (logits - noise.to(logits.device).log()).argmax(dim=-1)


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
) -> torch.Tensor:
    """Sample ``max_seq_len`` token ids per condition -> int64 (b, max_seq_len).

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

    Raises:
        ValueError: invalid condition or options, CFG requested for a frame-prediction model or one
            without a null class.
    """
    config = model.config
    _check_options(temperature, top_k, top_p)
    model.check_condition(cond)
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

    def pick(logits: torch.Tensor, n: int) -> torch.Tensor:
        if use_cfg:
            cond_logits, uncond_logits = logits.split(batch)
            if cfg_interval < 0 or n == 0 or n - 1 <= cfg_interval:
                logits = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
            else:
                logits = cond_logits
        return sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    was_training = model.training
    model.eval()
    out = torch.empty(batch, n_tokens, dtype=torch.long, device=device)
    try:
        prefix = model.embed_condition(cond)
        if use_cache:
            model.setup_cache(rows, prefix_len + n_tokens - 1, dtype=prefix.dtype, device=device)
            logits = model.forward_step(prefix, torch.arange(prefix_len, device=device))[:, -1]
            for n in range(n_tokens):
                token = pick(logits, n)
                out[:, n] = token
                if n + 1 < n_tokens:
                    fed = token.repeat(rows // batch)[:, None]
                    pos = torch.tensor([prefix_len + n], device=device)
                    logits = model.forward_step(model.embed_tokens(fed), pos)[:, -1]
        else:
            h = prefix
            for n in range(n_tokens):
                token = pick(model.forward_embeddings(h)[:, -1], n)
                out[:, n] = token
                if n + 1 < n_tokens:
                    h = torch.cat([h, model.embed_tokens(token.repeat(rows // batch)[:, None])], dim=1)
    finally:
        if use_cache:
            model.reset_cache()
        model.train(was_training)
    return out
