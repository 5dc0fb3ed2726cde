"""A service process that is killed in the middle of an activation (run by test_active_choice.py).

`python -m tests.service.activation_child VERSION MODE` loads the service from the CHEXTRIEV_*
environment, then activates VERSION through the admin code path, stopping for good at MODE:
"before-commit" (the snapshot is verified, nothing recorded yet) or "after-commit" (the database
records VERSION, the swap has not happened). It prints MODE when it gets there, for the test to
kill it with SIGKILL.
"""

from __future__ import annotations

import sys
import time

from service import index_admin
from service.settings import get_settings
from service.state import ServiceState

STOPPED_FOR_GOOD_SECONDS = 600


def main(version: str, mode: str) -> None:
    state = ServiceState(get_settings())
    state.load()
    if not state.ready:
        raise SystemExit(f"the service did not load: {state.load_problem}")
    commit = index_admin.commit_activation

    def commit_then_stop(*args, **kwargs) -> None:
        if mode == "after-commit":
            commit(*args, **kwargs)
        print(mode, flush=True)
        time.sleep(STOPPED_FOR_GOOD_SECONDS)

    index_admin.commit_activation = commit_then_stop
    index_admin.activate_version(state, version, "crash-test")


if __name__ == "__main__":
    main(*sys.argv[1:])
