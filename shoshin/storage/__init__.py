"""Storage, the ground floor: what shoshin keeps on disk and how it is read back.

files.py       atomic writes and JSON, the temporaries a killed writer leaves
text.py        text from files and the outside world: the BOM and Unicode rules
checkpoint.py  the checkpoint format (safetensors + JSON, index.json)
manifest.py    a run's records: manifest.json and metrics.jsonl, as typed records
evaluations.py evaluation records (evals/*.json)

These modules import nothing of shoshin but each other and `shoshin.errors`.
"""
