"""The project's exception tree.

Every error a user can meet is a `ServergroupError` whose message is one
sentence that says what went wrong and, where it helps, what to do. The CLI
prints that sentence and exits non-zero; it never shows a traceback for
these. Anything else that escapes is a bug.

Below the root the tree splits as h11 does: *local* errors (our caller or the
operator asked for something impossible: `ConfigError`, `UsageError`) and
*remote* errors (something outside misbehaved: the store, a peer, the OS).
"""

from __future__ import annotations


def sentence(message: str) -> str:
    """`message` as a sentence for the user: a closing period added where it has none."""
    message = message.rstrip()
    return message if message.endswith((".", "!", "?")) else f"{message}."


def phrase(message: object) -> str:
    """An error's sentence as a phrase to quote inside another (its closing period dropped)."""
    return str(message).rstrip(".")


class ServergroupError(Exception):
    """Root of every error servergroup raises on purpose."""

    #: Process exit status the CLI uses for this error.
    exit_status: int = 1


class LocalError(ServergroupError):
    """Our caller or the operator asked for something we cannot do."""


class RemoteError(ServergroupError):
    """Something outside us (a store, a peer, the kernel) failed or misbehaved."""


class ConfigError(LocalError):
    """Configuration is invalid or unsafe; the message names the setting."""

    exit_status = 2


class UsageError(LocalError):
    """An API or command was used in a way it does not support."""

    exit_status = 2


class PermissionNeeded(LocalError):
    """The operation needs privileges (usually root) that we do not have."""

    exit_status = 4


class MissingDependency(LocalError):
    """A program or package servergroup needs is not installed."""

    exit_status = 5


class Interrupted(ServergroupError):
    """The command was stopped by SIGINT or SIGTERM before it finished.

    A daemon (`cli.common.run_daemon`) takes this as the way it ends and exits 0;
    any other command exits 130, the shell's status for an interrupt.
    """

    exit_status = 130

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message)


class ProcessFailed(RemoteError):
    """A program servergroup started (etcd, an agent, a helper) failed to start or died."""

    exit_status = 3
