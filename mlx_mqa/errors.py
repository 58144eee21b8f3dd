"""Errors with messages meant for the person running the tool."""


class MlxMqaError(Exception):
    """Base class: the CLIs print the message and exit non-zero without a traceback."""

    exit_code = 1


class ConfigError(MlxMqaError):
    exit_code = 2


class CheckpointError(MlxMqaError):
    exit_code = 3


class InputError(MlxMqaError):
    exit_code = 4


class MemoryBudgetError(MlxMqaError):
    """Nothing fits the memory budget asked for."""

    exit_code = 5
