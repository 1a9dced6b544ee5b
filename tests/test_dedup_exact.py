"""RougeIndex decisions equal rouge_score's ROUGE-L F-measure exactly (brute force), on real and random text.

python -m pytest -q tests/test_dedup_exact.py
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import shared_file
from rouge_score import rouge_scorer

from lion.dedup import RougeIndex, lcs_length, main, rouge_l_f, rouge_tokens
from lion.errors import ConfigError

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def brute(query: str, texts: list[str]) -> tuple[float, int | None]:
    """rouge_score itself; ties -> the earliest text, like RougeScorer.score_multi's argmax."""
    fs = [SCORER.score(query, t)["rougeL"].fmeasure for t in texts]
    if not fs or max(fs) == 0:
        return 0.0, None
    m = max(fs)
    return m, fs.index(m)


def test_random_corpora_match_brute_force_for_best_and_every_threshold():
    rng = random.Random(1)
    words = "a b c d e the of write list explain how why 1 2 x".split()
    for _ in range(150):
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) for _ in range(rng.randint(1, 20))]
        t = rng.choice([0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
        idx = RougeIndex(texts, threshold=t)
        for _ in range(4):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
            exp = brute(q, texts)
            assert idx.best(q) == exp, (q, texts)
            assert idx.is_near_duplicate(q) == (exp[0] > t)


def test_lcs_matches_rouge_score_table_including_long_sequences():
    rng = random.Random(2)
    for n in (0, 1, 5, 63, 64, 65, 200):
        for _ in range(5):
            a = [rng.choice("abcdefg") for _ in range(n)]
            b = [rng.choice("abcdefg") for _ in range(rng.randint(0, 150))]
            want = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
            assert lcs_length(a, b) == want


def test_tokeniser_equals_rouge_scores_on_real_and_unicode_text(shared_data: Path):
    """rouge_tokens equals rouge_score's tokenizer on real Vicuna-80 questions and answers and on odd Unicode."""
    from rouge_score import tokenize

    texts = ["İstanbul K ǅ ß ﬁ ½ ２ ³ x_y", "a\u00a0b\u2003c\u200bd", "", "--- !!! ..."]
    for name in ("answer_gpt35.jsonl", "answer_bard.jsonl", "question.jsonl"):
        for ln in shared_file(shared_data, f"vicuna80/{name}").read_text().splitlines():
            row = json.loads(ln)
            texts += row["turns"] if "turns" in row else [row["text"]]
    assert len(texts) > 200
    for t in texts:
        assert rouge_tokens(t) == tokenize.tokenize(t, None), t


def test_bulk_and_incremental_indexing_agree():
    rng = random.Random(4)
    words = "alpha beta gamma delta the a of to 7".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 10))) for _ in range(60)]
    bulk = RougeIndex(texts[:40])
    bulk.add_many(texts[40:50])
    for t in texts[50:]:
        bulk.add(t)
    one = RougeIndex()
    for t in texts:
        one.add(t)
    for q in texts[::3] + ["alpha beta", "zeta"]:
        assert bulk.best(q) == one.best(q) == brute(q, texts)


def test_strictly_greater_at_an_exact_tie_with_the_threshold():
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five six seven x y z"  # LCS 7 of 10 / 10
    f = SCORER.score(b, a)["rougeL"].fmeasure
    assert rouge_l_f(b, a) == f
    assert not RougeIndex([a], threshold=f).is_near_duplicate(b)  # equal is not greater
    assert RougeIndex([a], threshold=math.nextafter(f, 0.0)).is_near_duplicate(b)
    assert RougeIndex([a], threshold=0.7).best(b) == (f, 0)


def test_tokenisation_is_rouge_scores_and_edge_cases():
    assert rouge_tokens("Don't STOP—believin' 2day!") == ["don", "t", "stop", "believin", "2day"]
    assert rouge_tokens("Crème brûlée") == ["cr", "me", "br", "l", "e"]  # rouge_score keeps ASCII a-z0-9 only
    idx = RougeIndex(threshold=0.7)
    assert idx.best("anything") == (0.0, None) and not idx.is_near_duplicate("anything")
    idx.add("")  # a text with no tokens never matches
    idx.add("!!!")
    assert idx.best("") == (0.0, None) and idx.best("???") == (0.0, None)
    idx.add("Write a haiku about autumn leaves.")
    assert idx.best("write a HAIKU, about autumn leaves!") == (1.0, 2)
    idx.add("Write a haiku about autumn leaves")  # equal maximum: the earliest index wins
    assert idx.best("Write a haiku about autumn leaves") == (1.0, 2)
    assert len(idx) == 4
    with pytest.raises(ConfigError, match="threshold"):
        RougeIndex(threshold=1.5)


def test_real_instructions_match_brute_force_incrementally(shared_data: Path):
    """Incremental RougeIndex decisions on real instructions and near copies equal rouge_score brute force."""
    texts = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        lines = shared_file(shared_data, f"self_instruct/{name}").read_text().splitlines()
        texts += [json.loads(ln)["instruction"] for ln in lines]
    vicuna = shared_file(shared_data, "vicuna80/question.jsonl")
    questions = [json.loads(ln)["turns"][0] for ln in vicuna.read_text().splitlines()]
    rng = random.Random(3)
    # near copies of indexed instructions (a few words dropped or swapped) and unrelated evaluation questions
    queries = []
    for t in rng.sample(texts, 12):
        w = t.split()
        for _ in range(rng.randint(1, 4)):
            if len(w) > 3:
                del w[rng.randrange(len(w))]
        queries.append(" ".join(w))
    queries += rng.sample(questions, 8)
    idx = RougeIndex(texts[:300], threshold=0.7)
    indexed = texts[:300]
    dups = 0
    for q in queries:
        exp = brute(q, indexed)
        assert idx.best(q) == exp, q
        hit = idx.find_near_duplicate(q)
        assert (hit is not None) == (exp[0] > 0.7)
        if hit is not None:
            dups += 1
            assert hit[0] == SCORER.score(q, indexed[hit[1]])["rougeL"].fmeasure > 0.7
        else:  # grow the index as the generation filter does
            idx.add(q)
            indexed.append(q)
    assert 0 < dups < len(queries)


def test_cli_reports_duplicates(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    rows = ["Write a poem about the sea.", "Write a poem about the ocean.", "List three uses of copper wire."]
    pool.write_text("".join(json.dumps({"instruction": r}) + "\n" for r in rows))
    assert main([str(pool), "--query", "list 3 uses of copper wire"]) == 0
    out = capsys.readouterr().out
    assert "1 of 3 rows are near-duplicates" in out and "ROUGE-L 0.833 with row 0" in out
    assert "best ROUGE-L 0.833 with row 2" in out
