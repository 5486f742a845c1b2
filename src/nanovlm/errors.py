"""The errors a user can cause. The CLI prints them as one line; anything else is a bug and keeps its traceback."""
from __future__ import annotations


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .model.vlm import CheckpointError
    from .tokenizer import TokenizerError

    errors = [ConfigError, CheckpointError, TokenizerError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError]
    try:
        from .data.format import DatasetFormatError
        errors.append(DatasetFormatError)
    except ImportError:
        pass
    return tuple(errors)


USER_ERRORS = _user_errors()
