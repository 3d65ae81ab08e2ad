"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single ``error: ...`` line on stderr and exit code 2, never a traceback.
Raise it at the boundary (files, specs, parameters) with a message that names the bad value and
what was expected.
"""


class UserError(Exception):
    """A mistake in the user's input: bad file, bad column, bad parameter, bad spec."""


def exit_code(command) -> int:
    """Run ``command()`` as a command line does: its code (None: 0); a ``UserError`` is one
    ``error:`` line and 2, Ctrl-C ``interrupted`` and 130 (the CLI and the test stub workers)."""
    from tagsearch.log import log

    try:
        return command() or 0
    except UserError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
