"""Control-plane benchmark: a real gateway against thousands of simulated agents.

    python -m benchmarks.fleet --agents 1000 5000 10000 [--heartbeat-s 10] \
        [--steady-s 30] [--bake-s 5] [--json reports/fleet-bench.json]

Same as ``fleet-sim fleet``; see :mod:`simulators.fleet_bench` for what is measured.
"""

from simulators.fleet_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
