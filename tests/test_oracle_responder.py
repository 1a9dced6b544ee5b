"""The oracle responder: reading our real templates, playing teacher / referee / generator, failing loudly.

    python -m pytest -q tests/test_oracle_responder.py
"""

from __future__ import annotations

import random
import shutil
import statistics
from pathlib import Path

import pytest

from lion.errors import ConfigError
from lion.generation import parse_task as parse_generated
from lion.prompts import default_prompts_dir, load_template, teacher_request
from lion.referee import parse_verdict, referee_messages
from lion.sim import tasks as W
from lion.sim.oracle import OracleResponder, PromptMismatch


def teacher_body(instruction: str, prompts_dir: Path | None = None) -> dict:
    sys_t, user_t = load_template("teacher_system", prompts_dir), load_template("teacher", prompts_dir)
    return {"model": "sim", "messages": [
        {"role": "system", "content": sys_t.render()},
        {"role": "user", "content": user_t.render(request=teacher_request(instruction))},
    ]}


def referee_body(instruction: str, a: str, b: str, prompts_dir: Path | None = None) -> dict:
    return {"model": "sim", "messages": referee_messages(load_template("referee", prompts_dir), instruction, a, b)}


def gen_body(kind: str, instruction: str, prompts_dir: Path | None = None) -> dict:
    t = load_template(f"generate_{kind}", prompts_dir)
    return {"model": "sim", "messages": [{"role": "user", "content": t.render(instruction=instruction)}]}


def scores(reply: str) -> tuple[float, float]:
    v = parse_verdict(reply)
    assert v.ok, (v.error, reply)
    return v.a, v.b


@pytest.fixture(scope="module")
def oracle() -> OracleResponder:
    return OracleResponder(seed=0)


def test_teacher_answers_the_truth(oracle: OracleResponder) -> None:
    rng = random.Random(0)
    for _ in range(60):
        t = W.sample_task(rng)
        assert oracle.respond(teacher_body(t.instruction)) == t.answer
    assert oracle.classify(teacher_body("Add 2 and 3."))[0] == "teacher"


def test_teacher_fallback_for_foreign_instructions(oracle: OracleResponder) -> None:
    body = teacher_body("Write a haiku about autumn leaves.")
    reply = oracle.respond(body)
    assert len(reply.split()) >= 8 and "SCORES" not in reply and "TASK" not in reply
    assert oracle.respond(body) == reply  # deterministic


def test_teacher_request_with_input_block(oracle: OracleResponder) -> None:
    body = teacher_body("placeholder")
    body["messages"][1]["content"] = load_template("teacher").render(
        request=teacher_request("Reverse the letters: abc", "some input"))
    kind, fields = oracle.classify(body)
    assert (kind, fields["instruction"], fields["input"]) == ("teacher", "Reverse the letters: abc", "some input")


def test_referee_scores_by_correctness_in_the_template_format(oracle: OracleResponder) -> None:
    inst = "What is 47 plus 85?"
    a, b = scores(oracle.respond(referee_body(inst, "132", "131")))
    assert a == 9 and 2 <= b <= 6
    a, b = scores(oracle.respond(referee_body(inst, "banana", "132")))
    assert a == 2 and b == 9
    a, b = scores(oracle.respond(referee_body(inst, "132", " 132. ")))
    assert a == b == 9
    reply = oracle.respond(referee_body(inst, "132", "7"))
    assert reply.splitlines()[-1] == "SCORES: A=9, B=2"
    assert len(reply.splitlines()[0].split()) >= 5  # an explanation comes first


def test_referee_partial_credit_keeps_wrong_answers_hard() -> None:
    o = OracleResponder(partial_credit=True)
    inst = "Reverse the letters: abcdefg"
    near = scores(o.respond(referee_body(inst, "gfedcba", "gfedcbx")))
    far = scores(o.respond(referee_body(inst, "gfedcba", "zzz")))
    assert near[1] > far[1] and near[0] - near[1] >= 3  # closer is better, but still clearly worse than right
    flat = OracleResponder(partial_credit=False)
    assert scores(flat.respond(referee_body(inst, "gfedcba", "gfedcbx"))) == (9, 2)


def test_referee_noise_and_position_bias() -> None:
    inst = "Convert to uppercase: abc"
    biased = OracleResponder(position_bias=2.0)
    assert scores(biased.respond(referee_body(inst, "abc", "ABC"))) == (4, 9)
    assert scores(biased.respond(referee_body(inst, "ABC", "ABC"))) == (10, 9)  # 9 + 2 clipped to 10

    noisy = OracleResponder(referee_noise=1.5, seed=1)
    a_scores, b_scores = [], []
    for w in ("abc", "qrs", "xyz", "mno", "def", "ghi", "tuv", "jkl") * 5:
        for i in range(3):
            a, b = scores(noisy.respond(referee_body(f"Convert to uppercase: {w}{'x' * i}", "z", "y")))
            a_scores.append(a)
            b_scores.append(b)
    all_scores = a_scores + b_scores
    assert min(all_scores) >= 1 and max(all_scores) <= 10 and len(set(all_scores)) >= 4
    assert 0.7 < statistics.pstdev(all_scores) < 2.2  # ~1.5, a little less after rounding and clipping at 1
    body = referee_body("Convert to uppercase: abc", "ABC", "abc")
    assert noisy.respond(body) == noisy.respond(body)  # deterministic for one body
    other_seed = OracleResponder(referee_noise=1.5, seed=2)
    many = [referee_body(f"Convert to uppercase: {w}", "Q", "R") for w in ("abc", "bcd", "cde", "def", "efg")]
    assert [noisy.respond(b) for b in many] != [other_seed.respond(b) for b in many]


def test_generator_hard_keeps_family_and_difficulty(oracle: OracleResponder) -> None:
    rng = random.Random(3)
    for _ in range(40):
        seed = W.sample_task(rng)
        new_text = parse_generated(oracle.respond(gen_body("hard", seed.instruction)))
        new = W.parse_task(new_text)
        assert new is not None and new.family == seed.family
        assert abs(new.difficulty - seed.difficulty) <= 1
        assert new.instruction != seed.instruction


def test_generator_easy_goes_to_a_rarer_family_of_the_domain(oracle: OracleResponder) -> None:
    rng = random.Random(4)
    for _ in range(40):
        seed = W.sample_task(rng)
        new = W.parse_task(parse_generated(oracle.respond(gen_body("easy", seed.instruction))))
        assert new is not None and new.domain == seed.domain and new.family != seed.family
        rarest = min(W.BY_NAME[f].rarity for f in W.DOMAINS[seed.domain])
        if W.BY_NAME[seed.family].rarity > rarest:
            assert W.BY_NAME[new.family].rarity < W.BY_NAME[seed.family].rarity


def test_generator_answers_a_foreign_seed_with_a_task_of_the_world(oracle: OracleResponder) -> None:
    reply = oracle.respond(gen_body("hard", "Write a short poem about the sea."))
    assert W.parse_task(parse_generated(reply)) is not None


def _edited_prompts(tmp_path: Path) -> Path:
    d = tmp_path / "prompts"
    shutil.copytree(default_prompts_dir(), d)
    ref = (d / "referee.txt").read_text()
    ref = ref.replace("SCORES: A=<score>, B=<score>", "Final scores -> A: <a> / B: <b> (whole numbers)")
    ref = ref.replace("impartial reviewer", "strict grader")
    (d / "referee.txt").write_text(ref)
    hard = (d / "generate_hard.txt").read_text().replace('"TASK:"', '"NEW TASK:"')
    (d / "generate_hard.txt").write_text(hard.replace("practice tasks", "exercises"))
    (d / "teacher_system.txt").write_text("You are a terse assistant. Reply with the answer only.\n")
    return d


def test_an_edited_template_is_followed(tmp_path: Path) -> None:
    d = _edited_prompts(tmp_path)
    o = OracleResponder(prompts_dir=str(d))
    inst = "Sort these letters: dcba"
    reply = o.respond(referee_body(inst, "abcd", "abdc", prompts_dir=d))
    assert reply.splitlines()[-1].startswith("Final scores -> A: 9 / B: ")
    assert reply.splitlines()[-1].endswith(" (whole numbers)")
    gen = o.respond(gen_body("hard", inst, prompts_dir=d))
    assert gen.startswith("NEW TASK: ") and W.parse_task(gen.removeprefix("NEW TASK: ")).family == "sort_letters"
    assert o.respond(teacher_body(inst, prompts_dir=d)) == "abcd"


def test_a_request_from_an_edited_template_fails_loudly(tmp_path: Path, oracle: OracleResponder) -> None:
    d = _edited_prompts(tmp_path)
    inst = "Sort these letters: dcba"
    with pytest.raises(PromptMismatch, match="'referee' prompt"):
        oracle.respond(referee_body(inst, "abcd", "abdc", prompts_dir=d))
    with pytest.raises(PromptMismatch, match="'generate_hard' prompt"):
        oracle.respond(gen_body("hard", inst, prompts_dir=d))
    with pytest.raises(PromptMismatch, match="system message is not the teacher_system template"):
        oracle.respond(teacher_body(inst, prompts_dir=d))
    with pytest.raises(PromptMismatch, match="resembles none of the templates"):
        oracle.respond({"messages": [{"role": "user", "content": "Tell me a joke."}]})


def test_template_without_a_readable_output_format_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "p"
    shutil.copytree(default_prompts_dir(), d)
    ref = (d / "referee.txt").read_text().replace("SCORES: A=<score>, B=<score>", "Give both scores.")
    (d / "referee.txt").write_text(ref)
    with pytest.raises(ConfigError, match="'referee'.*verdict line"):
        OracleResponder(prompts_dir=str(d))


def test_unknown_option_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sim\.options\.noise"):
        OracleResponder(noise=1.0)
    with pytest.raises(ConfigError, match="referee_noise"):
        OracleResponder(referee_noise=-1)


def test_through_the_server_and_the_gateway(sim_server, sim_llm, tmp_path: Path) -> None:
    """Every role over real HTTP with the real openai client, as the loop calls it."""
    from lion.sim.server import make_responder
    from lion.teachers.base import ChatRequest
    from lion.teachers.gateway import Gateway

    server = sim_server(make_responder("oracle", {"seed": 5, "referee_noise": 0.5}))
    llm = sim_llm(server.base_url, max_tokens=256)
    t = W.sample_task(random.Random(9), "add", 3)
    with Gateway(llm, tmp_path, progress=False) as gw:
        [ans] = gw.chat_many("teacher", "test", [ChatRequest(messages=teacher_body(t.instruction)["messages"])])
        [ref] = gw.chat_many("referee", "test", [ChatRequest(messages=referee_body(t.instruction, t.answer, "0")["messages"])])
        [gen] = gw.chat_many("generator", "test", [ChatRequest(messages=gen_body("hard", t.instruction)["messages"])])
    assert ans.ok and ans.text == t.answer
    a, b = scores(ref.text)
    assert a > b
    assert W.parse_task(parse_generated(gen.text)).family == "add"
    assert server.stats.completed == 3


def test_a_request_the_oracle_cannot_read_fails_fast_with_its_reason(sim_server, sim_llm, tmp_path: Path) -> None:
    """The oracle's refusal reaches the caller as a 400 (one request, no retries), with the oracle's reason."""
    from lion.sim.server import make_responder
    from lion.teachers.base import ChatRequest
    from lion.teachers.gateway import Gateway

    server = sim_server(make_responder("oracle", {"seed": 5}))
    llm = sim_llm(server.base_url)
    with Gateway(llm, tmp_path, progress=False) as gw:
        [res] = gw.chat_many("teacher", "test", [ChatRequest(messages=[{"role": "user", "content": "Hello there."}])])
    assert not res.ok and res.text is None
    assert "resembles none of the templates" in (res.error or "")
    assert server.stats.requests == 1
