"""``emprocess admin`` and ``emprocess runs``: what a lab runs around an ingest — deploy the workflow,
administer buckets, renumber an acquisition, name a run, list and delete a source's runs.

Every command is a list of ``actions.Step`` built first and carried out second, so ``--dry-run`` prints
exactly the calls the command would make, and a destructive command asks before its first call.
"""
