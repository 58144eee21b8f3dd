#!/bin/sh
# Recovery (lr 1e-4: uptrain's default 1e-3 raised the svd-q student's KL, 0.0308 -> 0.0453 in 20 steps) and cost.
cd "$(dirname "$0")" || exit 1
PY=${PY:-python}
$PY recovery.py run --start svd-q --gs 1 --minutes 10 --eval-every 10 --lr 1e-4
$PY recovery.py run --start mean --gs 1 --minutes 5 --eval-every 10 --lr 1e-4
$PY refine_cost.py t5-base t5-large
$PY hard_testbed.py --ranks
