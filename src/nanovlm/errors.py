"""The errors a user can cause. The CLI prints them as one line; anything else is a bug and keeps its traceback."""
from __future__ import annotations


def _user_errors() -> tuple[type[BaseException], ...]:
    from .chat import ChatError
    from .config import ConfigError
    from .data.format import DatasetFormatError
    from .images import ImageError
    from .model.vlm import CheckpointError
    from .tokenizer import TokenizerError

    return (ConfigError, CheckpointError, TokenizerError, DatasetFormatError, ImageError, ChatError,
            FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


USER_ERRORS = _user_errors()
