#!/bin/sh
# The refine, recovery and cost experiments in order (one at a time), as run for experiments/README.md.
cd "$(dirname "$0")" || exit 1
PY=${PY:-python}
$PY refine_testbed.py lr --lrs 3e-5,1e-4,3e-4 --steps 30          # G=1, attention, seed 0
$PY refine_testbed.py params --gs 1 --modes attention+norms,all --steps 30
$PY refine_testbed.py params --gs 2,4 --modes attention --steps 30
$PY recovery.py run --start svd-q --gs 1 --minutes 10 --eval-every 10
$PY recovery.py run --start mean --gs 1 --minutes 6 --eval-every 10
$PY refine_cost.py t5-base t5-large
