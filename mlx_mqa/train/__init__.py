"""Uptraining and pretraining: objectives (`objectives`), training data (`data`), the trainer and its
checkpoints (`trainer`, `checkpoints`), tokenizer training (`tokenizer`) and the CLI (`uptrain`)."""
