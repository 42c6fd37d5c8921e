"""Entry point of a tensor-parallel worker process: `python -P -m xpullm.parallel.worker HOST:PORT RANK`.

Started by `RankSet.start` (never by hand): it connects back to the driver with the key in `XPULLM_TP_AUTHKEY`,
then receives its rank, device, builder and payload (see `launch.run_worker`).
"""

from __future__ import annotations

import os
import sys

from xpullm.parallel.launch import run_worker


def main() -> None:
    """Connect to the driver named on the command line and serve it until it says stop."""
    host, _, port = sys.argv[1].rpartition(":")
    run_worker((host, int(port)), bytes.fromhex(os.environ.pop("XPULLM_TP_AUTHKEY")), int(sys.argv[2]))


if __name__ == "__main__":
    main()
