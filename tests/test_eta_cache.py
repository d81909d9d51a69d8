"""The on-disk text -> value cache: hits, misses, reordering, parameters, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from debiascl.errors import DataError
from debiascl.eta.cache import TextValueCache, corpus_fingerprint, text_key


class Counting:
    """A compute function that records what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[float]:
        self.calls.append(list(texts))
        return [-float(len(t)) for t in texts]


def test_miss_then_hit_then_reorder(tmp_path):
    texts = ["b c", "a", "b c", "dddd"]
    fn = Counting()
    cache = TextValueCache(tmp_path, "src", {"p": 1})
    vals = cache.get_or_compute(texts, fn)
    np.testing.assert_array_equal(vals, [-3.0, -1.0, -3.0, -4.0])
    assert fn.calls == [["b c", "a", "dddd"]]  # duplicates computed once
    assert (cache.misses, cache.hits) == (3, 0)
    # a fresh object reads the file: every text is a hit, nothing computed, reordering is fine
    fresh = TextValueCache(tmp_path, "src", {"p": 1})
    fn2 = Counting()
    vals2 = fresh.get_or_compute(list(reversed(texts)), fn2)
    np.testing.assert_array_equal(vals2, [-4.0, -3.0, -1.0, -3.0])
    assert fn2.calls == [] and (fresh.misses, fresh.hits) == (0, 3)
    np.testing.assert_array_equal(fresh.lookup(["dddd", "a"]), [-4.0, -1.0])
    # a new text: only it is computed, and it is added to the file
    vals3 = fresh.get_or_compute(["a", "eeeee"], fn2)
    assert fn2.calls == [["eeeee"]] and vals3.tolist() == [-1.0, -5.0]
    assert len(TextValueCache(tmp_path, "src", {"p": 1})) == 4


def test_keys_depend_on_text_source_and_params(tmp_path):
    a = TextValueCache(tmp_path, "src", {"p": 1})
    b = TextValueCache(tmp_path, "src", {"p": 2})
    c = TextValueCache(tmp_path, "other", {"p": 1})
    assert len({a.path, b.path, c.path}) == 3
    a.get_or_compute(["x"], Counting())
    fn = Counting()
    b.get_or_compute(["x"], fn)
    assert fn.calls == [["x"]]
    data = json.loads(a.path.read_text())
    assert set(data["values"]) == {text_key("x")} and data["params"] == {"p": 1}


def test_missing_text_is_a_clear_error(tmp_path):
    cache = TextValueCache(tmp_path, "src", {})
    cache.get_or_compute(["known"], Counting())
    with pytest.raises(DataError, match="'unknown' has no cached src value"):
        TextValueCache(tmp_path, "src", {}).lookup(["known", "unknown"])


def test_corrupt_file_is_a_clear_error(tmp_path):
    cache = TextValueCache(tmp_path, "src", {})
    cache.get_or_compute(["x"], Counting())
    cache.path.write_text("{not json")
    with pytest.raises(DataError, match="delete it to recompute"):
        TextValueCache(tmp_path, "src", {}).lookup(["x"])


def test_memory_only_cache():
    cache = TextValueCache(None, "src", {})
    fn = Counting()
    cache.get_or_compute(["x", "y"], fn)
    cache.get_or_compute(["y", "x"], fn)
    assert fn.calls == [["x", "y"]] and cache.path is None


def test_corpus_fingerprint_is_order_free_but_content_sensitive():
    assert corpus_fingerprint(["a", "b", "a"]) == corpus_fingerprint(["b", "a", "a"])
    assert corpus_fingerprint(["a", "b", "a"]) != corpus_fingerprint(["a", "b"])
    assert corpus_fingerprint(["a", "b"]) != corpus_fingerprint(["a", "c"])
