"""Errors that reach users carry one clear sentence that says what to do."""

from __future__ import annotations


class ModelpressError(Exception):
    """Base class: the message is meant to be printed to the user as is."""


class ConfigError(ModelpressError, ValueError):
    """A method config, recipe or option is invalid."""


class ArtifactError(ModelpressError):
    """A saved artifact is missing, truncated, corrupt or of an unknown format."""


class DataError(ModelpressError):
    """A dataset or model input could not be read or is unusable."""


class SaveError(ModelpressError, OSError):
    """``save`` could not write an artifact (no permission, disk full, a path that cannot
    hold a directory); an ``OSError`` too, so ``except OSError`` still sees it."""
