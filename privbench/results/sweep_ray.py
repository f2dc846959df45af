"""The sweep's Ray backend: every task (one training's points) a Ray task on a local
instance or the cluster at ``address``."""

from __future__ import annotations

import os

from privbench.errors import PrivbenchError
from privbench.results.sweep import _collect, _run_points


def run_ray(tasks, *, out, workers, threads, address, on_done) -> int:
    try:
        import ray
    except ImportError as err:
        raise PrivbenchError(
            "the ray backend needs Ray: pip install 'privbench[ray]' (or pip install ray)"
        ) from err
    from privbench.progress import bar

    started_here = not ray.is_initialized()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry calls home
    if started_here:
        ray.init(
            address=address,
            num_cpus=None if address else workers,
            include_dashboard=False,
            log_to_driver=False,
        )
    remote = ray.remote(num_cpus=1, max_calls=1)(_run_points)
    failed = 0
    try:
        where = os.path.abspath(out)
        refs = {remote.remote([p.argv for p in g], where, threads, again): g for g, again in tasks}
        with bar(sum(len(g) for g in refs.values()), "points", leave=True) as pbar:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                ref = done[0]
                failed += _collect(refs[ref], lambda ref=ref: ray.get(ref), out, pbar, on_done)
    finally:
        if started_here:
            ray.shutdown()
    return failed
