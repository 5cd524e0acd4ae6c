"""Is the new model better? Scores of a trained model, recorded in its run directory.

- `heldout`: the validation conversations (or texts) scored whole with no extra install: per-role
  loss and perplexity, bits per byte, the first reply token against the rest;
- `harness`: tasks of the lm-evaluation-harness (`pip install 'shoshin[eval]'`) run against the
  model served in-process by `shoshin serve`'s own app;
- `pairwise`: two models' replies to the same held-out prompts side by side, and which model gives
  each reference reply the higher likelihood;
- `record`: the `eval/` folder of a run, read by `show`, `compare` and `bench matrix`.
"""
