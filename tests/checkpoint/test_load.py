"""Loading model directories: every file read resolves inside the directory, a tokenizer is required
where one is used, and malformed config.json files are one-line errors."""

import json
import shutil

import pytest

from mlx_mqa import load, load_model
from mlx_mqa.checkpoint.random_init import save_random_checkpoint
from mlx_mqa.conversion import convert
from mlx_mqa.errors import CheckpointError
from tests.helpers import t5_config

CFG = t5_config("flan-t5-small", num_layers=1, num_decoder_layers=1, vocab_size=4200)


@pytest.fixture
def sharded(tmp_path, tokenizer):
    return save_random_checkpoint(CFG, tmp_path / "src", tokenizer=tokenizer, shards=2)


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_a_shard_index_cannot_point_outside_the_directory(tmp_path, sharded, where):
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    shard = next(sharded.glob("model-00002*"))
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(shard, outside)
    name = "../elsewhere.safetensors" if where == "parent" else str(outside)
    data["weight_map"] = {k: (name if v == shard.name else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    for read in (lambda: load_model(sharded), lambda: convert(str(sharded), tmp_path / "out")):
        with pytest.raises(CheckpointError, match=r"elsewhere.safetensors' in .*src resolves outside the model dir"):
            read()
    assert not (tmp_path / "out").exists()


def test_links_to_files_outside_the_directory_are_not_read_or_copied(tmp_path, tokenizer):
    src = save_random_checkpoint(CFG, tmp_path / "src", tokenizer=tokenizer)
    secret = tmp_path / "secret.json"
    shutil.move(src / "tokenizer.json", secret)
    (src / "tokenizer.json").symlink_to(secret)
    with pytest.raises(CheckpointError, match=r"'tokenizer.json' in .*src resolves outside"):
        convert(str(src), tmp_path / "out")
    with pytest.raises(CheckpointError, match="resolves outside"):
        load(src)
    assert not (tmp_path / "out").exists()
    (src / "tokenizer.json").unlink()
    shutil.move(secret, src / "tokenizer.json")
    load(src)  # all inside again
    shutil.move(src / "config.json", tmp_path / "config.json")
    (src / "config.json").symlink_to(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="'config.json' in .*src resolves outside"):
        load_model(src)


def test_a_directory_without_a_tokenizer_converts_but_does_not_load_with_one(tmp_path, tokenizer):
    src = save_random_checkpoint(CFG, tmp_path / "src")  # weights, no tokenizer
    said = []
    out = convert(str(src), tmp_path / "out", kv_heads=2, progress=said.append)
    assert any("has no tokenizer: the output will have none" in m for m in said)
    assert json.loads((out / "config.json").read_text())["conversion"]["tokenizer"] is None
    assert load_model(out).args.num_key_value_heads == 2  # the weights alone load
    for path in (src, out):
        with pytest.raises(CheckpointError, match=r"has no tokenizer \(tokenizer.json or spiece.model\)"):
            load(path)
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        convert(str(src), tmp_path / "out2", tokenizer_path=str(src))  # asked for: must be usable
    with pytest.raises(CheckpointError, match="has no tokenizer and --pool fit"):
        convert(str(src), tmp_path / "out3", kv_heads=2, pool="fit")
    out = convert(str(src), tmp_path / "with", kv_heads=2, tokenizer_path=str(save_tokenizer(tokenizer, tmp_path)))
    assert json.loads((out / "config.json").read_text())["conversion"]["tokenizer"].endswith("tok")
    load(out)


def save_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    return tmp_path / "tok"


def test_generate_refuses_a_model_without_a_tokenizer(tmp_path):
    from click.testing import CliRunner

    from mlx_mqa.generate import main

    src = save_random_checkpoint(CFG, tmp_path / "src")
    r = CliRunner().invoke(main, ["--model", str(src), "-p", "summarize: hello"])
    assert r.exit_code == 3 and r.output.startswith("error: ") and "has no tokenizer" in r.output
