"""The vocabulary bridge: LARP windows <-> the ids of a Hugging Face language model.

:meth:`VideoVocabulary.extend` adds ``3 + codebook_size`` tokens to a Hugging Face tokenizer, in one
contiguous block right after its existing vocabulary (``base = len(tokenizer)`` before the call)::

    base + 0          <|video_start|>   opens a video
    base + 1          <|video_end|>     closes it
    base + 2          <|window|>        starts a window (one before every window, the first included)
    base + 3 + i      <|v{i}|>          LARP code i, for i in [0, codebook_size)

(the names are :data:`larp.data.token_dataset.SPECIAL_TOKENS`, also recorded in every token dataset). A video
of windows ``w0, w1, ...`` is the sequence ``<|video_start|> <|window|> w0... <|window|> w1... <|video_end|>``:
a window's length is the number of codes up to the next separator, so the windows of a nested-dropout
tokenizer may keep any number of their first ids (adaptive lengths) and still round-trip exactly.

The mapping is saved as JSON (:meth:`VideoVocabulary.save`, by default ``larp_vocabulary.json`` next to the
model) so that a fine-tuned LM is decoded later without guessing offsets. Nothing here imports
``transformers``: a tokenizer is used through ``len()``, ``add_tokens`` and ``convert_tokens_to_ids``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from larp.data.token_dataset import SPECIAL_TOKENS, read_dataset_info
from larp.files import write_json_atomic

__all__ = ["VOCABULARY_FORMAT", "VOCABULARY_NAME", "VideoVocabulary", "resize_embeddings"]

#: The file name :meth:`VideoVocabulary.save` uses inside a folder.
VOCABULARY_NAME = "larp_vocabulary.json"
#: The ``format`` field of that file.
VOCABULARY_FORMAT = "larp-llm-vocabulary"
_VERSION = 1
_MARKERS = 3  # video_start, video_end, window
_DATA_INFO = "_llm_data.json"  # larp.llm.data.INFO_NAME: an interleaved dataset's description holds its vocabulary


def _codebook_and_length(source: Any) -> tuple[int, int | None]:
    """(codebook size, tokens per window or None) from an int, a LARP tokenizer, a dataset's info or folder."""
    if isinstance(source, bool):
        raise ValueError(f"codebook_size must be an integer >= 1, a LARPTokenizer or a token dataset, got {source!r}")
    if isinstance(source, (int, np.integer)):
        return int(source), None
    config = getattr(source, "config", None)
    if config is not None and hasattr(config, "quantizer"):  # a LARPTokenizer (no import of the model here)
        return int(config.quantizer.codebook_size), int(config.num_tokens)
    if isinstance(source, (str, os.PathLike)):
        source = read_dataset_info(source)
    if isinstance(source, dict) and isinstance(source.get("codebook_size"), int):
        length = source.get("tokens_per_window")
        return int(source["codebook_size"]), int(length) if isinstance(length, int) else None
    raise ValueError(f"codebook_size must be an integer >= 1, a LARPTokenizer or a token dataset, got {source!r}")


@dataclass(frozen=True)
class VideoVocabulary:
    """Where the video tokens sit in a language model's vocabulary (see the module docstring).

    Attributes:
        base: id of ``<|video_start|>``; the block is ``[base, base + 3 + codebook_size)``.
        codebook_size: number of LARP codes.
        tokens_per_window: the most codes a window may hold (the tokenizer's N), None when unknown.
        fixed_length: every window must hold exactly ``tokens_per_window`` codes (False: 1 to N, adaptive).
        text_vocab_size: ``len(tokenizer)`` before the video tokens were added (the text ids are below it).
        names: the token names (``video_start``, ``video_end``, ``window_sep``, ``code_pattern``).
    """

    base: int
    codebook_size: int
    tokens_per_window: int | None = None
    fixed_length: bool = False
    text_vocab_size: int | None = None
    names: dict[str, str] | None = None

    def __post_init__(self) -> None:
        for name, lowest in (("base", 0), ("codebook_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"VideoVocabulary.{name} must be an integer >= {lowest}, got {value!r}")
        n = self.tokens_per_window
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"VideoVocabulary.tokens_per_window must be None or an integer >= 1, got {n!r}")
        if self.fixed_length and n is None:
            raise ValueError("VideoVocabulary.fixed_length needs tokens_per_window")
        if self.names is None:
            object.__setattr__(self, "names", dict(SPECIAL_TOKENS))

    # ------------------------------------------------------------------------------------ ids
    @property
    def video_start(self) -> int:
        return self.base

    @property
    def video_end(self) -> int:
        return self.base + 1

    @property
    def window(self) -> int:
        """The window separator's id."""
        return self.base + 2

    @property
    def code_offset(self) -> int:
        """LM id of code 0 (code ``i`` is ``code_offset + i``)."""
        return self.base + _MARKERS

    @property
    def end(self) -> int:
        """One past the last video id: the LM's vocabulary must have at least this many rows."""
        return self.code_offset + self.codebook_size

    @property
    def video_ids(self) -> range:
        return range(self.base, self.end)

    @property
    def code_ids(self) -> range:
        return range(self.code_offset, self.end)

    def token_names(self) -> list[str]:
        """The names of the block, in id order."""
        names = self.names or SPECIAL_TOKENS
        return [names["video_start"], names["video_end"], names["window_sep"]] + [
            names["code_pattern"].format(id=i) for i in range(self.codebook_size)]

    def is_video_id(self, token: int) -> bool:
        return self.base <= int(token) < self.end

    # ------------------------------------------------------------------------------ building
    @classmethod
    def extend(cls, hf_tokenizer: Any, codebook_size: Any, *, tokens_per_window: int | None = None,
               fixed_length: bool = False) -> VideoVocabulary:
        """Add the video tokens to ``hf_tokenizer`` (in place) and return their vocabulary.

        Args:
            hf_tokenizer: a Hugging Face tokenizer (anything with ``len``, ``add_tokens(list,
                special_tokens=True)`` and ``convert_tokens_to_ids``).
            codebook_size: the number of codes: an int, a ``LARPTokenizer``, or a token dataset (its folder or
                its ``_dataset.json`` dict); the last two also give ``tokens_per_window``.
            tokens_per_window: the most codes per window (checked when decoding); default: from the source.
            fixed_length: refuse windows of fewer than ``tokens_per_window`` codes.

        A tokenizer that already holds this exact block (extended before, e.g. loaded from a fine-tuned model)
        is accepted as is.

        Raises:
            ValueError: some of the names exist in the tokenizer at other ids (the block would not be
                contiguous).
        """
        codebook, length = _codebook_and_length(codebook_size)
        length = tokens_per_window if tokens_per_window is not None else length
        names = cls(base=0, codebook_size=codebook).token_names()
        present = hf_tokenizer.convert_tokens_to_ids(names[0])
        unknown = getattr(hf_tokenizer, "unk_token_id", None)
        if present is not None and present != unknown:  # extended before: check and reuse
            base = int(present)
            text_size = base
        else:
            base = text_size = len(hf_tokenizer)
            hf_tokenizer.add_tokens(names, special_tokens=True)
        ids = hf_tokenizer.convert_tokens_to_ids(names)
        expected = list(range(base, base + len(names)))
        if list(ids) != expected:
            wrong = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
            raise ValueError(f"the video tokens are not contiguous in this tokenizer: {names[wrong]!r} has id "
                             f"{ids[wrong]}, expected {expected[wrong]} (some of the names were already in its "
                             f"vocabulary; start from the unextended tokenizer)")
        return cls(base=base, codebook_size=codebook, tokens_per_window=length, fixed_length=fixed_length,
                   text_vocab_size=text_size)

    def check(self, hf_tokenizer: Any) -> None:
        """Raise ValueError unless ``hf_tokenizer`` maps every name of the block to this vocabulary's id."""
        names = self.token_names()
        ids = list(hf_tokenizer.convert_tokens_to_ids(names))
        if ids != list(self.video_ids):
            bad = next(i for i, (a, b) in enumerate(zip(ids, self.video_ids)) if a != b)
            raise ValueError(f"this tokenizer does not match the video vocabulary: {names[bad]!r} is id {ids[bad]}, "
                             f"the vocabulary says {self.base + bad}")

    # ------------------------------------------------------------------------------ mapping
    def _window_ids(self, window: Any, index: int) -> list[int]:
        values = window.detach().cpu().numpy() if isinstance(window, torch.Tensor) else np.asarray(window)
        if values.ndim != 1:
            raise ValueError(f"window {index}: expected a 1-D sequence of ids, got shape {values.shape}")
        values = values.astype(np.int64, copy=False)
        valid = values >= 0
        length = int(valid.sum())
        if not valid[:length].all():  # -1 padding only past the length (the .npy convention)
            raise ValueError(f"window {index}: -1 (padding) before a valid id; padding goes past the window's length")
        values = values[:length]
        if length == 0:
            raise ValueError(f"window {index} is empty: a window keeps at least its first id")
        if values.max() >= self.codebook_size:
            raise ValueError(f"window {index}: id {int(values.max())} outside the codebook [0, {self.codebook_size})")
        self._check_length(length, index)
        return (values + self.code_offset).tolist()

    def _check_length(self, length: int, index: int) -> None:
        n = self.tokens_per_window
        if n is not None and length > n:
            raise ValueError(f"window {index} has {length} codes, more than tokens_per_window={n}")
        if self.fixed_length and length != n:
            raise ValueError(f"window {index} has {length} codes; this vocabulary has fixed windows of {n} "
                             f"(a truncated window)")

    def encode(self, windows: Any) -> list[int]:
        """LM ids of one video: ``<|video_start|> (<|window|> codes)* <|video_end|>``.

        Args:
            windows: a list of 1-D id sequences (lists, arrays or tensors; lengths may differ), or a 2-D
                ``(windows, N)`` array or tensor in which ``-1`` pads a window past its length.

        Raises:
            ValueError: an empty window, an id outside the codebook, -1 before a valid id, a window longer than
                ``tokens_per_window`` (or shorter, with ``fixed_length``).
        """
        if isinstance(windows, (np.ndarray, torch.Tensor)) and windows.ndim == 1:
            raise ValueError("encode takes a list of windows (1-D id sequences); wrap a single window as [window]")
        ids = [self.video_start]
        for index, window in enumerate(windows):
            ids.append(self.window)
            ids.extend(self._window_ids(window, index))
        ids.append(self.video_end)
        return ids

    def _parse(self, ids: Sequence[int], *, complete: bool) -> list[list[list[int]]]:
        """Every video of ``ids`` as lists of windows of codes; text ids outside videos are skipped."""
        videos: list[list[list[int]]] = []
        current: list[list[int]] | None = None
        for position, token in enumerate(int(t) for t in ids):
            inside = current is not None
            if token == self.video_start:
                if inside:
                    raise ValueError(f"id {position}: <|video_start|> inside a video (the previous one has no "
                                     f"<|video_end|>)")
                current = []
            elif token == self.video_end:
                if not inside:
                    raise ValueError(f"id {position}: <|video_end|> outside a video")
                if current and not current[-1]:
                    raise ValueError(f"id {position}: the last window is empty (<|window|> then <|video_end|>)")
                for index, window in enumerate(current):
                    self._check_length(len(window), index)
                videos.append([[c - self.code_offset for c in w] for w in current])
                current = None
            elif token == self.window:
                if not inside:
                    raise ValueError(f"id {position}: <|window|> outside a video")
                if current and not current[-1]:
                    raise ValueError(f"id {position}: an empty window (two <|window|> in a row)")
                current.append([])
            elif self.code_offset <= token < self.end:
                if not inside:
                    raise ValueError(f"id {position}: video code {token - self.code_offset} outside a video "
                                     f"(no <|video_start|> before it)")
                if not current:
                    raise ValueError(f"id {position}: a code before the first <|window|>")
                current[-1].append(token)
                n = self.tokens_per_window
                if n is not None and len(current[-1]) > n:
                    raise ValueError(f"id {position}: window {len(current) - 1} has more than tokens_per_window={n} "
                                     f"codes")
            elif inside:
                raise ValueError(f"id {position}: text id {token} inside a video")
        if current is not None:
            if complete:
                raise ValueError(f"the video has no <|video_end|> ({len(current)} windows so far); "
                                 f"pass complete=False to keep the finished windows of a cut-off generation")
            finished = current[:-1] if current and (not current[-1] or (
                self.fixed_length and len(current[-1]) != self.tokens_per_window)) else current
            videos.append([[c - self.code_offset for c in w] for w in finished])
        return videos

    def decode_videos(self, ids: Any, *, complete: bool = True) -> list[list[list[int]]]:
        """Every video in ``ids`` (text between them is skipped), each a list of windows (lists of codes).

        ``complete=False`` accepts a last video without ``<|video_end|>`` (a generation cut off by a length
        limit): its finished windows are kept, and an unfinished last window (empty, or short of
        ``tokens_per_window`` with ``fixed_length``) is dropped.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().reshape(-1).tolist()
        return self._parse(list(ids), complete=complete)

    def decode(self, ids: Any, *, complete: bool = True) -> list[list[int]]:
        """The windows (lists of codes, in window order) of the one video in ``ids``.

        Text ids before and after the video are ignored (a prompt, a caption). Malformed sequences raise
        ValueError naming the position: a code, separator or end marker outside a video, text inside one, an
        empty window, a window longer than ``tokens_per_window`` (or shorter, with ``fixed_length``), a
        missing ``<|video_end|>`` (unless ``complete=False``, see :meth:`decode_videos`), no video or several.
        """
        videos = self.decode_videos(ids, complete=complete)
        if len(videos) != 1:
            raise ValueError(f"expected one video in the ids, found {len(videos)}"
                             + (" (use decode_videos for several)" if videos else ""))
        return videos[0]

    def to_array(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        """Windows -> a ``(windows, N)`` int64 array padded with -1 past each window's length (the ``.npy``
        convention); N is ``tokens_per_window`` or the longest window."""
        width = self.tokens_per_window or max((len(w) for w in windows), default=0)
        array = np.full((len(windows), width), -1, dtype=np.int64)
        for i, window in enumerate(windows):
            array[i, : len(window)] = window
        return array

    def allowed_next(self, prefix: Sequence[int], *, text_ids: Sequence[int] | None = None,
                     eos_id: int | None = None) -> list[int]:
        """The ids a well-formed sequence may continue ``prefix`` with, for constrained generation
        (``generate(prefix_allowed_tokens_fn=lambda batch, ids: vocab.allowed_next(ids.tolist(), ...))``).

        Inside a video: a code, or after at least one code of the current window a separator / the end
        marker (with ``tokens_per_window`` and ``fixed_length``: codes until the window is full, then only
        those). Outside a video: ``text_ids`` (default: every id below ``base``) and ``<|video_start|>``, and
        ``eos_id`` when given.
        """
        state, count = "text", 0
        for token in prefix:
            token = int(token)
            if token == self.video_start:
                state, count = "start", 0
            elif token == self.video_end:
                state = "text"
            elif token == self.window:
                state, count = "window", 0
            elif self.code_offset <= token < self.end:
                count += 1
        codes = list(self.code_ids)
        if state == "start":
            return [self.window]
        if state == "window":
            n = self.tokens_per_window
            if count == 0:
                return codes
            if n is not None and count >= n:
                return [self.window, self.video_end]
            if self.fixed_length:
                return codes
            return codes + [self.window, self.video_end]
        allowed = list(text_ids) if text_ids is not None else list(range(self.base))
        allowed.append(self.video_start)
        if eos_id is not None:
            allowed.append(int(eos_id))
        return allowed

    # ------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"format": VOCABULARY_FORMAT, "version": _VERSION, **asdict(self),
                "ids": {"video_start": self.video_start, "video_end": self.video_end, "window_sep": self.window,
                        "first_code": self.code_offset, "end": self.end}}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mapping as JSON to ``path`` (a folder: ``path/larp_vocabulary.json``); returns the file."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCABULARY_NAME
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, hf_tokenizer: Any = None) -> VideoVocabulary:
        """Read a saved mapping (a file, a folder holding ``larp_vocabulary.json``, or an interleaved dataset's
        folder written by :func:`larp.llm.write_interleaved`); with ``hf_tokenizer``,
        also check that the tokenizer maps the names to the same ids.

        Raises:
            FileNotFoundError / ValueError: no such file, not this format, or a tokenizer that does not match.
        """
        path = Path(path)
        if path.is_dir():  # a model folder, or the interleaved data's folder (its _llm_data.json)
            path = path / VOCABULARY_NAME if (path / VOCABULARY_NAME).is_file() or not (
                path / _DATA_INFO).is_file() else path / _DATA_INFO
        if not path.is_file():
            raise FileNotFoundError(f"no video vocabulary at {path} (VideoVocabulary.save writes {VOCABULARY_NAME})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read {path}: {error}") from None
        if isinstance(data, dict) and path.name == _DATA_INFO:
            data = data.get("vocabulary")
        if not isinstance(data, dict) or data.get("format") != VOCABULARY_FORMAT:
            raise ValueError(f"{path} is not a {VOCABULARY_FORMAT} file")
        if int(data.get("version", 0)) > _VERSION:
            raise ValueError(f"{path}: version {data['version']} is newer than this larp reads ({_VERSION})")
        fields = {k: data[k] for k in ("base", "codebook_size", "tokens_per_window", "fixed_length",
                                       "text_vocab_size", "names") if k in data}
        vocab = cls(**fields)
        if hf_tokenizer is not None:
            vocab.check(hf_tokenizer)
        return vocab


def resize_embeddings(model: Any, vocab: VideoVocabulary) -> Any:
    """Give ``model`` (a ``transformers.PreTrainedModel``) rows for the video ids, at the mean of the old rows.

    The input embedding (and the output one, when not tied) grows to ``max(current rows, vocab.end)``; rows
    ``[vocab.base, vocab.end)`` are set to the mean of rows ``[0, vocab.base)`` (the text vocabulary), as are
    the new entries of an output bias. Returns the model.
    """
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0]
    if vocab.base > rows:
        raise ValueError(f"the model has {rows} embedding rows, fewer than the text vocabulary ({vocab.base}) the "
                         f"video tokens follow: is this the tokenizer's model?")
    if vocab.end > rows:
        model.resize_token_embeddings(vocab.end, mean_resizing=False)
    block = slice(vocab.base, vocab.end)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[block] = weight[: vocab.base].float().mean(dim=0).to(weight.dtype)
        output = model.get_output_embeddings()
        if output is not None:
            if output.weight.data_ptr() != weight.data_ptr():
                output.weight[block] = output.weight[: vocab.base].float().mean(dim=0).to(output.weight.dtype)
            bias = getattr(output, "bias", None)
            if bias is not None:
                bias[block] = bias[: vocab.base].float().mean().to(bias.dtype)
    return model


def prefix_allowed_tokens(vocab: VideoVocabulary, **kwargs: Any) -> Callable[[int, torch.Tensor], list[int]]:
    """A ``prefix_allowed_tokens_fn`` for ``model.generate`` keeping generations well formed
    (:meth:`VideoVocabulary.allowed_next`; ``kwargs`` go to it)."""

    def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
        return vocab.allowed_next(ids.tolist(), **kwargs)

    return allowed
