"""Usage buckets, their sum and their OpenAI shape; request/problem plumbing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ponder.types import Generation, GenRequest, Message, Problem, TokenLogprob, Usage, as_messages


def test_usage_add_sums_every_bucket_and_ors_estimated_flags() -> None:
    a = Usage(input=10, cached_input=2, reasoning=30, output=5, reasoning_estimated=True)
    b = Usage(input=1, cached_input=3, reasoning=0, output=7, input_estimated=True)

    total = a + b

    assert (total.input, total.cached_input, total.reasoning, total.output) == (11, 5, 30, 12)
    assert total.input_estimated and total.reasoning_estimated
    assert not total.cached_input_estimated and not total.output_estimated
    # Adding leaves the operands alone.
    assert a.input == 10 and not a.input_estimated


def test_usage_sum_equals_chained_add_and_is_zero_for_nothing() -> None:
    usages = [
        Usage(input=i, reasoning=2 * i, output=3 * i, output_estimated=i == 2) for i in range(4)
    ]

    total = Usage.sum(usages)

    assert total == usages[0] + usages[1] + usages[2] + usages[3]
    assert (total.input, total.reasoning, total.output) == (6, 12, 18)
    assert total.output_estimated
    assert Usage.sum([]) == Usage()


def test_usage_sum_accepts_any_iterable_and_builtin_sum_works() -> None:
    usages = [Usage(output=1), Usage(output=2, reasoning=4)]

    assert Usage.sum(u for u in usages) == Usage(output=3, reasoning=4)
    assert sum(usages, Usage()) == Usage(output=3, reasoning=4)
    assert sum(usages) == Usage(output=3, reasoning=4)


def test_usage_totals_keep_prompt_and_completion_apart() -> None:
    u = Usage(input=100, cached_input=28, reasoning=40, output=2)

    assert u.prompt_tokens == 128
    assert u.completion_tokens == 42
    assert u.total_tokens == 170


def test_usage_to_openai_counts_reasoning_inside_completion_tokens() -> None:
    u = Usage(input=100, cached_input=28, reasoning=40, output=2)

    assert u.to_openai() == {
        "prompt_tokens": 128,
        "completion_tokens": 42,
        "total_tokens": 170,
        "prompt_tokens_details": {"cached_tokens": 28},
        "completion_tokens_details": {"reasoning_tokens": 40},
    }


def test_usage_rejects_negative_buckets() -> None:
    with pytest.raises(ValidationError):
        Usage(output=-1)


def test_as_messages_accepts_text_messages_and_dicts() -> None:
    assert as_messages("hi") == [Message(role="user", content="hi")]
    msgs = as_messages(
        [{"role": "system", "content": "be brief"}, Message(role="user", content="q")]
    )
    assert [m.role for m in msgs] == ["system", "user"]


def test_gen_request_needs_a_message_and_sane_sampling() -> None:
    with pytest.raises(ValidationError):
        GenRequest(messages=[])
    msgs = as_messages("q")
    for bad in ({"n": 0}, {"max_tokens": 0}, {"temperature": -0.1}, {"top_p": 0.0}):
        with pytest.raises(ValidationError):
            GenRequest(messages=msgs, **bad)


def test_problem_prompt_is_the_last_user_message() -> None:
    p = Problem(
        messages=as_messages(
            [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "second"},
            ]
        )
    )
    assert p.prompt == "second"
    assert Problem(messages=as_messages([{"role": "system", "content": "s"}])).prompt == ""


def test_generation_mean_logprob() -> None:
    g = Generation(
        text="a b",
        logprobs=[TokenLogprob(token="a", logprob=-1.0), TokenLogprob(token="b", logprob=-3.0)],
    )
    assert g.mean_logprob == -2.0
    assert Generation(text="a").mean_logprob is None
    assert Generation(text="", logprobs=[]).mean_logprob is None
