#!/bin/sh
# The refine experiments in order (one at a time): lr sweep, parameter choice (seed 0), then cost per shape.
cd "$(dirname "$0")" || exit 1
PY=${PY:-python}
$PY refine_testbed.py lr --steps 60
$PY refine_testbed.py params --steps 100
