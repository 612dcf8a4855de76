"""Errors for bad user input: one-line messages that the command line prints as they are."""


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a frame); the message names the problem."""


class NoHandFoundError(InputError):
    """The frame holds no hand-like blob (no valid depth, or nothing in the depth band)."""
