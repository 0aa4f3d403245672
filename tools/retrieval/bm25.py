"""Okapi BM25 keyword ranking: the classical engine, used when the MiniLM weights are not installed.

Words are lower-cased, common English words dropped and a plural ``s`` stripped; there is no other
stemming, so a question must use the knowledge base's words (``haemorrhage``, not ``hemorrhage``).
Scores are scaled to the query: 1.0 means every query word occurs once in a passage of average length,
0 means none occurs, so one relevance threshold fits short and long questions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

ENGINE_NAME = "Keyword search (BM25)"
ENGINE_VERSION = "Okapi BM25 k1=1.5 b=0.75"
K1 = 1.5
B = 0.75
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
STOP_WORDS = frozenset(
    """a about above after again all also am an and any are as at be been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her
    here how i if in into is it its itself just me more most my no nor not now of off on once only or other
    our out over own same she should so some such than that the their them then there these they this
    those through to too under until up very was we were what when where which while who whom why will
    with would you your seen show shows mean means look looks like""".split()
)


def terms(text: str) -> list[str]:
    """The words BM25 compares: lower case, no stop words, ``nodules`` -> ``nodule``."""
    words = []
    for word in _WORD.findall(text.lower()):
        if word in STOP_WORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
        words.append(word)
    return words


class BM25:
    """BM25 over a fixed list of documents; ``scores(query)`` gives one scaled score per document."""

    def __init__(self, documents: Sequence[str]) -> None:
        self.counts = [Counter(terms(document)) for document in documents]
        self.lengths = np.array([sum(c.values()) for c in self.counts], dtype=np.float64)
        self.average_length = float(self.lengths.mean()) if len(self.counts) else 0.0
        self.document_frequency: Counter[str] = Counter()
        for counts in self.counts:
            self.document_frequency.update(counts.keys())

    def idf(self, term: str) -> float:
        """Inverse document frequency (the non-negative Lucene form): rare words weigh more."""
        n, df = len(self.counts), self.document_frequency.get(term, 0)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """One score per document: BM25 divided by the query's total idf (see the module docstring).

        A query word found nowhere still counts in the divisor, so a question mostly about something
        else scores low even when one of its words matches.
        """
        query_terms = terms(query)
        result = np.zeros(len(self.counts), dtype=np.float64)
        total_idf = sum(self.idf(term) for term in query_terms)
        if not query_terms or not self.counts or total_idf == 0:
            return result
        length_norm = K1 * (1.0 - B + B * self.lengths / max(self.average_length, 1e-9))
        for term in query_terms:
            frequencies = np.array([counts.get(term, 0) for counts in self.counts], dtype=np.float64)
            result += self.idf(term) * frequencies * (K1 + 1.0) / (frequencies + length_norm)
        return result / total_idf
