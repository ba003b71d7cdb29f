"""Run `python -m servergroup ARGS...`; at exit, write the names of the modules it loaded.

Usage: python modules_at_exit.py OUT ARGS...   (OUT gets a JSON list)
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    atexit.register(lambda: out.write_text(json.dumps(sorted(sys.modules))))
    sys.argv = ["servergroup", *sys.argv[2:]]
    runpy.run_module("servergroup", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
