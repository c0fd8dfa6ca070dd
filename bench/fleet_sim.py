"""The mesh at fleet scale, in the deterministic simulator (``nebula_edge.sim``).

Builds ``--agents`` simulated agents holding the same ``--modules`` small modules, with
``--latency`` links (1 ms), running the real ``mesh/`` code (digest index, difference-only
sync, rounds, membership) on virtual time. Then, per run (one seed each):

1. membership: virtual seconds until every agent lists every other, and until every
   member list agrees (after which idle rounds carry no lists);
2. idle, ``--idle`` virtual seconds: bytes/s and messages/s each agent sends for
   anti-entropy (mean and the busiest agent), and the liveness probes' bytes/s;
3. a deploy of a 200-byte module at one agent: virtual time until 50/99/100 % of the
   agents hold it, and the bytes the deploying agent sent for it;
4. an agent that cannot take one version (over its -max-module-size): a 100 KiB module is
   deployed, then over ``--idle`` seconds every pull (a round whose roots differ) is
   counted: 0 means it costs the others nothing beyond ordinary idle rounds;
5. a partition into two halves for ``--partition`` seconds with 5 deploys on each side,
   healed: virtual seconds until every agent holds the same records and lists every
   live member.

Same seed, same numbers. Wall time and simulator events are printed too.

Usage: ``.venv/bin/python bench/fleet_sim.py [--agents 1000] [--modules 5000]
[--seeds 1] [--idle 300] [--partition 60] [--latency 0.001] [--loss 0] [--json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from nebula_edge.sim.fleet import Fleet


def one_run(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    t0 = time.monotonic()
    fleet = Fleet.build(args.agents, args.modules, seed=seed, latency=args.latency,
                        loss=args.loss)
    out: dict[str, Any] = {"seed": seed, "agents": args.agents, "modules": args.modules}
    out["members_complete_s"] = fleet.run_until(fleet.members_complete, 1800, step=5)
    out["members_settled_s"] = fleet.run_until(fleet.members_settled, 1800, step=5)
    rates = fleet.idle(args.idle)
    out["idle_bytes_per_s"] = round(rates.bytes_per_s, 1)
    out["idle_bytes_per_s_max"] = round(rates.max_bytes_per_s, 1)
    out["idle_msgs_per_s"] = round(rates.msgs_per_s, 4)
    out["probe_bytes_per_s"] = round(rates.probe_bytes_per_s, 1)
    marks, sent, _ = fleet.deploy("agent0000", "double")
    out["deploy_s"] = {k: None if v is None else round(v, 4) for k, v in marks.items()}
    out["deployer_bytes"] = sent

    refuser = fleet.agents[sorted(fleet.agents)[1]]
    refuser.max_module_size = 64 * 1024
    fleet.deploy("agent0000", "roomy", wasm_size=100 * 1024)
    fleet.run(60)
    pulls0 = sum(c.by_kind.get("pull", 0) for c in fleet.net.sent.values())
    rates = fleet.idle(args.idle)
    pulls = sum(c.by_kind.get("pull", 0) for c in fleet.net.sent.values()) - pulls0
    out["refuser_pull_bytes_during_idle"] = pulls
    out["refuser_idle_bytes_per_s"] = round(rates.bytes_per_s, 1)

    heal = fleet.partition(args.partition)
    out["partition_heal_converge_s"] = heal
    out["sim_events"] = fleet.sim.events
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--modules", type=int, default=5000)
    p.add_argument("--seeds", type=int, default=1, help="runs, with seeds 1..N")
    p.add_argument("--idle", type=float, default=300.0, help="idle window, virtual s")
    p.add_argument("--partition", type=float, default=60.0, help="partition, virtual s")
    p.add_argument("--latency", type=float, default=0.001)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    runs = [one_run(args, seed) for seed in range(1, args.seeds + 1)]
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    for r in runs:
        print(f"seed {r['seed']}: {r['agents']} agents x {r['modules']} modules "
              f"({r['sim_events']} events, {r['wall_s']} s wall)")
        print(f"  membership complete {r['members_complete_s']} s, lists agree "
              f"{r['members_settled_s']} s later")
        print(f"  idle anti-entropy per agent: {r['idle_bytes_per_s']} B/s "
              f"(busiest {r['idle_bytes_per_s_max']}), {r['idle_msgs_per_s']} msg/s; "
              f"liveness probes {r['probe_bytes_per_s']} B/s")
        d = r["deploy_s"]
        print(f"  deploy reaches 50% {d['50%']} s, 99% {d['99%']} s, 100% {d['100%']} s; "
              f"deployer sent {r['deployer_bytes']} B")
        print(f"  agent refusing a version: pull bytes in the idle window "
              f"{r['refuser_pull_bytes_during_idle']}, idle {r['refuser_idle_bytes_per_s']} B/s")
        print(f"  partition of {args.partition:g} s healed: converged in "
              f"{r['partition_heal_converge_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
