"""`python -m servergroup.guestcomm` runs the guest agent, and beside it the scale agent.

It is what a qemu server's /init starts, so every import counts: under
emulation each costs tens of milliseconds of the VM's boot. This module is
a composition root, like the CLI: the guest agent knows nothing of scaling,
and the scale agent is added here as a companion (`--no-scale-agent` leaves
it out). The layers contract allows this one import (pyproject.toml).
"""

import sys

from servergroup.guestcomm.guest import main
from servergroup.scaling.agent import ScaleExtension

if __name__ == "__main__":
    sys.exit(main(extensions=[ScaleExtension()]))
