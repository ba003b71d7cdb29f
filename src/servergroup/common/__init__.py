"""Shared helpers with no knowledge of any capability: errors, clock, logging, retry."""

from servergroup.common.clock import Clock, FakeClock, SystemClock
from servergroup.common.errors import ConfigError, ServergroupError

__all__ = ["Clock", "ConfigError", "FakeClock", "ServergroupError", "SystemClock"]
