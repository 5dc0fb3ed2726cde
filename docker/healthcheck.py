"""The api image's HEALTHCHECK: exit 0 when GET /readyz answers 200 (model and index loaded), else 1.

It asks the address `chextriev serve` listens on (CHEXTRIEV_HOST and CHEXTRIEV_PORT through the
settings; a wildcard host is asked on the loopback) and prints what it found, which Docker keeps
with the container's health state.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from service.settings import get_settings

TIMEOUT_SECONDS = 4
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def readiness_url() -> str:
    """The /readyz URL of the server these settings describe."""
    settings = get_settings()
    host = "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host
    return f"http://{host}:{settings.port}/readyz"


def main() -> int:
    """Probe /readyz once: 0 when ready, 1 when not ready or not answering."""
    url = readiness_url()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            print(f"ready: {response.read().decode(errors='replace')}")
            return 0
    except urllib.error.HTTPError as error:
        print(f"not ready: {url} answered {error.code}: {error.read().decode(errors='replace')}")
    except OSError as error:  # URLError, refused or timed-out connections
        print(f"not answering: {url}: {getattr(error, 'reason', error)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
