"""A small CLIP-style byte-level BPE vocabulary, written offline.

The vocabulary is the 256 byte symbols, the same with the end-of-word marker, the learned merges
and the two special tokens, so any text still tokenizes (byte by byte at worst) while words of
the benchmark's prompts become single tokens once merges for them are learned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from saeuron.atomic_files import write_text_atomic

START, END = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer(folder: str | Path, merges: Sequence[tuple[str, str]] = (), model_max_length: int = 32) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` for
    ``CLIPTokenizer.from_pretrained(folder)`` (transformers 5 ignores file arguments to the
    constructor, so a folder is the reliable way in)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    for left, right in merges:
        merged = left + right
        if merged not in vocab_list:
            vocab_list.append(merged)
    vocab_list += [START, END]
    write_text_atomic(folder / "vocab.json", json.dumps({tok: i for i, tok in enumerate(vocab_list)}, ensure_ascii=False))
    write_text_atomic(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": START,
        "eos_token": END,
        "pad_token": END,
        "unk_token": END,
        "do_lower_case": True,
    }
    write_text_atomic(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    return folder


def learn_merges(corpus: list[str]) -> list[tuple[str, str]]:
    """BPE merges learned from ``corpus`` until every word in it is one token.

    Uses the ``tokenizers`` trainer: merges are global and ranked, so hand-written merge
    chains for single words interfere with each other (the "r i" of "ring" pre-empts the
    "st r" of "stripes").
    """
    import tempfile

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        min_frequency=1,
        initial_alphabet=list(bytes_to_unicode().values()),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.model.save(folder)
        lines = (Path(folder) / "merges.txt").read_text(encoding="utf-8").splitlines()
    return [(left, right) for left, right in (line.split() for line in lines if line and not line.startswith("#"))]
