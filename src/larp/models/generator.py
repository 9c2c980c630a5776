"""The LARP autoregressive generator ("llama-abs-*", LARP.md D.1-D.4).

A Llama-style decoder-only transformer over LARP token ids: pre-norm blocks with RMSNorm (computed in
float32), multi-head attention without RoPE, SwiGLU feed-forward, and a *learned absolute* position
table added after the token dropout. Two variants share the code:

- class-conditional: the sequence starts with one class embedding (``cls_embedding``; its last row is
  the null class used for classifier-free guidance), ``cls_token_num = 1``;
- frame prediction (FP): the sequence starts with the condition clip's ``max_seq_len`` token ids and a
  SEP token (id ``vocab_size``, one extra row in ``tok_embeddings``), ``cls_token_num = max_seq_len + 1``.

Variable-length windows (``end_of_window=True``, beyond the paper; AdapTok's block separator): a window of a
nested-dropout tokenizer may keep only its first k of N ids. Such a generator predicts one more id, the
end-of-window token EOW = ``vocab_size`` (the codebook size; the output layer has ``vocab_size + 1`` rows),
after a window's k < N ids; a window that reaches N ids ends without it. Inputs are the ids padded with -1
past each window's length (the token files' and ``TokenWindows``' layout); :meth:`LARPGenerator.targets`
makes the training targets (the ids, EOW, then ignored positions). EOW is never fed back (a sequence ends
there), so the input table is unchanged. In a frame-prediction model the same number is the SEP *input* id;
EOW is an *output* id only. Such a model has no official format.

Parameter names equal the official state-dict keys, so official checkpoints load strictly. The KV cache
is a separate object (``setup_cache`` / ``reset_cache``), never part of ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from larp.compat import official
from larp.config import config_from_dict, config_to_dict
from larp.hub import PretrainedMixin
from larp.models import sampling


IGNORE = -100  # target of the positions after a window's end (F.cross_entropy's default ignore_index)


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a LARP AR generator (official ``ModelArgs`` names). Defaults: ``llama-abs-LP``, UCF."""

    dim: int = 1280
    n_layer: int = 30
    n_head: int = 20
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    token_dropout_p: float = 0.1
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    num_classes: int = 101
    class_dropout_prob: float = 0.1
    vocab_size: int = 8192  # codebook size of the tokenizer
    max_seq_len: int = 1024  # tokens per video
    frame_prediction: bool = False
    initializer_range: float = 0.02
    # Variable-length windows: predict an end-of-window token (id vocab_size) after a window's ids, so that
    # windows of fewer than max_seq_len ids (adaptive token budgets) are modelled. False: every window has
    # max_seq_len ids (the paper; checkpoints without this field).
    end_of_window: bool = False

    def __post_init__(self):
        problems = []
        if min(self.dim, self.n_layer, self.n_head, self.vocab_size, self.max_seq_len, self.multiple_of) < 1:
            problems.append("dim, n_layer, n_head, vocab_size, max_seq_len and multiple_of must be positive")
        elif self.dim % self.n_head:
            problems.append(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if not self.frame_prediction and self.num_classes < 1:
            problems.append("a class-conditional generator needs num_classes >= 1")
        for name in ("token_dropout_p", "resid_dropout_p", "ffn_dropout_p", "attn_dropout_p", "class_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1)")
        if problems:
            raise ValueError("invalid GeneratorConfig: " + "; ".join(problems))

    @property
    def cls_token_num(self) -> int:
        """Conditioning positions before the first generated token: 1 (class) or max_seq_len + 1 (clip + SEP)."""
        return self.max_seq_len + 1 if self.frame_prediction else 1

    @property
    def seq_len(self) -> int:
        """Length of the model's input sequence (rows of ``abs_pe``)."""
        return self.max_seq_len + self.cls_token_num - 1

    @property
    def sep_token(self) -> int:
        return self.vocab_size

    @property
    def eow_token(self) -> int:
        """The end-of-window output id (``end_of_window`` models): the codebook size."""
        return self.vocab_size

    @property
    def output_size(self) -> int:
        """Ids the model predicts: the codebook, plus EOW for ``end_of_window`` models."""
        return self.vocab_size + int(self.end_of_window)

    @property
    def has_null_class(self) -> bool:
        return not self.frame_prediction and self.class_dropout_prob > 0

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)


_SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "LP": (30, 1280, 20),
    "XL": (36, 1280, 20),
    "XXL": (48, 1536, 24),
    "XXXL": (48, 2560, 40),
}

GENERATOR_PRESETS: dict[str, GeneratorConfig] = {}
for _name, (_layers, _dim, _heads) in _SIZES.items():
    GENERATOR_PRESETS[f"llama-abs-{_name}"] = GeneratorConfig(dim=_dim, n_layer=_layers, n_head=_heads)
    GENERATOR_PRESETS[f"llama-abs-{_name}-fp"] = GeneratorConfig(
        dim=_dim, n_layer=_layers, n_head=_heads, frame_prediction=True
    )
GENERATOR_PRESETS["ar-tiny"] = GeneratorConfig(
    dim=64, n_layer=2, n_head=4, vocab_size=256, max_seq_len=32, num_classes=10
)
GENERATOR_PRESETS["ar-fp-tiny"] = GeneratorConfig(
    dim=64, n_layer=2, n_head=4, vocab_size=256, max_seq_len=32, frame_prediction=True
)

# ---------------------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps)`` in float32, cast back, times the weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        hidden = config.ffn_hidden
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache:
    """Keys and values of one attention layer, (batch, heads, max_len, head_dim). Not a module.

    Allocate it in the dtype the attention computes in (what ``generate`` does), so that ``update`` and
    the read-back in ``Attention`` cast nothing (``Tensor.to`` of the same dtype is a no-op).
    """

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.dim // config.n_head
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (b, s, dim) -> (b, s, dim). Without a cache: causal over the s positions. With one: the s new
        positions ``input_pos`` (s,) attend to the cached keys where ``mask`` (s, max_len) is True."""
        b, s, d = x.shape
        q, k, v = self.wqkv(x).view(b, s, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.attn_dropout_p if self.training else 0.0
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v = cache.update(input_pos, k, v)
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, dropout_p=dropout)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, s, d)))


class TransformerBlock(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x, cache=None, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), cache, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class table; row ``num_classes`` is the null class when class dropout is on."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.embedding_table = nn.Embedding(config.num_classes + int(config.has_null_class), config.dim)


# ---------------------------------------------------------------------------------------------- model
def _value_ranges(*tensors: torch.Tensor) -> list[tuple[int, int] | None]:
    """(min, max) of each integer tensor (None for an empty one), read back with ONE host sync for all."""
    stats = [torch.stack(t.aminmax()).long() for t in tensors if t.numel()]
    values = iter(torch.cat(stats).tolist() if stats else [])
    return [(next(values), next(values)) if t.numel() else None for t in tensors]


class LARPGenerator(PretrainedMixin, nn.Module):
    """LARP AR generator. Token ids are int64 (b, N) with ``N = config.max_seq_len``.

    - ``forward(tokens, cond)``: teacher-forced logits (b, N, vocab_size); position i predicts token i.
      ``cond`` is class ids (b,) for a class-conditional model, or the condition clip's token ids (b, N)
      for frame prediction (the model appends SEP itself).
    - ``generate(cond, ...)``: sampling, see :func:`larp.models.sampling.generate`.
    - ``setup_cache`` / ``forward_step`` / ``reset_cache``: explicit KV-cache decoding (gpt-fast style).
    """

    config_class = GeneratorConfig
    presets = GENERATOR_PRESETS

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        if not config.frame_prediction:
            self.cls_embedding = LabelEmbedder(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size + int(config.frame_prediction), config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        self.abs_pe = nn.Parameter(torch.empty(1, config.seq_len, config.dim))
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.output_size, bias=False)
        self._caches: list[KVCache] | None = None
        self._causal_mask: torch.Tensor | None = None  # (max_len, max_len) bool, with the caches
        self.init_weights()

    # ------------------------------------------------------------------ construction / formats
    def init_weights(self) -> None:
        """Official init: Linear/Embedding weights and ``abs_pe`` N(0, 0.02^2), RMSNorm 1, ``output`` zero."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        nn.init.normal_(self.abs_pe, std=0.02)
        nn.init.zeros_(self.output.weight)

    @classmethod
    def config_from_official(cls, data: dict) -> GeneratorConfig:
        """The config of an official flat ``ModelArgs`` dict (see :mod:`larp.compat.official`)."""
        config = config_from_dict(GeneratorConfig, official.generator_fields_from_official(data))
        if "cls_token_num" in data and data["cls_token_num"] != config.cls_token_num:
            kind = "frame-prediction" if config.frame_prediction else "class-conditional"
            raise ValueError(
                f"official generator config: cls_token_num {data['cls_token_num']} does not fit a {kind} model "
                f"with max_seq_len {config.max_seq_len} (expected {config.cls_token_num})"
            )
        return config

    @classmethod
    def config_to_official(cls, config: GeneratorConfig) -> dict:
        """The official flat ``ModelArgs`` dict of ``config`` (readable by ``LARP_AR.from_pretrained``)."""
        if config.end_of_window:
            raise ValueError("a generator with end_of_window has no official format (the official code has no "
                             "end-of-window token): save it with official_format=False")
        return official.generator_fields_to_official(config_to_dict(config), cls_token_num=config.cls_token_num)

    # ------------------------------------------------------------------ validation
    # Layout checks (dtype, shape) read only metadata. Value-range checks must read values back to the host,
    # a sync with an accelerator, so each public entry point reads all its ranges at once (`_value_ranges`):
    # one sync per `forward` call (none with check_values=False), one per `generate` call, none per decode step.
    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens", length: int | None = None) -> None:
        """Raise ValueError unless ``tokens`` is an int (b, length) tensor of ids in [0, vocab_size)."""
        self._check_token_layout(tokens, name, length)
        self._check_token_range(name, *_value_ranges(tokens))

    def check_condition(self, cond: torch.Tensor, batch: int | None = None) -> None:
        """Raise ValueError unless ``cond`` is valid for this model: class ids (b,) for a class-conditional
        model, the condition clip's token ids (b, max_seq_len) without SEP for frame prediction."""
        self._check_condition_layout(cond, batch)
        self._check_condition_range(*_value_ranges(cond))

    def _check_token_layout(self, tokens: torch.Tensor, name: str, length: int | None) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an int64 tensor of token ids, got {getattr(tokens, 'dtype', type(tokens))}")
        if tokens.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, length), got {tuple(tokens.shape)}")
        if length is not None and tokens.shape[1] != length:
            raise ValueError(f"{name} must have {length} tokens per video (max_seq_len), got {tokens.shape[1]}")

    def _check_token_range(self, name: str, value_range: tuple[int, int] | None, padded: bool = False) -> None:
        vocab = self.config.vocab_size
        if padded and value_range is not None and value_range[0] >= -1 and value_range[1] < vocab:
            return  # -1: past a window's length (end_of_window models)
        if value_range is not None and (value_range[0] < 0 or value_range[1] >= vocab):
            raise ValueError(f"{name} must be ids in [0, {vocab}), got range [{value_range[0]}, {value_range[1]}]")

    def _check_condition_layout(self, cond: torch.Tensor, batch: int | None) -> None:
        cfg = self.config
        if cfg.frame_prediction:
            if isinstance(cond, torch.Tensor) and cond.dim() == 2 and cond.shape[1] == cfg.max_seq_len + 1:
                raise ValueError(
                    f"cond has {cond.shape[1]} positions: pass the {cfg.max_seq_len} condition-clip token ids "
                    f"without the SEP token (the model appends SEP = {cfg.sep_token} itself)"
                )
            self._check_token_layout(cond, "cond (condition-clip token ids)", cfg.max_seq_len)
        else:
            if not isinstance(cond, torch.Tensor) or cond.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"cond must be an int64 tensor of class ids, got {getattr(cond, 'dtype', type(cond))}")
            if cond.dim() != 1:
                raise ValueError(f"cond must be class ids of shape (batch,), got {tuple(cond.shape)}")
        if batch is not None and cond.shape[0] != batch:
            raise ValueError(f"cond has batch {cond.shape[0]} but tokens have batch {batch}")

    def _check_condition_range(self, value_range: tuple[int, int] | None) -> None:
        cfg = self.config
        if cfg.frame_prediction:
            self._check_token_range("cond (condition-clip token ids)", value_range)
            return
        top = cfg.num_classes + int(cfg.has_null_class)
        if value_range is not None and (value_range[0] < 0 or value_range[1] >= top):
            null = f" (the null class {cfg.null_class} included)" if cfg.has_null_class else ""
            raise ValueError(f"class ids must be in [0, {top}){null}, got range [{value_range[0]}, {value_range[1]}]")

    # ------------------------------------------------------------------ embeddings
    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Embeddings of the conditioning prefix, (b, cls_token_num, dim). Class dropout is not applied here."""
        if self.config.frame_prediction:
            sep = torch.full((cond.shape[0], 1), self.config.sep_token, dtype=torch.long, device=cond.device)
            return self.tok_embeddings(torch.cat([cond.long(), sep], dim=1))
        return self.cls_embedding.embedding_table(cond.long())[:, None]

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens.long())

    def drop_classes(self, cond: torch.Tensor) -> torch.Tensor:
        """Training-time CFG dropout: each label becomes the null class with ``class_dropout_prob``."""
        p = self.config.class_dropout_prob
        if not self.training or p <= 0 or self.config.frame_prediction:
            return cond
        drop = torch.rand(cond.shape, device=cond.device) < p
        return torch.where(drop, torch.full_like(cond, self.config.null_class), cond)

    def _trunk(self, h: torch.Tensor, input_pos: torch.Tensor | None) -> torch.Tensor:
        """Embeddings (b, s, dim) -> logits (b, s, V); with ``input_pos`` (s,) through the KV cache."""
        h = self.tok_dropout(h)
        if input_pos is None:
            h = h + self.abs_pe[:, : h.shape[1]]
            for layer in self.layers:
                h = layer(h)
        else:
            # Positions stay on the device: indexing with them queues gathers, no host round trip.
            h = h + self.abs_pe[0, input_pos]
            mask = self._causal_mask[input_pos]  # (s, max_len), shared by all layers
            for layer, cache in zip(self.layers, self._caches):
                h = layer(h, cache, input_pos, mask)
        return self.output(self.norm(h))

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, *, check_values: bool = True) -> torch.Tensor:
        """Teacher-forced logits (b, N, output_size): position i predicts ``tokens[:, i]`` (an
        ``end_of_window`` model: ``targets(tokens)[:, i]``; its ``tokens`` may hold -1 past each window's
        length, and positions past a window's EOW see arbitrary inputs, their logits are to be ignored).

        Shapes and dtypes are always checked (no sync). The value ranges of both inputs are read back
        together, one host sync per call; a training loop whose data was validated once (a checked token
        cache) passes ``check_values=False`` to run its steps without that sync. An out-of-range id then
        fails inside the embedding lookup instead of with this message.
        """
        self._check_token_layout(tokens, "tokens", self.config.max_seq_len)
        self._check_condition_layout(cond, tokens.shape[0])
        if check_values:
            token_range, cond_range = _value_ranges(tokens, cond)
            self._check_token_range("tokens", token_range, padded=self.config.end_of_window)
            self._check_condition_range(cond_range)
        if not self.config.frame_prediction:
            cond = self.drop_classes(cond)
        inputs = tokens[:, :-1].clamp(min=0) if self.config.end_of_window else tokens[:, :-1]
        h = torch.cat([self.embed_condition(cond), self.embed_tokens(inputs)], dim=1)
        return self.forward_embeddings(h)[:, self.config.cls_token_num - 1 :]

    def targets(self, tokens: torch.Tensor) -> torch.Tensor:
        """Training targets (b, N) of token rows (b, N) padded with -1 past each window's length: the ids, EOW
        at the first -1 (a window of k < N ids), ``IGNORE`` (-100, ``cross_entropy``'s ignore index) after
        it. A model without ``end_of_window``: the rows themselves."""
        if not self.config.end_of_window:
            return tokens
        padded = tokens < 0
        first = padded & ~torch.cat([torch.zeros_like(padded[:, :1]), padded[:, :-1]], dim=1)  # the first -1 of a row
        return torch.where(first, self.config.eow_token, torch.where(padded, IGNORE, tokens))

    def forward_embeddings(self, h: torch.Tensor) -> torch.Tensor:
        """Causal pass without a cache over input embeddings (b, s, dim) at positions 0..s-1 -> (b, s, V)."""
        if h.shape[1] > self.config.seq_len:
            raise ValueError(f"sequence of {h.shape[1]} positions exceeds the model's {self.config.seq_len}")
        return self._trunk(h, None)

    # ------------------------------------------------------------------ KV-cache decoding
    def setup_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> None:
        """Allocate a fresh KV cache for ``batch`` sequences of up to ``max_len`` positions, and the causal
        mask that the decode steps index (built once here, never per step).

        ``dtype`` should be the dtype attention computes in (under autocast: the autocast dtype); default
        the parameters' dtype.
        """
        max_len = self.config.seq_len if max_len is None else max_len
        if max_len > self.config.seq_len:
            raise ValueError(f"max_len {max_len} exceeds the model's {self.config.seq_len} positions")
        dtype = dtype or self.tok_embeddings.weight.dtype
        device = device or self.tok_embeddings.weight.device
        head_dim = self.config.dim // self.config.n_head
        self._caches = [
            KVCache(batch, self.config.n_head, max_len, head_dim, dtype, device) for _ in self.layers
        ]
        # Row p lets position p attend to keys 0..p.
        self._causal_mask = torch.ones(max_len, max_len, dtype=torch.bool, device=device).tril()

    def reset_cache(self) -> None:
        """Free the KV cache."""
        self._caches = None
        self._causal_mask = None

    @property
    def has_cache(self) -> bool:
        return self._caches is not None

    def cache_tensors(self) -> list[torch.Tensor]:
        """The KV cache's tensors (each layer's keys and values) and the causal mask: what a compiled decode
        step reads and updates in place (``torch._dynamo.mark_static_address`` them for CUDA graphs)."""
        if self._caches is None:
            raise RuntimeError("no KV cache: call setup_cache(batch, max_len) first")
        return [t for cache in self._caches for t in (cache.k, cache.v)] + [self._causal_mask]

    def forward_step(self, h: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Run embeddings ``h`` (b, s, dim) at positions ``input_pos`` (s,) through the cache -> logits (b, s, V).

        Prefill with the conditioning embeddings at ``arange(cls_token_num)``, then feed one token
        embedding at a time. Requires ``setup_cache`` first. The checks here read shapes only, so a step
        never waits for the device.
        """
        if self._caches is None:
            raise RuntimeError("forward_step needs a KV cache: call setup_cache(batch, max_len) first")
        if h.shape[0] != self._caches[0].k.shape[0]:
            raise ValueError(f"batch {h.shape[0]} does not match the cache's {self._caches[0].k.shape[0]}")
        if input_pos.dim() != 1 or input_pos.shape[0] != h.shape[1]:
            raise ValueError("input_pos must be a 1-D tensor with one position per input embedding")
        return self._trunk(h, input_pos)

    # ------------------------------------------------------------------ sampling
    def generate(self, cond: torch.Tensor, **kwargs) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sample token ids (b, max_seq_len) (-1 past each window's length for an ``end_of_window`` model; with
        ``return_lengths=True`` also the lengths (b,)); see :func:`larp.models.sampling.generate`."""
        return sampling.generate(self, cond, **kwargs)

    def extra_repr(self) -> str:
        kind = "frame prediction" if self.config.frame_prediction else f"{self.config.num_classes} classes"
        eow = ", end-of-window token" if self.config.end_of_window else ""
        return f"{kind}, {self.config.max_seq_len} tokens, vocab {self.config.vocab_size}{eow}"


def check_matches_tokenizer(config: GeneratorConfig, tokenizer_config) -> None:
    """Raise ValueError unless a generator with ``config`` models the tokens of a tokenizer with
    ``tokenizer_config`` (a ``TokenizerConfig``): the same number of tokens per clip, from its codebook."""
    codebook, tokens = tokenizer_config.quantizer.codebook_size, tokenizer_config.num_tokens
    if config.vocab_size != codebook or config.max_seq_len != tokens:
        raise ValueError(
            f"the generator models {config.max_seq_len} tokens from a vocabulary of {config.vocab_size}, but the "
            f"tokenizer makes {tokens} tokens from a codebook of {codebook}: they do not belong together "
            f"(a generator for it has vocab_size={codebook}, max_seq_len={tokens})"
        )
    if config.end_of_window and not tokenizer_config.nested_dropout:
        raise ValueError("the generator makes variable-length windows (end_of_window) but the tokenizer was built "
                         "without nested_dropout, so it cannot decode fewer than all its tokens")


__all__ = ["GENERATOR_PRESETS", "IGNORE", "GeneratorConfig", "LARPGenerator", "check_matches_tokenizer", "find_multiple"]
