"""`python -m servergroup.guestcomm` runs the guest agent without the CLI framework.

It is what a qemu server's /init starts, so every import counts: under
emulation each costs tens of milliseconds of the VM's boot.
"""

import sys

from servergroup.guestcomm.guest import main

if __name__ == "__main__":
    sys.exit(main())
