"""Exceptions whose message names the file or field at fault and what to do about it."""


class EmbedcacheError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(EmbedcacheError):
    """A bad option, config file or encoder specification."""


class StoreError(EmbedcacheError):
    """A token store that is missing, incomplete, damaged or incompatible."""


class BadInputError(EmbedcacheError):
    """Manifest rows or audio files that cannot be used; `problems` lists (clip_id, reason)."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


class EmbedcacheWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as one `warning:` line."""
