"""Exceptions shared across koserve. Each message names what was wrong and the limit."""


class KoserveError(Exception):
    """Base class for errors koserve reports to users (the CLI prints them without a traceback)."""


class ConfigError(KoserveError):
    """A profile, recipe or option is invalid."""


class InvalidRequestError(KoserveError, ValueError):
    """A request parameter is out of range or malformed."""
