"""Who may do what through the HTTP API: the bearer token (pure but for reading its file).

Theory of operation. The token is read once, when the API starts, from the
file `[api] token_file` names (its first line, surrounding blanks removed);
an unreadable or empty file is a `ConfigError` and the API does not start.
`Access.check(header, action=...)` decides one request:

- an **action** (anything that changes the cluster) always needs
  `Authorization: Bearer <token>`; with no token configured, actions are
  refused, whatever the request says;
- a **read** needs it too when the API listens on anything but loopback,
  so a token is what stands between the network and the cluster's state.

The token is compared in constant time (`secrets.compare_digest`), never
logged, and appears in no response: a refusal says what is missing, not what
was expected. A refused request has changed nothing: the check runs before
the handler (a FastAPI dependency).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from servergroup.common.errors import ConfigError


def read_token(path: Path) -> str:
    """The token in `path` (its first line); ConfigError when it is unreadable or empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read the API token file {path}: {reason}.") from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"the API token file {path} is empty; put one token on its first line.")
    return token


@dataclass(frozen=True, slots=True, kw_only=True)
class Access:
    """The API's access rule: the token (if any) and whether reads need it."""

    token: str | None = field(default=None, repr=False)  # never in a repr, hence a log
    reads_need_token: bool = False

    def check(self, authorization: str | None, *, action: bool) -> str | None:
        """None when the request may go on; else why not, in one sentence."""
        if not action and not self.reads_need_token:
            return None
        if self.token is None:
            return (
                "actions need the API's bearer token, and this host has none: set [api] token_file"
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "this request needs an Authorization: Bearer header with the API token"
        if not secrets.compare_digest(given.strip().encode(), self.token.encode()):
            return "the bearer token is not this API's"
        return None


__all__ = ["Access", "read_token"]
