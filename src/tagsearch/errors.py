"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single ``error: ...`` line on stderr and exit code 2, never a traceback.
Raise it at the boundary (files, specs, parameters) with a message that names the bad value and
what was expected.
"""


class UserError(Exception):
    """A mistake in the user's input: bad file, bad column, bad parameter, bad spec."""
