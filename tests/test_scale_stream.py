"""Bounded memory for big pools: streamed seed/pool reading, the on-disk answer index, the gateway reading
requests from an iterator a window at a time, torn-tail repair, and the network-filesystem guard for SQLite.

    python -m pytest -q tests/test_scale_stream.py
"""

from __future__ import annotations

import array
import json
import random
from pathlib import Path

import pytest

from lion import fscheck
from lion.answers import AnswerStore
from lion.errors import BudgetExceeded, ConfigError, DataError
from lion.generation import KINDS, PoolRows, SeedSampler, scan_pool
from lion.records import (
    IdSet,
    Instruction,
    LoadReport,
    iter_instructions,
    iter_jsonl_tolerant,
    read_jsonl_tolerant,
    repair_torn_tail,
    union_pools,
    write_pool,
)
from lion.teachers.base import ChatRequest
from lion.teachers.gateway import Gateway

# --------------------------------------------------------------------------------------------- streamed reading


def test_seed_file_is_streamed_and_a_bad_row_far_down_names_its_line(tmp_path: Path) -> None:
    rows = [{"instruction": f"Task number {i}."} for i in range(2000)] + [{"instruction": "Task number 7."}]
    rows.append({"no_text": 1})
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = LoadReport(source="s")
    stream = iter_instructions(tmp_path / "s.jsonl", report=report)
    first = [next(stream) for _ in range(3)]
    assert [i.instruction for i in first] == ["Task number 0.", "Task number 1.", "Task number 2."]
    assert report.rows == 3, "the loader read ahead instead of streaming"
    with pytest.raises(DataError, match=r"s\.jsonl:2002: no instruction field"):
        list(stream)
    assert report.duplicates == 1  # the repeated "Task number 7." was merged and counted before the bad row


def test_union_pools_keeps_first_occurrence_order(tmp_path: Path) -> None:
    a = [Instruction(f"a {i}") for i in range(5)]
    b = [Instruction("a 3"), Instruction("b 1"), Instruction("a 0"), Instruction("b 2")]
    out = list(union_pools(a, b))
    assert [i.instruction for i in out] == ["a 0", "a 1", "a 2", "a 3", "a 4", "b 1", "b 2"]
    ids = IdSet(i.id for i in out)
    assert len(ids) == 7 and out[0].id in ids and Instruction("zzz").id not in ids


def test_torn_tail_is_cut_and_a_whole_last_row_kept(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "ans')  # a crash mid-append
    assert repair_torn_tail(p) == len('{"id": 3, "ans')
    assert p.read_text() == '{"id": 1}\n{"id": 2}\n'
    p.write_text('{"id": 1}\n{"id": 2}')  # complete row, newline not written yet
    assert repair_torn_tail(p) == 0 and p.read_text() == '{"id": 1}\n{"id": 2}\n'
    with p.open("a") as f:
        f.write('{"id": 3}\n')
    assert [r["id"] for r in read_jsonl_tolerant(p)] == [1, 2, 3]
    p.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(DataError, match=r"log\.jsonl:2: corrupt line in the middle"):
        list(iter_jsonl_tolerant(p))


# --------------------------------------------------------------------------------------------- answer store


def _store(tmp_path: Path) -> AnswerStore:
    return AnswerStore(tmp_path / "teacher_answers.jsonl", tmp_path / "calls.answers.sqlite")


def test_answer_store_is_an_index_over_the_log(tmp_path: Path) -> None:
    s = _store(tmp_path)
    for i in range(5000):
        s.put(f"id{i}", "T1", f"answer {i}", "stop")
    s.put("id7", "T2", "another teacher", "length")
    assert s.get("id4999", "T1")["answer"] == "answer 4999" and s.get("id7", "T2")["finish_reason"] == "length"
    assert s.get("id7", "T3") is None and s.get("nope", "T1") is None and len(s) == 5001
    s.close()
    log = (tmp_path / "teacher_answers.jsonl").read_text().splitlines()
    assert len(log) == 5001 and json.loads(log[3]) == {"id": "id3", "teacher": "T1", "answer": "answer 3",
                                                        "finish_reason": "stop"}
    # reopened: the index is used as it is (nothing re-read), lookups still answer
    s = _store(tmp_path)
    assert s.get("id123", "T1")["answer"] == "answer 123" and len(s) == 5001
    s.close()


def test_answer_index_catches_up_with_rows_the_crash_left_unindexed_and_rebuilds(tmp_path: Path) -> None:
    s = _store(tmp_path)
    s.put("a", "T", "first", "stop")
    s.close()
    log = tmp_path / "teacher_answers.jsonl"
    with log.open("a") as f:  # appended to the log, the process died before indexing it; then a torn row
        f.write(json.dumps({"id": "b", "teacher": "T", "answer": "second", "finish_reason": "stop"}) + "\n")
        f.write('{"id": "c", "teacher": "T", "ans')
    s = _store(tmp_path)
    assert s.get("b", "T")["answer"] == "second" and s.get("c", "T") is None
    s.put("c", "T", "third", "stop")  # starts on a line of its own: the torn row was cut on open
    s.close()
    assert [json.loads(x)["id"] for x in log.read_text().splitlines()] == ["a", "b", "c"]
    (tmp_path / "calls.answers.sqlite").unlink()  # the index is derived: a lost one is rebuilt from the log
    s = _store(tmp_path)
    assert [s.get(k, "T")["answer"] for k in "abc"] == ["first", "second", "third"]
    s.close()
    log.write_text(json.dumps({"id": "z", "teacher": "T", "answer": "new log", "finish_reason": "stop"}) + "\n")
    s = _store(tmp_path)  # another log under the same name: rebuilt, nothing stale served
    assert s.get("a", "T") is None and s.get("z", "T")["answer"] == "new log"
    s.close()


# --------------------------------------------------------------------------------------------- gateway window


@pytest.fixture
def echo_llm(sim_server, sim_llm):
    def make(**default):
        server = sim_server(latency_ms=default.pop("latency_ms", 0))
        return server, sim_llm(server.base_url, **default)

    return make


def test_chat_iter_reads_requests_one_window_at_a_time(tmp_path: Path, echo_llm) -> None:
    server, llm = echo_llm(max_in_flight=4, latency_ms=5)
    seen_completed: list[tuple[int, int]] = []

    def requests():
        for k in range(120):
            seen_completed.append((k, server.stats.completed))
            yield ChatRequest(messages=[{"role": "user", "content": f"question {k}"}])

    with Gateway(llm, tmp_path, progress=False) as gw:
        got = dict(gw.chat_iter("teacher", "t", requests(), window=8))
        assert sorted(got) == list(range(120)) and all(r.ok for r in got.values())
        assert got[17].text.endswith("question 17")
        # request k is read only once every window before its own has completed
        assert all(done >= (k // 8) * 8 for k, done in seen_completed), seen_completed[:20]
        assert any(done > 0 for _, done in seen_completed), "everything was read before the first call"
        # a replay is all cache hits, in input order for chat_many, from a generator as from a list
        again = gw.chat_many("teacher", "t", (ChatRequest(messages=[{"role": "user", "content": f"question {k}"}])
                                              for k in range(120)))
        assert [r.text for r in again] == [got[k].text for k in range(120)] and all(r.cached for r in again)
    assert server.stats.completed == 120


def test_chat_iter_stops_cleanly_when_the_consumer_stops_and_raises_budget_after_results(tmp_path: Path,
                                                                                         echo_llm) -> None:
    server, llm = echo_llm(max_in_flight=2)
    with Gateway(llm, tmp_path, progress=False) as gw:
        reqs = ([{"role": "user", "content": f"q{k}"}] for k in range(10_000))
        for n, _ in enumerate(gw.chat_iter("teacher", "t", reqs, window=8), 1):
            if n == 5:
                break
    assert server.stats.completed == 8, "the stream kept calling after its consumer stopped"
    server2, llm2 = echo_llm(max_in_flight=2, llm={"budget_tokens": 40 * 30, "chars_per_token": 4.0},
                             max_tokens=20)
    got = []
    with Gateway(llm2, tmp_path / "b", progress=False) as gw, pytest.raises(BudgetExceeded):
        for item in gw.chat_iter("teacher", "t", ([{"role": "user", "content": f"q{k}"}] for k in range(500)),
                                 window=16):
            got.append(item)
    assert 0 < len(got) < 500 and len(got) % 16 == 0  # the windows before the cap were handed out before the error


# --------------------------------------------------------------------------------------------- network filesystems


def _mounts(tmp_path: Path, monkeypatch, network_dir: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("/dev/vda / ext4 rw 0 0\n"
                     f"server:/export {str(network_dir).replace(' ', chr(92) + '040')} nfs4 rw,relatime 0 0\n")
    monkeypatch.setattr(fscheck, "MOUNTS", table)


def test_sqlite_files_are_refused_on_nfs_unless_moved_to_local_disk(tmp_path: Path, monkeypatch, sim_llm) -> None:
    shared = tmp_path / "shared fs"
    shared.mkdir()
    _mounts(tmp_path, monkeypatch, shared)
    assert fscheck.filesystem_type(shared / "run" / "calls.sqlite") == "nfs4"
    assert fscheck.filesystem_type(tmp_path / "local") == "ext4"
    llm = sim_llm("http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match=r"llm\.cache_path: .*nfs4 filesystem.*local disk"):
        Gateway(llm, shared / "run", progress=False)
    with pytest.raises(ConfigError, match=r"llm\.cache_path: .*the answer index"):
        AnswerStore(shared / "run" / "teacher_answers.jsonl", shared / "run" / "calls.answers.sqlite")
    llm.cache_path = str(tmp_path / "local" / "run.sqlite")
    with Gateway(llm, shared / "run", progress=False) as gw:
        assert gw.store.path == tmp_path / "local" / "run.sqlite"
    llm.cache_path, llm.allow_network_fs = None, True
    Gateway(llm, shared / "run", progress=False).close()


# --------------------------------------------------------------------------------------------- generation seeds


def test_seeds_read_from_the_pool_file_draw_what_the_list_draws(tmp_path: Path) -> None:
    pool = [Instruction(f"Instruction number {i} about topic {i % 7}.") for i in range(300)]
    write_pool(tmp_path / "cache_pool.jsonl", pool)
    rng = random.Random(5)
    labels = {i.id: rng.choice(["hard", "easy", "excluded"]) for i in pool}
    split = [{"id": i.id, "label": labels[i.id]} for i in pool]
    for order in (split, list(reversed(split))):  # pool order, and a split written in another order
        (tmp_path / "split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in order))
        offsets = {k: array.array("q") for k in KINDS}
        texts = list(scan_pool(tmp_path / "cache_pool.jsonl", tmp_path / "split.jsonl", offsets))
        assert texts == [i.instruction for i in pool]
        for k in KINDS:
            as_list = [i for i in pool if labels[i.id] == k]
            lazy = PoolRows(tmp_path / "cache_pool.jsonl", offsets[k])
            a, b = SeedSampler(as_list, random.Random("x")), SeedSampler(lazy, random.Random("x"))
            draws = 2 * len(as_list) + 3  # past a reshuffle
            assert [a.next() for _ in range(draws)] == [b.next() for _ in range(draws)]
            lazy.close()


# --------------------------------------------------------------------------------------------- chunked discrimination


def _loop_cfg(run_dir: Path, url: str, **discrimination) -> dict:
    root = Path(__file__).resolve().parents[1]
    return {
        "run_dir": str(run_dir), "seed": 3, "rounds": 1, "final_imitation": False,
        "llm": {"default": {"base_url": url, "model": "scripted", "api_key_env": "LION_TEST_KEY", "rpm": 60000,
                            "tpm": 1e8, "max_in_flight": 4, "max_attempts": 3, "backoff_initial_s": 0.05,
                            "backoff_max_s": 0.2, "timeout_s": 10}},
        "student": {"model": "tiny", "tiny": {"vocab": "char", "hidden": 32, "layers": 1, "heads": 2},
                    "max_length": 256, "max_steps": 2, "per_device_batch_size": 8, "grad_accum": 1,
                    "infer": {"backend": "transformers", "max_new_tokens": 8, "batch_size": 16}},
        "pools": {"train_seed": str(root / "data" / "smoke_seed.jsonl"), "limit": 20},
        "discrimination": discrimination,
    }


def test_chunked_discrimination_equals_one_chunk_and_resumes_at_the_last_whole_chunk(tmp_path: Path, sim_server,
                                                                                       monkeypatch) -> None:
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loop_world import LoopResponder

    import lion.discrimination as disc
    import lion.selectors as selectors
    from lion.config import config_from_dict
    from lion.context import RunContext
    from lion.imitation import imitation

    monkeypatch.setenv("LION_TEST_KEY", "sk-test")
    server = sim_server(LoopResponder())
    one = config_from_dict(_loop_cfg(tmp_path / "one", server.base_url))
    with RunContext(one, progress=False) as ctx:
        imitation(ctx, 1)
    shutil.copytree(tmp_path / "one", tmp_path / "chunked")  # the same student and teacher answers
    with RunContext(one, progress=False) as ctx:
        m_one = disc.discrimination(ctx, 1)

    chunked = config_from_dict(_loop_cfg(tmp_path / "chunked", server.base_url, chunk_size=3))
    real_judge, calls = selectors.judge_pairs, []

    def interrupted(*a, **kw):  # the process dies while judging the third chunk
        calls.append(len(a[3]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_judge(*a, **kw)

    monkeypatch.setattr(selectors, "judge_pairs", interrupted)
    with pytest.raises(KeyboardInterrupt), RunContext(chunked, progress=False) as ctx:
        disc.discrimination(ctx, 1)
    rd = tmp_path / "chunked" / "round_01"
    progress = json.loads((rd / "discrimination.progress.json").read_text())
    assert progress["rows"] == 6 and not (rd / "discrimination.done").exists()
    with (rd / "judgements.jsonl").open("a") as f:  # half a chunk's rows written when the process died
        f.write('{"id": "torn", "order": "ref_first"}\n{"id": "torn", "ord')
    monkeypatch.setattr(selectors, "judge_pairs", real_judge)
    with RunContext(chunked, progress=False) as ctx:
        m_chunked = disc.discrimination(ctx, 1)
    assert m_chunked == m_one and m_one["n"] == 20
    a, b = tmp_path / "one" / "round_01", rd
    for name in ("split.jsonl", "judgements.jsonl"):
        assert (a / name).read_text() == (b / name).read_text(), name
    answers = {n: sorted((a if n == "one" else b).joinpath("student_answers.jsonl").read_text().splitlines())
               for n in ("one", "chunked")}
    assert answers["one"] == answers["chunked"]  # the same answers, each once, though the run was interrupted
    assert not (rd / "discrimination.progress.json").exists()
