"""The one error family of the data layer: a bad file, line, key, image, language or data option."""


class DataError(ValueError):
    """A problem with the data (a file, a line, a key, a language or an option); the message names it."""


__all__ = ["DataError"]
