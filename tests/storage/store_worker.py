"""A second process for the storage tests: it opens the same trace database as the test process.

``store_worker.py DB crash``        opens (and claims) a run and a trace, prints their ids as JSON, then waits
                                    to be killed.
``store_worker.py DB write RUN N``  writes N complete traces into RUN, then prints "ok".
``store_worker.py DB open``         opens the store for writing (creating it if need be), prints "ok" or the error.
``store_worker.py DB claim RUN``    claims RUN, prints "claimed" or the error, then waits to be killed (holding the
                                    claim, if it got it).

DB is a path or a database URL.
"""

from __future__ import annotations

import json
import sys
import time

from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result

from ttc.errors import TTCError
from ttc.storage import TraceStore


def main() -> None:
    db, mode = sys.argv[1], sys.argv[2]
    if mode == "open":
        try:
            TraceStore(db).close()
        except TTCError as exc:
            print(f"error: {exc}", flush=True)
            return
        print("ok", flush=True)
        return
    store = TraceStore(db)
    if mode == "claim":
        try:
            store.claim_run(sys.argv[3])
            print("claimed", flush=True)
        except TTCError as exc:
            print(f"error: {exc}", flush=True)
        time.sleep(60)
        return
    if mode == "crash":
        run_id = store.create_run(kind="eval", config={"who": "worker"})
        store.claim_run(run_id)
        trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="worker",
                                     seed=1, run_id=run_id)
        print(json.dumps({"run_id": run_id, "trace_id": trace_id}), flush=True)
        time.sleep(60)
        return
    run_id, count = sys.argv[3], int(sys.argv[4])
    for i in range(count):
        nodes = make_nodes(20, seed=1000 + i)
        trace_id = store.start_trace(problem=make_problem(1000 + i), strategy="beam", budget=BUDGET,
                                     backend="worker", seed=i, run_id=run_id)
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=make_events(5, i))
    store.close()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
