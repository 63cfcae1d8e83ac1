"""The error types the toolkit raises for bad input.

Every error names *what* is wrong (a file, a map, a protocol parameter) and *why*, so that a user can fix the
input without reading a traceback. Both subclass ``ValueError`` so callers that already catch that keep working.
"""


class InputError(ValueError):
    """Bad input data: a map, an image or a file that cannot be used.

    Args:
        source: what is wrong, e.g. a file path or a map name such as ``"r1"``.
        problem: a sentence saying what is wrong with it and, where possible, what to do.
    """

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class ProtocolError(InputError):
    """A sequence name or acquisition parameter that is unknown or physically inconsistent."""
