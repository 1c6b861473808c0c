"""Run inside a container of the compose network (`python - URL` with this file on stdin): prints the
body of an HTTP GET of URL, for addresses only the compose network reaches (a worker's /metrics)."""

import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=30) as response:  # noqa: S310 - compose network only
    sys.stdout.write(response.read().decode())
