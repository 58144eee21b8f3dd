"""A model card for converted models, and upload to the Hugging Face Hub (as `mlx_lm.convert` does)."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent
from typing import Optional

from ..errors import CheckpointError


def _card_text(name: str, config: dict) -> str:
    c = config.get("conversion", {})
    H, G = c.get("num_heads", config.get("num_heads")), c.get("kv_heads", config.get("num_key_value_heads"))
    kind = "multi-head" if G == H else "multi-query" if G == 1 else f"grouped-query ({G} K/V heads)"
    return dedent(f"""
        # {name}

        T5 with {kind} attention in the decoder ({H} query heads), converted to MLX from
        `{c.get("source")}` with mlx-mqa {c.get("mlx_mqa_version")}: K/V projection heads
        pooled per group (`{c.get("pool")}`, groups in the {c.get("groups_in")}), weights in {c.get("dtype")}
        (Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
        Checkpoints"). A converted model is usually uptrained briefly before use (`python -m mlx_mqa.uptrain`).

        ```python
        from mlx_mqa import load, generate

        model, tokenizer = load("{name}")
        print(generate(model, tokenizer, "summarize: ...", max_new_tokens=64))
        ```
        """).lstrip()


def create_model_card(path, config: dict, name: Optional[str] = None) -> None:
    """Write README.md (metadata: library mlx, base model, tags) into model directory `path`."""
    from huggingface_hub import ModelCard, ModelCardData

    source = config.get("conversion", {}).get("source")
    data = ModelCardData(library_name="mlx", tags=["mlx", "t5", "gqa", "mlx-mqa"], pipeline_tag="text2text-generation")
    if source and not Path(source).exists():
        data.base_model = source  # a hub id; a local path means nothing to readers of the card
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + _card_text(name or Path(path).name, config))
    card.save(str(Path(path) / "README.md"))


def upload_to_hub(path, upload_repo: str) -> None:
    """Upload model directory `path` to hub repository `upload_repo`, its card naming that repository."""
    from huggingface_hub import HfApi

    path = Path(path)
    create_model_card(path, json.loads((path / "config.json").read_text()), name=upload_repo)
    try:
        api = HfApi()
        api.create_repo(repo_id=upload_repo, exist_ok=True)
        api.upload_large_folder(folder_path=str(path), repo_id=upload_repo, repo_type="model")
    except Exception as e:  # no network, no token, no rights
        raise CheckpointError(
            f"upload to {upload_repo} failed ({type(e).__name__}: {e}); {path} is complete "
            f"locally: retry with `huggingface-cli upload {upload_repo} {path}`"
        ) from None
