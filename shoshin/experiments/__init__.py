"""Experiments: commands that run training for a purpose, built on shoshin.training and recorded
as ordinary runs (shoshin.runs).

- `lr_find`: the learning-rate range test (`shoshin lr-find`)
- `reproduce`: re-run a recorded run and verify its metrics (`shoshin reproduce`)
- `matrix`: architectures x datasets at one budget, with a leaderboard (`shoshin bench matrix`)
- `seeds`: one configuration over several seeds, as a group (`shoshin train ... --seeds N`)
"""
