"""Sweeps that leave the machine: a grid of DVC experiments fanned out over a Ray cluster.

    python -m appliedtorch.sweep run lr --variant fast mlp.lr=0.01 --seeds 3 --stage train_mlp

- `grid`: variants × seeds, one `<sweep>-<variant>-s<seed>` experiment per point;
- `checks`: what must hold before a node starts (committed, pushed, shared remotes and store);
- `task`: one point on a node: clone, `dvc exp run`, push, its MLflow run claimed;
- `driver`: Ray connected (or a local instance), tasks out, failures and Ctrl-C, results back;
- `results`: the experiments pulled and compared (mean ± CI, Welch's p, as recipes.py does);
- `progress`: one line per finished point, a bar on a terminal;
- `cli`: the command line, and `reproduce RUN_ID`.

The MLflow side (the parent run and its children) is tracking/sweep.py. Ray is the `cluster`
extra (`pip install -e ".[cluster]"`), imported only inside the functions that use it.
"""
