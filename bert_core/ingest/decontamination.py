"""Evaluation-set decontamination: documents that share a word n-gram with a downstream evaluation text are dropped.

Any word n-gram (13 by default, as in GPT-3's decontamination) shared with an evaluation text counts; evaluation
texts shorter than n words (but at least `min_eval_words`) are matched whole. Words and their hashes are
`bert_core.ingest.dedup`'s, so a document is compared in the same normalised form as for deduplication. The
evaluation files are the catalogue's dev and test sets (`read_eval_texts` reads any of them: table files or SQuAD
JSON); the ingest stage (`bert_core.ingest.corpus`) builds one `ContaminationIndex` per run.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bert_core.ingest.dedup import DedupConfig, ngram_hashes, normalized_words, word_hashes
from bert_core.ingest.textfiles import column_spec, read_squad, read_table_file


class ContaminationIndex:
    """Word n-grams of downstream evaluation texts; `overlaps(hashes)` counts a document's shared n-grams."""

    def __init__(self, texts: Iterable[str], config: DedupConfig):
        n = config.decontamination_ngram
        grams: dict[int, set[int]] = {}
        self.texts = self.too_short = 0
        for text in texts:
            hashes = word_hashes(normalized_words(text))
            self.texts += 1
            if hashes.size < config.min_eval_words:
                self.too_short += 1
                continue
            length = min(n, hashes.size)
            grams.setdefault(length, set()).update(ngram_hashes(hashes, length).tolist())
        self._grams = {length: np.array(sorted(values), dtype=np.uint64) for length, values in grams.items()}

    def __len__(self) -> int:
        return sum(g.size for g in self._grams.values())

    def overlaps(self, hashes: np.ndarray) -> int:
        total = 0
        for length, grams in self._grams.items():
            query = ngram_hashes(hashes, length)
            if query.size and grams.size:
                # Binary search in the sorted evaluation n-grams: no sort of the (much longer) document side.
                found = grams[np.minimum(np.searchsorted(grams, query), grams.size - 1)] == query
                total += int(found.sum())
        return total


def read_eval_texts(spec: str) -> list[str]:
    """Texts of an evaluation file named as "path" or "path::column1,column2" (TSV/CSV/JSONL/Parquet, gzip ok).

    Without columns, the first of `sentence`, `text`, `question`, `context` that exists is used. A SQuAD-format
    JSON file gives its paragraphs (`context`, the default) and/or its questions (`question`).
    """
    path, columns = column_spec(spec)
    if path.endswith((".json", ".json.gz")):
        questions = read_squad(path)
        names = list(columns) or ["context"]
        unknown = sorted(set(names) - {"context", "question"})
        if unknown:
            raise ValueError(f"{path}: SQuAD files have columns context and question, not {unknown}")
        contexts = list(dict.fromkeys(q.context for q in questions)) if "context" in names else []
        return contexts + ([q.question for q in questions] if "question" in names else [])
    table = read_table_file(path, string_columns=columns)
    names = list(columns) or [
        next((c for c in ("sentence", "text", "question", "context") if c in table.column_names), table.column_names[0])]
    missing = [c for c in names if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing} (columns: {table.column_names})")
    return [str(v) for c in names for v in table.column(c).to_pylist() if v is not None]
