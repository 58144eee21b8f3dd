#!/bin/sh
# The 12 M model's distillation vs span corruption at G = 1 over 3 seeds, on one checkpoint (pretrained here if
# runs/ has none): conversions and w = 0 runs, then w = 0.5 and 1. About 1 h 45 min on 2 cores.
cd "$(dirname "$0")" || exit 1
PY=${PY:-python}
OUT=results/mqa_kd_3seeds
$PY calibrated_merge.py --only g1-mean,g1-svd-q --seeds 1,2,3 --results $OUT/conversions.json || exit 1
$PY distill_uptrain.py --only g1-mean,g1-svd-q --seeds 1,2,3 --conversions $OUT/conversions.json --results $OUT/distill.json
