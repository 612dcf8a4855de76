"""Errors for bad user input.

Every error that the user can fix (a file, a flag, a frame) is an :class:`InputError` whose
message is one sentence on one line naming the problem (and, where it helps, the likely
fix), so that the command line prints it as ``handfit: error: <message>`` and exits with
status 2, and a batch run records it for the frame and goes on. Programming errors keep
their ordinary types.
"""

__all__ = ["InputError", "NoHandFoundError"]


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a frame); the message names the problem.

    A ``ValueError``, so code that catches ``ValueError`` for bad arguments catches it too.
    """


class NoHandFoundError(InputError):
    """The frame holds no hand-like blob: no valid depth, none in the depth band, or only
    speckle (see :func:`fitting.preprocess.segment_hand`)."""
