"""The one exception type for user mistakes (the CLI prints it as a paragraph, exits 2); message text helpers."""


class UserError(Exception):
    """A mistake in the user's config, command line or files; the message says what is allowed."""

    exit_code = 2  # what `dqn` exits with; subclasses for stops and divergence use their own


class WriteError(UserError):
    """A file the file system would not take (a full disk, a file-size limit, a read-only folder): exit 1,
    as the CLI's other file-system errors. The file there before, if any, is kept."""

    exit_code = 1


class UsedRunDirError(UserError):
    """A sweep job refused because its dir holds an earlier run: that run's files stay as they are (the
    sweep summary writes no job_result.json over its record)."""


class EnvUnavailableError(UserError):
    """An env that this machine cannot build: `problem` says why, the message adds what to pick instead
    (`dqn eval`, which takes the env from its checkpoint, says what to install instead)."""

    def __init__(self, problem: str, advice: str):
        super().__init__(f"{problem} {advice}")
        self.problem = problem


def first_line(text: str) -> str:
    """The first non-blank line of an error's text ('' for none): a message quotes it, not the whole text."""
    return (text.strip().splitlines() or [""])[0]


def counted(n: int, noun: str) -> str:
    """`n` and the noun, plural unless n is 1: "1 episode", "3 episodes", "0 runs"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
