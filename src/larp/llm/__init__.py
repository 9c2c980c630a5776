"""LARP tokens in a language model: the vocabulary bridge and interleaved text-video data.

``VideoVocabulary.extend(hf_tokenizer, codebook_size)`` adds the video tokens to a Hugging Face tokenizer
(one contiguous block: ``<|video_start|>``, ``<|video_end|>``, ``<|window|>``, ``<|v0|>`` ...), maps LARP windows
to LM ids and back; :func:`resize_embeddings` gives a model rows for them at the mean of the old ones;
:func:`write_interleaved` writes caption + video training data as Parquet for ``transformers.Trainer``.
Nothing here imports ``transformers`` (``pip install "larp[llm]"`` to use it with a model).
"""

from larp.llm.data import read_captions, write_interleaved
from larp.llm.vocabulary import VOCABULARY_NAME, VideoVocabulary, prefix_allowed_tokens, resize_embeddings

__all__ = ["VOCABULARY_NAME", "VideoVocabulary", "prefix_allowed_tokens", "read_captions", "resize_embeddings",
           "write_interleaved"]
