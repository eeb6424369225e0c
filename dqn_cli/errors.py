"""The one exception type for user mistakes: the CLI prints it as a paragraph and exits 2."""


class UserError(Exception):
    """A mistake in the user's config, command line or files; the message says what is allowed."""

    exit_code = 2  # what `dqn` exits with; subclasses for stops and divergence use their own


def first_line(text: str) -> str:
    """The first non-blank line of an error's text ('' for none): a message quotes it, not the whole text."""
    return (text.strip().splitlines() or [""])[0]
