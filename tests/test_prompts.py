"""Prompt sets: reading a prompt file (one-line errors naming the line), the round's prompt mix, and the config."""

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hero.config import ConfigError, load_config
from hero.prompts import PromptFileError, group_slices, read_prompt_file, round_prompts
from hero.toyworld.tasks import parse_task


def _file(tmp_path, text: str):
    path = tmp_path / "prompts.txt"
    path.write_text(text)
    return path


def test_plain_lines_and_json_lines_with_task_options(tmp_path):
    path = _file(tmp_path, '# counting\nthree green triangles\n\n{"prompt": "two red circles", '
                           '"hidden_background": "black"}\n  one   blue square  \n')
    specs = read_prompt_file(path)
    assert [s.prompt for s in specs] == ["three green triangles", "two red circles", "one blue square"]
    assert specs[1].task_options({"forbidden_colour": "red"}) == {"forbidden_colour": "red",
                                                                   "hidden_background": "black"}
    assert specs[0].task_options() == {}


@pytest.mark.parametrize("text, says", [
    ("", "holds no prompt"),
    ("# only a comment\n\n", "holds no prompt"),
    ('three red circles\n{"prompt": "two red circles", "colour": "red"}\n', ":2: unknown option 'colour'"),
    ('{"prompt": "two red circles", \n', ":1: not valid JSON"),
    ('["two red circles"]\n', ":1: expected a JSON object"),
    ('{"prompt": "two red circles", "hidden_background": "plaid"}\n', ":1: bad value for 'hidden_background'"),
    ("two red circles\none red square\ntwo  red circles\n", ":3: 'two red circles' is also on line 1"),
])
def test_a_bad_prompt_file_is_one_line_naming_the_line(tmp_path, text, says):
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(_file(tmp_path, text))
    assert says in str(e.value) and "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_the_simulated_humans_check_names_the_line_it_cannot_parse(tmp_path):
    path = _file(tmp_path, "three green triangles\nfive red circles\n")
    with pytest.raises(PromptFileError, match=r":2: .*'five red circles' is not a toy-world prompt"):
        read_prompt_file(path, check=lambda s: parse_task(s.prompt, **s.task_options()))
    with pytest.raises(PromptFileError, match="cannot be read"):
        read_prompt_file(tmp_path / "missing.txt")


@given(st.integers(2, 7), st.integers(1, 40), st.integers(0, 20))
def test_an_even_mix_is_grouped_and_balanced_within_and_across_rounds(n_prompts, n, r):
    prompts = [f"p{i}" for i in range(n_prompts)]
    got = round_prompts(prompts, n, r, "even", seed=0)
    assert len(got) == n and [p for p, _ in group_slices(got)] == sorted(set(got), key=prompts.index)
    counts = Counter(got)
    assert max(counts.values()) - min(counts.get(p, 0) for p in prompts) <= 1
    # Over n_prompts consecutive rounds every prompt gets exactly n images.
    total = Counter(p for k in range(r, r + n_prompts) for p in round_prompts(prompts, n, k, "even", 0))
    assert set(total.values()) == {n}


def test_a_random_mix_is_reproducible_grouped_and_seeded():
    prompts = ["a", "b", "c"]
    one = round_prompts(prompts, 64, 3, "random", seed=1)
    assert one == round_prompts(prompts, 64, 3, "random", seed=1)
    assert one != round_prompts(prompts, 64, 3, "random", seed=2)
    assert one == sorted(one) and set(one) == {"a", "b", "c"}
    assert round_prompts(["a"], 5, 0, "random", 0) == ["a"] * 5


def test_group_slices_refuses_an_ungrouped_round():
    assert group_slices(["a", "a", "b"]) == [("a", slice(0, 2)), ("b", slice(2, 3))]
    with pytest.raises(ValueError, match="grouped"):
        group_slices(["a", "b", "a"])


def test_the_config_takes_one_prompt_or_a_set():
    two = [{"prompt": "two red circles"}, {"prompt": "one blue square", "hidden_background": "black"}]
    cfg = load_config(None, [], prompts=two, algo="raft")
    assert cfg.prompt_set and cfg.prompt_list == ["two red circles", "one blue square"]
    assert cfg.task_options("one blue square") == {"hidden_background": "black"}
    assert cfg.round_prompts(0, 3) == ["two red circles", "two red circles", "one blue square"]
    assert not load_config(None, [], prompt="two red circles").prompt_set
    # A prompt set given with a preset that names a prompt (demo's) replaces it, and the other way round.
    assert load_config("demo", [], prompts=two).prompt is None
    assert load_config(None, [], prompt="x", prompts=None).prompt == "x"
    for values, says in [({}, "missing config key 'prompt'"),
                         ({"prompt": "x", "prompts": two}, "bad value for 'prompts'"),
                         ({"prompts": two, "algo": "d3po"}, "--algo d3po learns from one prompt"),
                         ({"prompts": [two[0], two[0]]}, "'two red circles' is given twice"),
                         ({"prompts": [{"prompt": "x", "colour": "red"}]}, "colour")]:
        with pytest.raises(ConfigError, match=says):
            load_config(None, [], **values)
