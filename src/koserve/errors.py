"""Exceptions shared across koserve. Each message names what was wrong and the limit."""


class KoserveError(Exception):
    """Base class for errors koserve reports to users (the CLI prints them without a traceback)."""


class ConfigError(KoserveError):
    """A profile, recipe or option is invalid."""


class InvalidRequestError(KoserveError, ValueError):
    """A request parameter is out of range or malformed."""


def validation_error_message(what: str, exc) -> str:
    """A pydantic ``ValidationError`` as ``invalid <what>:`` and one ``field.path: message`` line per error."""
    lines = [f"invalid {what}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
