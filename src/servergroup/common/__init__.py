"""Shared helpers with no knowledge of any capability: errors, clock, logging, retry.

Import from the modules (`servergroup.common.errors`, `.clock`, `.logsetup`):
this package re-exports nothing, so a guest agent that needs only the errors
does not load the clock's asyncio at start.
"""
