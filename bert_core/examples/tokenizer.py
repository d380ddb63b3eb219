"""WordPiece tokenizers: train one on a corpus with `tokenizers`, or load an existing one; BERT special tokens.

The special tokens come first in a fixed order so that their ids are the same for every trained vocabulary:
[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4. Loading goes through `PreTrainedTokenizerFast(tokenizer_object=...)`
and checks the vocabulary size, because transformers 5 silently ignores `vocab_file=` and yields a 5-token vocab.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
from annotated_types import Ge
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bert_core.config import PositiveInt, check_fields

if TYPE_CHECKING:  # transformers is imported only where a transformers tokenizer is built (see _wrap)
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    vocab_size: Annotated[int, Ge(len(SPECIAL_TOKENS) + 1)] = 30522  # WordPiece vocabulary size, special tokens included
    lowercase: bool = True  # an uncased tokenizer (lower-cased, accents stripped)
    min_frequency: PositiveInt = 2  # a pair merges only when seen this often
    limit_alphabet: PositiveInt = 1000  # the most frequent characters kept as the initial alphabet
    tokenizer_path: str | None = None  # load this tokenizer (directory, tokenizer.json or vocab.txt) instead of training

    def __post_init__(self):
        check_fields(self)



def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast  # imported when needed: example workers never load it

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    if len(tokenizer) != backend.get_vocab_size():
        raise RuntimeError(f"tokenizer lost its vocabulary: {len(tokenizer)} != {backend.get_vocab_size()}")
    return tokenizer


def _backend(vocab: dict[str, int] | None, lowercase: bool) -> Tokenizer:
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _add_post_processor(backend: Tokenizer) -> None:
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _canonical_vocab(vocab: dict[str, int]) -> dict[str, int]:
    """Renumber a trained vocabulary so that the same corpus always gives the same ids.

    The trainer keeps its alphabet and equal-count merges in hash maps, so the same vocabulary comes out with
    different ids on every run. WordPiece only needs the set of pieces, so the ids are reassigned in a fixed
    order: the specials first (fixed ids), then pieces by length, word-initial before `##`, then alphabetically.
    """
    rest = sorted((t for t in vocab if t not in SPECIAL_TOKENS),
                  key=lambda t: (len(t.removeprefix("##")), t.startswith("##"), t))
    return {token: index for index, token in enumerate([*SPECIAL_TOKENS, *rest])}


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on `texts` (a transformers tokenizer)."""
    return _wrap(train_backend(texts, config))


def _is_bert_punctuation(char: str) -> bool:
    """BertPreTokenizer's rule: ASCII symbols and Unicode punctuation are words of their own."""
    cp = ord(char)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 \
        or unicodedata.category(char).startswith("P")


def corpus_alphabet(texts: Iterable[str], backend: Tokenizer, limit: int) -> tuple[list[str], list[str]]:
    """(alphabet, continuation pieces) of the normalised texts: the `limit` most frequent characters, ties broken
    by code point, and `##c` for each of them that occurs inside a word (after a letter, not at a word start).

    The trainer cuts its alphabet with an unstable sort of a hash map, so characters of equal count (rare scripts,
    symbols) are kept or dropped differently in every process; choosing them here makes the alphabet a function
    of the corpus alone. Word starts follow BertPreTokenizer: after whitespace or a punctuation character (each
    punctuation character is a word of its own, and the normaliser puts spaces around CJK characters).
    """
    counts: Counter = Counter()
    initial: Counter = Counter()
    punctuation: set[str] = set()
    checked: set[str] = set()

    def add(batch: list[str]) -> None:
        text = " " + backend.normalizer.normalize_str("\n".join(batch))
        counts.update(text)
        new = set(text).difference(checked)
        checked.update(new)
        punctuation.update(c for c in new if _is_bert_punctuation(c))
        boundary = "\\s" + "".join(re.escape(c) for c in sorted(punctuation))
        initial.update(re.findall(f"(?<=[{boundary}])[^{boundary}]", text))

    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= 2048:
            add(batch)
            batch = []
    if batch:
        add(batch)
    for char in [c for c in counts if c.isspace()]:
        del counts[char]
    alphabet = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:limit])
    continuations = [f"##{c}" for c in alphabet if c not in punctuation and counts[c] > initial[c]]
    return alphabet, continuations


def train_backend(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train a BERT-style WordPiece `tokenizers.Tokenizer` on `texts` (an iterable read twice: pass a list or an
    object whose `__iter__` starts over, not a generator).

    The vocabulary is a pure function of the texts and the config, in any process. `tokenizers`' trainer is not:
    it cuts the alphabet with an unstable sort of a hash map, and it numbers the `##c` continuation pieces in the
    order it meets words in another hash map, and those numbers break ties between merges of equal count. So the
    alphabet is chosen here (`corpus_alphabet`) and passed as the initial alphabet, and the continuation pieces of
    that alphabet are given fixed ids up front, listed after the specials; `_canonical_vocab` then renumbers.
    """
    if iter(texts) is texts:
        raise TypeError("train_backend reads the texts twice: pass a list or a re-iterable, not an iterator")
    backend = _backend(None, config.lowercase)
    alphabet, continuations = corpus_alphabet(texts, backend, config.limit_alphabet)
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        limit_alphabet=config.limit_alphabet,
        initial_alphabet=alphabet,
        special_tokens=[*SPECIAL_TOKENS, *continuations],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend = _backend(_canonical_vocab(backend.get_vocab()), config.lowercase)
    _add_post_processor(backend)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(token) != expected_id:
            raise RuntimeError(f"special token {token} got id {backend.token_to_id(token)}, expected {expected_id}")
    logger.info("trained a WordPiece vocabulary of %d tokens", backend.get_vocab_size())
    return backend


def load_tokenizer(path: str | Path, *, lowercase: bool = True) -> PreTrainedTokenizerFast:
    """Load a transformers tokenizer from a directory, a `tokenizer.json`, or a BERT `vocab.txt`."""
    return _wrap(load_backend(path, lowercase=lowercase))


def load_backend(path: str | Path, *, lowercase: bool = True) -> Tokenizer:
    """Load a `tokenizers.Tokenizer` from a directory (`save_pretrained`/`save_tokenizer` output), a
    `tokenizer.json`, or a BERT `vocab.txt` (WordPiece with BERT's normaliser and pre-tokeniser)."""
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.txt").is_file():
            path = path / "vocab.txt"
        else:
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.txt")
    if path.name.endswith(".json"):
        backend = Tokenizer.from_file(str(path))
    elif path.suffix == ".txt":
        tokens = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
        backend = _backend({tok: i for i, tok in enumerate(tokens)}, lowercase)
        _add_post_processor(backend)
    else:
        raise ValueError(f"cannot load a tokenizer from {path}")
    for token in SPECIAL_TOKENS:
        if backend.token_to_id(token) is None:
            raise ValueError(f"tokenizer {path} has no {token} token")
    return backend


def save_tokenizer(backend: Tokenizer, directory: str | Path) -> Path:
    """Write `tokenizer.json` + `tokenizer_config.json`: what `AutoTokenizer.from_pretrained(directory)` loads.

    The data stages write tokenizers with this instead of `save_pretrained`, so that they never import
    transformers (about a second of start-up per process). The config names `PreTrainedTokenizerFast`, the class
    both transformers 4 and 5 load from a `tokenizer.json`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
        "model_max_length": 512,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return directory


def _backend_of(tokenizer) -> Tokenizer:
    return tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer


def tokenizer_hash(tokenizer: PreTrainedTokenizerFast | Tokenizer) -> str:
    """A sha256 of the tokenizer's definition (vocabulary, normaliser, pre-tokeniser, post-processor), the same
    for the `tokenizers` backend a data stage saved and for that directory loaded by transformers, which registers
    the special tokens (already in the vocabulary, same ids) as added tokens. Padding and truncation are settings
    of a call, not of the tokenizer."""
    definition = json.loads(_backend_of(tokenizer).to_str())
    definition.pop("padding", None)
    definition.pop("truncation", None)
    vocab = (definition.get("model") or {}).get("vocab") or {}
    definition["added_tokens"] = [t for t in definition.get("added_tokens") or []
                                  if not (t.get("special") and vocab.get(t["content"]) == t["id"])]
    blob = json.dumps(definition, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def special_ids(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    return np.array(sorted(tokenizer.all_special_ids), dtype=np.int64)


def continuation_mask(tokenizer: PreTrainedTokenizerFast | Tokenizer) -> np.ndarray:
    """A boolean per vocabulary id: True for WordPiece continuation pieces (`##...`), for whole-word masking."""
    backend = _backend_of(tokenizer)
    mask = np.zeros(backend.get_vocab_size(), dtype=bool)
    for token, index in backend.get_vocab().items():
        if token.startswith("##"):
            mask[index] = True
    return mask
