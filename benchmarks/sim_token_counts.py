"""serve-sim's prompt counting and emitted text against a real byte-level BPE tokenizer.

With ``--tokenizer PATH`` (a tokenizer.json or a directory with one) that tokenizer is used; otherwise
GPT-2-style byte-level BPE tokenizers are trained here with the ``tokenizers`` package on the Python
standard library's .py files, the way ``../shared/real-servers/make_tiny_model.py`` builds the tokenizer of
the tiny real-server model (no download), at the vocabulary sizes of ``--vocab``.

Prints, per tokenizer, the ratio (serve-sim's built-in count / the tokenizer's count) for:

- the chat filler text ``agentperf`` sends (:func:`agentperf_kit.client.prompts.chat_probe_messages`),
- Python source (what recorded coding-agent messages mostly hold),
- and the tokenizer's tokens per emitted chunk of serve-sim's output text (1.0 = one token per chunk).

    python benchmarks/sim_token_counts.py [--tokenizer PATH] [--vocab 4096 32768] [--files 120]
"""

from __future__ import annotations

import argparse
import glob
import os
import sysconfig

from agentperf_kit.client.prompts import chat_probe_messages
from agentperf_kit.sim.server import _WORDS, _words
from agentperf_kit.sim.tokens import text_tokens


def train(vocab: int, files: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train(files, trainer)
    return tok


def report(name: str, encode, code_text: str) -> None:
    def ratio(text: str) -> str:
        ours, theirs = len(text_tokens(text)), len(encode(text))
        return f"{ours:7d} / {theirs:7d} = {ours / theirs:.2f}"

    print(f"== {name}")
    for n_words in (1_000, 10_000):
        text = chat_probe_messages("8731906523318745123", n_words)[0]["content"]
        print(f"chat filler, {n_words:6d} words: built-in / tokenizer = {ratio(text)}")
    print(f"Python source ({len(code_text):,} chars): built-in / tokenizer = {ratio(code_text)}")
    n = 1000
    print(
        f"emitted text, {n} chunks: {len(encode(_words(0, n))) / n:.2f} tokenizer tokens per chunk "
        f"(words: {', '.join(repr(w) for w in _WORDS)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="a local tokenizer.json (or its directory) to measure against")
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--files", type=int, default=120, help="stdlib .py files to train on (sorted)")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    with open(files[-1], encoding="utf-8") as f:  # the last file: not in the training set below
        code_text = f.read()
    if args.tokenizer:
        from agentperf_kit.sim.tokens import load_tokenizer

        report(args.tokenizer, load_tokenizer(args.tokenizer), code_text)
        return
    for vocab in args.vocab:
        tok = train(vocab, files[: args.files])
        name = f"byte-level BPE, vocab {vocab}, trained on {args.files} stdlib files"
        report(name, lambda t, tok=tok: tok.encode(t).ids, code_text)


if __name__ == "__main__":
    main()
