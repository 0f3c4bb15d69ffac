"""Final-answer extraction and normalization (what votes and grades compare)."""

from __future__ import annotations

import pytest

from ponder.verifiers.answers import extract_answer, extract_code, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # boxed wins, the last one, nested braces kept whole
        (r"so $\boxed{\frac{1}{2}}$", "1/2"),
        (r"first \boxed{3} then \boxed{x^{2}+1}", "x^{2}+1"),
        (r"Answer: 5 but really \boxed{6}", "6"),
        (r"\boxed{1,000}", "1000"),
        # "Answer:" lines, commas, trailing periods, bold
        ("Answer: 1,234.", "1234"),
        ("Answer: 7", "7"),
        ("answer = 12", "12"),
        ("The answer is 7", "7"),
        ("The final answer is **12**", "12"),
        ("**Final Answer:** 42", "42"),
        ("Final answer: $18", "18"),
        ("Answer:\n  9", "9"),
        ("Answer: 3\nAnswer: 4\nsome words after", "4"),
        ("Let me find the answer to this one. The answer is 8.", "8"),
        ("Answer: Paris", "paris"),
        ("Answer: New   York City.", "new york city"),
        # GSM8K style
        ("5 + 37 = 42\n#### 42", "42"),
        ("#### 1,500", "1500"),
        # last number fallback
        ("First 3 apples, then 4 more, so 7 in total.", "7"),
        ("it costs -2.50 dollars", "-2.5"),
        ("I have 10 apples", "10"),
        # decimals and fractions
        ("Answer: 3.50", "3.5"),
        ("Answer: 2.0", "2"),
        ("Answer: 100", "100"),
        ("Answer: 0.75", "0.75"),
        ("Answer: 3/4", "3/4"),
        (r"Answer: \frac{3}{4}", "3/4"),
        (r"\boxed{\dfrac{5}{8}}", "5/8"),
        # nothing numeric: the text itself, normalized
        ("  Blue  ", "blue"),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_of_nothing_is_none() -> None:
    assert extract_answer("") is None
    assert extract_answer("   \n ") is None


def test_answer_is_a_whole_word() -> None:
    # "answered" is not an answer line; the last number is the answer.
    assert extract_answer("I answered 3 questions and got 5 right") == "5"


def test_digits_inside_words_are_not_numbers() -> None:
    assert extract_answer("The gas is CO2 and the total is 44") == "44"
    assert extract_answer("w1 w2 w3") == "w1 w2 w3"


def test_answer_word_without_a_stated_answer_is_skipped() -> None:
    assert extract_answer("Answer: 7\nI hope this answer helps.") == "7"
    assert extract_answer("Answer: 7\nThat is the answer.") == "7"
    assert extract_answer("**Answer**: 12") == "12"


def test_pathological_inputs_stay_linear() -> None:
    # These took seconds to minutes with backtracking-prone patterns; each must stay instant.
    # (No timing is asserted: a regression shows up as a hung test run.)
    assert extract_answer("Answer" + "\n" * 5000) == "answer"
    assert extract_answer("Answer:" + " " * 5000 + "\n" * 5000) == "answer:"
    assert extract_code("```" + "a" * 50000) == "```" + "a" * 50000


def test_unclosed_boxed_falls_back() -> None:
    assert extract_answer(r"\boxed{12") == "12"


def test_spellings_of_the_same_number_vote_together() -> None:
    forms = ["Answer: 1,234", "The answer is 1234.", r"\boxed{1234.00}", "#### $1,234"]
    assert {extract_answer(f) for f in forms} == {"1234"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  **7**. ", "7"),
        ("$5", "5"),
        ("10%", "10"),
        ("x = 5", "5"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("-0.250", "-0.25"),
        ("12 apples", "12"),
        ("The Eiffel Tower", "the eiffel tower"),
        ("3 and 4", "3 and 4"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


PY_THEN_OUTPUT = """Here is the code:
```python
def add(a, b):
    return a + b
```
Output:
```
3
```
"""


def test_extract_code_prefers_the_python_block_over_later_untagged_output() -> None:
    assert extract_code(PY_THEN_OUTPUT) == "def add(a, b):\n    return a + b\n"


def test_extract_code_takes_the_last_python_block() -> None:
    text = "```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```\n```bash\nls\n```"
    assert extract_code(text) == "x = 2\n"


def test_extract_code_uses_untagged_blocks_when_none_is_tagged() -> None:
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"


def test_extract_code_other_language() -> None:
    text = "```python\nx = 1\n```\n```javascript\nlet x = 1;\n```\n```py\ny = 2\n```"
    assert extract_code(text, language="javascript") == "let x = 1;\n"


def test_extract_code_without_language_takes_the_last_block() -> None:
    text = "```python\nx = 1\n```\n```bash\nls -la\n```"
    assert extract_code(text, language=None) == "ls -la\n"
    assert extract_code(text, language="rust") == "ls -la\n"


def test_extract_code_handles_an_unclosed_block_and_plain_text() -> None:
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("x = 1") == "x = 1"
