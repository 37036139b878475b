"""STAND-IN for issue 35's ``run_status`` (helper 35 writes the real one in this file; on merge
theirs wins). It has the same face, ``run_status(store) -> RunStatus`` with ``.state`` and
``.line``, so the runs index (issue 36) can be built against it now.

finished: the head generation is the planned last (checked first: the finishing process still
holds the claim while it writes the last report); running: a live process holds the run's
claim; otherwise crashed (stopped before its plan, nobody works on it: resume it).
"""

from __future__ import annotations

from dataclasses import dataclass

from darwin.memory import RunStore, StoreError


@dataclass(frozen=True)
class RunStatus:
    state: str  # finished, running, crashed
    line: str  # one line a person reads


def run_status(store: RunStore) -> RunStatus:
    from darwin.engine.runs import run_alive

    try:
        planned = store.meta().get("experiment", {}).get("generations")
        head = store.head()
    except StoreError as e:
        return RunStatus("crashed", f"unreadable: {e}")
    done = head if head is not None else -1
    if planned is not None and done >= int(planned):
        return RunStatus("finished", f"finished ({done} generations)")
    if run_alive(store):
        of = f" of {planned}" if planned is not None else ""
        return RunStatus("running", f"running (generation {max(done, 0)}{of} committed)")
    of = f" of {planned}" if planned is not None else ""
    return RunStatus("crashed", f"stopped after generation {max(done, 0)}{of}: "
                                f"darwin run --resume {store.run_id}")
