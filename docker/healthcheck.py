"""Container HEALTHCHECK: exit 0 when GET /healthz on this container's port answers 200.

The slim image has no curl; the port comes from the same setting as the service's.
"""

import os
import sys
import urllib.request

port = os.environ.get("V1MOTION_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError as exc:
    print(f"healthz: {exc}", file=sys.stderr)
    sys.exit(1)
