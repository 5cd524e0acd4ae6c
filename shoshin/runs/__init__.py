"""Runs: what each run records and how it is read back.

record.py (manifest.json and metrics.jsonl as dataclasses), store.py (run folders: create, find,
update), provenance.py (code, data, environment), compare.py (what differs between runs),
report.py (what `runs`, `show` and `compare` print), mlflow_sink.py (the optional MLflow mirror).
Nothing here trains: shoshin.training and shoshin.experiments write runs through this package.
"""
