"""larp: LARP video tokenization and autoregressive video generation in PyTorch.

Videos are float tensors in [0, 1] with layout (b, c, t, h, w); token ids are int64 (b, N).
"""

__version__ = "0.1.0"

from larp.models.quantizer import QuantizerConfig
from larp.models.tokenizer import TOKENIZER_PRESETS, LARPTokenizer, TokenizerConfig

__all__ = ["LARPTokenizer", "TokenizerConfig", "QuantizerConfig", "TOKENIZER_PRESETS", "__version__"]
