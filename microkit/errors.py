"""One exception root for microkit. Each error class carries the exit code the CLI uses."""


class MicrokitError(Exception):
    """Base of every error microkit reports to a user: one line, and an exit code."""

    exit_code = 1


class ConfigError(MicrokitError):
    """microkit.toml (or a value standing in for it) is wrong: the message names file, key and value."""

    exit_code = 2


class UsageError(MicrokitError):
    """The command line asked for something that cannot be done as asked."""

    exit_code = 2


class ScaffoldError(MicrokitError):
    """A `microkit new` refusal: nothing has been written."""

    exit_code = 2


class SupervisorError(MicrokitError):
    """`microkit up` could not run (a port in use, every service failed, one already running)."""

    exit_code = 1


class NotRunningError(SupervisorError):
    """A command that talks to a running `microkit up` found none for this project."""
