"""larp: LARP video tokenization and autoregressive video generation in PyTorch.

Videos are float tensors in [0, 1] with layout (b, c, t, h, w); token ids are int64 (b, N).
"""

from larp.version import __version__
from larp.budget import adaptive_encode
from larp.models.generator import GENERATOR_PRESETS, GeneratorConfig, LARPGenerator
from larp.models.quantizer import QuantizerConfig
from larp.models.tokenizer import TOKENIZER_PRESETS, LARPTokenizer, TokenizerConfig
from larp.video_tokens import TokenizedVideo, detokenize_video, tokenize_video

__all__ = [
    "GENERATOR_PRESETS",
    "GeneratorConfig",
    "LARPGenerator",
    "LARPTokenizer",
    "QuantizerConfig",
    "TOKENIZER_PRESETS",
    "TokenizedVideo",
    "TokenizerConfig",
    "__version__",
    "adaptive_encode",
    "detokenize_video",
    "tokenize_video",
]
