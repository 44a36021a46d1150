"""The application built on the library: the `miga-fast` command (cli.py), the demo
(demo.py), the experiments (experiments.py), the training of the model zoo (train.py),
figures (viz.py) and the one table of data sets and shipped models they share
(setups.py). The library (miga_fast.ops, attacks, mine, defenses, ...) never imports
from here."""
