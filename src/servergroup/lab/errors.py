"""The lab's exception: the kernel or a tool refused a change, or a lab is damaged."""

from __future__ import annotations

from servergroup.common.errors import RemoteError


class LabError(RemoteError):
    """A lab operation failed outside our control (netlink, `tc`, `nft`), or a lab is damaged."""
