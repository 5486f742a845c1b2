"""nanovlm: build, train, evaluate and serve small vision-language models."""
from .config import PRESETS, VLMConfig, from_name
from .model.vlm import VisionLanguageModel
from .tokenizer import Tokenizer

__all__ = ["PRESETS", "VLMConfig", "from_name", "VisionLanguageModel", "Tokenizer"]
__version__ = "0.1.0"
