"""`python -m mlx_mqa.generate`: generate text with a converted (or plain Hugging Face) T5, streaming it.

The package's generation API is re-exported here, as mlx-lm does, so `mlx_mqa.generate` stays the
function after `import mlx_mqa.generate`."""

from __future__ import annotations

import sys

import click

from .cli import CONTEXT, fail
from .decoding.generate import generate, generate_step, stream_generate
from .errors import InputError, MlxMqaError

__all__ = ["generate", "generate_step", "main", "stream_generate"]


def _prompts(prompt, file):
    if prompt and file:
        raise InputError("give --prompt or --file, not both")
    if file:
        text = sys.stdin.read() if file == "-" else open(file, encoding="utf-8").read()
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise InputError(f"{file} holds no prompt (one per line)")
        return prompts
    if not prompt:
        raise InputError("give a --prompt (or --file with one prompt per line)")
    return list(prompt)


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
@click.option("--max-tokens", "-m", type=int, default=128, show_default=True, help="Most tokens to generate.")
@click.option("--num-beams", type=int, default=1, show_default=True, help="Beam search width (1: greedy/sampling).")
@click.option("--length-penalty", type=float, default=1.0, show_default=True, help="Beam search length penalty.")
@click.option("--no-repeat-ngram-size", type=int, default=0, show_default=True, help="Ban repeated n-grams.")
@click.option("--temp", type=float, default=0.0, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--top-p", type=float, default=0.0, show_default=True, help="Nucleus sampling (0: off).")
@click.option("--min-p", type=float, default=0.0, show_default=True, help="Min-p sampling (0: off).")
@click.option("--top-k", type=int, default=0, show_default=True, help="Top-k sampling (0: off).")
@click.option("--repetition-penalty", type=float, default=None, help="mlx-lm's repetition penalty (e.g. 1.2).")
@click.option("--seed", type=int, default=None, help="Random seed for sampling.")
@click.option("--max-input-tokens", type=int, default=None, help="Longer prompts are an error unless --truncate.")
@click.option("--truncate", is_flag=True, help="Cut prompts longer than --max-input-tokens.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help="Cast the weights (default: as stored).",
)
def main(
    model,
    prompt,
    file,
    max_tokens,
    num_beams,
    length_penalty,
    no_repeat_ngram_size,
    temp,
    top_p,
    min_p,
    top_k,
    repetition_penalty,
    seed,
    max_input_tokens,
    truncate,
    dtype,
):
    """Generate with a T5 (MHA, GQA or MQA). One prompt streams its text as it is generated;
    several prompts (or beam search) print one line each when the batch is done.

    \b
    Examples:
      python -m mlx_mqa.generate --model t5-gqa2 --prompt "summarize: The tower is 324 metres tall ..."
      python -m mlx_mqa.generate --model t5-gqa2 --file articles.txt --num-beams 4 --max-tokens 64
    """
    try:
        import mlx.core as mx

        from .checkpoint.load import load
        from .decoding.sample_utils import make_logits_processors, make_sampler, no_repeat_ngram_processor

        prompts = _prompts(prompt, file)
        if max_tokens < 1 or num_beams < 1:
            raise InputError("--max-tokens and --num-beams must be at least 1")
        if seed is not None:
            mx.random.seed(seed)
        m, tokenizer = load(model, dtype)
        options = dict(max_input_tokens=max_input_tokens, truncate=truncate)
        if num_beams > 1:
            options.update(
                num_beams=num_beams, length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size
            )
        else:
            procs = make_logits_processors(None, repetition_penalty)
            if no_repeat_ngram_size:
                procs.append(no_repeat_ngram_processor(no_repeat_ngram_size))
            options.update(sampler=make_sampler(temp, top_p, min_p, 1, top_k), logits_processors=procs or None)
        if len(prompts) == 1 and num_beams == 1:
            _stream(m, tokenizer, prompts[0], max_tokens, options)
            return
        for text in generate(m, tokenizer, prompts, max_new_tokens=max_tokens, **options):
            click.echo(text)
    except MlxMqaError as e:
        fail(e)
    except OSError as e:
        fail(InputError(str(e)))
    except KeyboardInterrupt:
        click.echo("", err=True)
        raise SystemExit(130)


if __name__ == "__main__":
    main()
