"""One-line error messages quoted from exceptions raised by libraries (pandas, numpy, transformers, Ray, the
JSON and YAML parsers): what a DataError or ManifestError may say after naming the field and the fix."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, or the name of its type where the message is empty (some
    libraries raise with none; a bare ``str(exc).splitlines()[0]`` would then fail with an IndexError)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line
    return type(exc).__name__


__all__ = ["first_line"]
