"""`python -m servergroup.guestcomm` runs the guest agent without the CLI framework.

It is what a qemu server's /init starts, so every import counts: under
emulation each costs tens of milliseconds of the VM's boot.
"""

import sys

# The agent never speaks TLS; asyncio imports `ssl` only to offer it. Marking
# the module absent before asyncio loads spares loading OpenSSL, about 0.25 s
# of a boot under TCG (asyncio runs without it, as on a Python built without).
if "ssl" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]

from servergroup.guestcomm.guest import main

if __name__ == "__main__":
    sys.exit(main())
