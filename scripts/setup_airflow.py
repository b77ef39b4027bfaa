"""Create the emprocess pools in an Airflow deployment (Composer or any cluster).

Run where the Airflow CLI/metadata DB is reachable:
    python scripts/setup_airflow.py --align-slots 32 --write-slots 64
"""

from __future__ import annotations

import argparse

from emprocess.registry import SERVICES
from emprocess.workflow import THREADS_PER_WORKER
from emprocess.workflow.dag_factory import POOLS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--align-slots", type=int, default=32, help="concurrent calls to the alignment service")
    parser.add_argument("--write-slots", type=int, default=64, help="concurrent calls to the emwrite service")
    args = parser.parse_args()
    slots = {SERVICES["fiji"].pool: args.align_slots, SERVICES["emwrite"].pool: args.write_slots}
    for name, count in slots.items():
        if count < THREADS_PER_WORKER:  # such a pool never has room for a worker task
            parser.error(f"{name}: {count} slots; a worker task takes {THREADS_PER_WORKER} (one per call in "
                         f"flight), so give it at least {THREADS_PER_WORKER}")
    from airflow.models.pool import Pool

    for name, description in POOLS.items():
        Pool.create_or_update_pool(name, slots[name], description, include_deferred=False)
        print(f"pool {name}: {slots[name]} slots")


if __name__ == "__main__":
    main()
