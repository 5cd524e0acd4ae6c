"""Runs: what each run records and how it is read back.

record.py (manifest.json and metrics.jsonl as dataclasses), store.py (run folders: create, find,
update), provenance.py (code, data, environment), groups.py (seed groups read back from their
members), compare.py (what differs between runs or groups), stats.py (spread, Welch's test,
bootstrap intervals: scipy.stats), report.py (what `runs` and `show` print), compare_view.py (what
`compare` prints and plots, and the group views), mlflow_sink.py (the optional MLflow mirror).
Nothing here trains: shoshin.training and shoshin.experiments write runs through this package.
"""
