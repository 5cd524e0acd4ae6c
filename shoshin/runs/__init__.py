"""Runs: how each run is kept and read back, and what the run commands print.

store.py (run folders: create, find, update; `latest`), lock.py (one writer per run),
provenance.py (code, data, environment), groups.py (seed groups read back from their members),
compare.py (what differs between runs or groups), report.py (what `runs` and `show` print),
compare_view.py (what `compare` prints and plots, and the group views), mlflow_sink.py (the
optional MLflow mirror). The records themselves (manifest.json, metrics.jsonl, eval records) are
shoshin.storage's; the statistics are shoshin.stats (scipy.stats). Nothing here trains:
shoshin.training and shoshin.experiments write runs through this package.
"""
