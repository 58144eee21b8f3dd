"""`python -m mlx_mqa.generate`: generate text with a converted (or plain Hugging Face) T5, streaming it.

The package's generation API is re-exported here, as mlx-lm does, so `mlx_mqa.generate` stays the
function after `import mlx_mqa.generate`."""

from __future__ import annotations

import sys

import click

from .cli import CONTEXT, fail
from .decoding.generate import generate, generate_step, stream_generate
from .errors import ConfigError, InputError, MlxMqaError

__all__ = ["generate", "generate_step", "main", "stream_generate"]


def _prompts(prompt, file):
    if prompt and file:
        raise InputError("give --prompt or --file, not both")
    if file:
        try:
            raw = sys.stdin.buffer.read() if file == "-" else open(file, "rb").read()
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"--file {file} is not UTF-8 text; give a text file with one prompt per line") from None
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise InputError(f"{file} holds no prompt (one per line)")
        return prompts
    if not prompt:
        raise InputError("give a --prompt (or --file with one prompt per line)")
    return list(prompt)


SAMPLING = ("temp", "top_p", "min_p", "top_k")


def check_options(o: dict) -> None:
    """Every option's range, and which go together, before the model is loaded."""
    for name, low in (("max_new_tokens", 1), ("num_beams", 1), ("top_k", 0), ("no_repeat_ngram_size", 0)):
        if o[name] < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, not {o[name]}")
    if not 0 <= o["temp"] < float("inf"):
        raise ConfigError(f"--temp must be >= 0 (0: greedy), not {o['temp']}")
    for name in ("top_p", "min_p"):
        if not 0 <= o[name] <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1] (0: off), not {o[name]}")
    if o["repetition_penalty"] is not None and not 0 < o["repetition_penalty"] < float("inf"):
        raise ConfigError(f"--repetition-penalty must be > 0 (1: none), not {o['repetition_penalty']}")
    if not abs(o["length_penalty"]) < float("inf"):
        raise ConfigError(f"--length-penalty must be a finite number, not {o['length_penalty']}")
    if o["max_input_tokens"] is not None and o["max_input_tokens"] < 1:
        raise ConfigError(f"--max-input-tokens must be at least 1, not {o['max_input_tokens']}")
    if o["num_beams"] > 1:
        given = [f"--{k.replace('_', '-')}" for k in SAMPLING if o[k]]
        if given:
            raise ConfigError(f"beam search (--num-beams {o['num_beams']}) samples nothing: drop {', '.join(given)}")
    elif o["length_penalty"] != 1.0 or o["early_stopping"] != "false":
        raise ConfigError("--length-penalty and --early-stopping apply to beam search; add --num-beams N (N > 1)")


def _stream(model, tokenizer, prompt, max_tokens, options) -> str:
    """Print the text as it is generated: only what a longer decode no longer changes."""
    tokens, shown = [], ""
    for step in stream_generate(model, tokenizer, prompt, max_new_tokens=max_tokens, **options):
        if step.tokens[0] == tokenizer.eos_token_id:
            break
        tokens.append(step.tokens[0])
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            click.echo(text[len(shown) :], nl=False)
            shown = text
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    click.echo(text[len(shown) :] if text.startswith(shown) else "")
    return text


@click.command(context_settings=CONTEXT)
@click.option("--model", required=True, help="Converted MLX directory, Hugging Face T5 directory or hub id.")
@click.option("--prompt", "-p", multiple=True, help="Input text, e.g. 'summarize: ...' (repeatable: a batch).")
@click.option(
    "--file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Text file with one prompt per line ('-' reads stdin); generated as one padded batch.",
)
@click.option(
    "--max-new-tokens",
    "--max-tokens",
    "-m",
    "max_new_tokens",
    type=int,
    default=128,
    show_default=True,
    help="Most tokens to generate (--max-tokens: the same).",
)
@click.option("--num-beams", type=int, default=1, show_default=True, help="Beam search width (1: greedy/sampling).")
@click.option("--length-penalty", type=float, default=1.0, show_default=True, help="Beam search length penalty.")
@click.option(
    "--early-stopping",
    type=click.Choice(["true", "false", "never"]),
    default="false",
    show_default=True,
    help="Beam search: stop when num_beams hypotheses are done (true), by transformers' heuristic (false), "
    "or only when no beam can improve (never).",
)
@click.option("--no-repeat-ngram-size", type=int, default=0, show_default=True, help="Ban repeated n-grams.")
@click.option("--temp", type=float, default=0.0, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--top-p", type=float, default=0.0, show_default=True, help="Nucleus sampling (0: off).")
@click.option("--min-p", type=float, default=0.0, show_default=True, help="Min-p sampling (0: off).")
@click.option("--top-k", type=int, default=0, show_default=True, help="Top-k sampling (0: off).")
@click.option("--repetition-penalty", type=float, default=None, help="mlx-lm's repetition penalty (e.g. 1.2).")
@click.option("--seed", type=int, default=None, help="Random seed for sampling.")
@click.option(
    "--max-input-tokens",
    type=int,
    default=None,
    help="Longer prompts are an error unless --truncate (default: the model's n_positions, else 512).",
)
@click.option("--truncate", is_flag=True, help="Cut prompts longer than --max-input-tokens.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help="Cast the weights (default: as stored).",
)
def main(model, prompt, file, seed, dtype, **o):
    """Generate with a T5 (MHA, GQA or MQA). One prompt streams its text as it is generated;
    several prompts (or beam search) print one line each when the batch is done.

    \b
    Examples:
      python -m mlx_mqa.generate --model t5-gqa2 --prompt "summarize: The tower is 324 metres tall ..."
      python -m mlx_mqa.generate --model t5-gqa2 --file articles.txt --num-beams 4 --max-new-tokens 64
    """
    try:
        import mlx.core as mx

        from .checkpoint.load import load

        check_options(o)
        prompts = _prompts(prompt, file)
        if seed is not None:
            mx.random.seed(seed)
        m, tokenizer = load(model, dtype)
        options = dict(max_input_tokens=o["max_input_tokens"], truncate=o["truncate"], **decoding_options(o))
        if len(prompts) == 1 and o["num_beams"] == 1:
            _stream(m, tokenizer, prompts[0], o["max_new_tokens"], options)
            return
        for text in generate(m, tokenizer, prompts, max_new_tokens=o["max_new_tokens"], **options):
            click.echo(text)
    except MlxMqaError as e:
        fail(e)
    except OSError as e:
        fail(InputError(str(e)))
    except KeyboardInterrupt:
        click.echo("", err=True)
        raise SystemExit(130)


def decoding_options(o: dict) -> dict:
    """The keyword arguments of `generate` for the CLI's options (checked by `check_options`)."""
    from .decoding.sample_utils import make_logits_processors, make_sampler, no_repeat_ngram_processor

    procs = make_logits_processors(None, o["repetition_penalty"])
    if o["num_beams"] > 1:
        early = {"true": True, "false": False}.get(o["early_stopping"], "never")
        return dict(
            num_beams=o["num_beams"],
            length_penalty=o["length_penalty"],
            early_stopping=early,
            no_repeat_ngram_size=o["no_repeat_ngram_size"],
            logits_processors=procs or None,
        )
    if o["no_repeat_ngram_size"]:
        procs.append(no_repeat_ngram_processor(o["no_repeat_ngram_size"]))
    sampler = make_sampler(o["temp"], o["top_p"], o["min_p"], 1, o["top_k"])
    return dict(sampler=sampler, logits_processors=procs or None)


if __name__ == "__main__":
    main()
