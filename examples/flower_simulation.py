"""Run a privbench experiment on Flower's simulation runtime and print its row.

    pip install -e '.[flower]'
    python examples/flower_simulation.py            # FedAvg, DLG on client 0 in round 0
    python examples/flower_simulation.py --rounds 5 --clients 6
    python examples/flower_simulation.py --method fedmix --defense dp-sgd
    python examples/flower_simulation.py --restarts 1    # one attack start instead of 4

The clients are Flower ClientApps on Ray running the method's client role; every
message Flower carries (model, averaged data, policy, generator, update) passes through
privbench's channel (Flower's own serialised bytes), and the server-side attack is
scored like any `privbench run` row.
"""

from __future__ import annotations

import argparse
import json
import logging

from privbench import AttackConfig, FedConfig, RunConfig
from privbench.cli import format_rows
from privbench.integrations.flower import FlowerBench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--method", default="fedavg")
    p.add_argument("--defense", action="append", default=[])
    p.add_argument("--attack", default="dlg")
    p.add_argument("--restarts", type=int, help="attack starts (default: the attack's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = RunConfig(
        method=args.method,
        dataset="digits",
        partition="dirichlet",
        model="lenet-sigmoid",
        fed=FedConfig(clients=args.clients, rounds=args.rounds, eval_every=0),
        attack=AttackConfig(
            names=(args.attack,),
            params={} if args.restarts is None else {"restarts": args.restarts},
        ),
        seed=args.seed,
        defenses=tuple(args.defense),
    )
    rows = FlowerBench(config).run_simulation()
    dicts = [r.to_dict() for r in rows]
    print(json.dumps(dicts) if args.json else format_rows(dicts))


if __name__ == "__main__":
    main()
