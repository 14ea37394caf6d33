"""Exact token-level labels per method, by character offsets, on the tiny and the real SmolLM2 tokenizers."""

from __future__ import annotations

import pytest

from rt_lab.data.masking import IGNORE, encode_row, encode_rows
from rt_lab.data.tokens import tokenize
from rt_lab.data.methods import user_turns
from rt_lab.data.rows import make_row
from rt_lab.data.templates import ChatTemplate, TagTemplate

SINGLE = make_row("s", [{"role": "user", "content": "Name a primary colour."},
                        {"role": "assistant", "content": "Blue is a primary colour."}], "test")
MULTI = make_row("m", [{"role": "user", "content": "Pick a number."},
                       {"role": "assistant", "content": "Seven."},
                       {"role": "user", "content": "Double it."},
                       {"role": "assistant", "content": "Fourteen."}], "test")
TAGS = TagTemplate()

METHODS = {  # method -> (user_turns, loss_on), as in conf/method/*.yaml
    "it": ("keep", "assistant"), "rt": ("blank", "assistant"), "rt_drop": ("drop", "assistant"),
    "full": ("keep", "all"),
}


@pytest.fixture(params=["tiny", "smollm2"])
def tokenizer(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


def encode(row, method, tokenizer, template=TAGS, max_length=4096, bos="auto"):
    turns, loss_on = METHODS[method]
    return encode_row(user_turns(turns)(row), template, tokenizer, loss_on, max_length, bos)


def supervised_positions(example):
    return [i for i, label in enumerate(example.labels) if label != IGNORE]


def test_it_labels_are_exactly_response_and_eos(tokenizer):
    example = encode(SINGLE, "it", tokenizer)
    text = "<|user|>\nName a primary colour.\n<|assistant|>\nBlue is a primary colour." + tokenizer.eos_token
    ids, offsets = tokenize(text, tokenizer, "auto")
    assert example.input_ids == ids
    response_start = text.index("Blue")
    expected = [token if start >= response_start and end > start else IGNORE
                for token, (start, end) in zip(ids, offsets)]
    assert example.labels == expected
    positions = supervised_positions(example)
    assert positions == list(range(positions[0], len(ids)))  # one contiguous run up to the end
    assert example.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode([example.labels[i] for i in positions]) == "Blue is a primary colour." + tokenizer.eos_token
    assert tokenizer.decode(ids[:positions[0]], skip_special_tokens=True) == "<|user|>\nName a primary colour.\n<|assistant|>\n"


def test_rt_blank_input_has_no_instruction_text(tokenizer):
    example = encode(SINGLE, "rt", tokenizer)
    text = tokenizer.decode(example.input_ids, skip_special_tokens=True)
    assert text == "<|user|>\n\n<|assistant|>\nBlue is a primary colour."
    assert "Name a primary" not in tokenizer.decode(example.input_ids)
    assert tokenizer.decode([l for l in example.labels if l != IGNORE]) == "Blue is a primary colour." + tokenizer.eos_token


def test_rt_drop_has_no_user_turn(tokenizer):
    example = encode(SINGLE, "rt_drop", tokenizer)
    assert tokenizer.decode(example.input_ids, skip_special_tokens=True) == "<|assistant|>\nBlue is a primary colour."
    assert tokenizer.decode([l for l in example.labels if l != IGNORE]) == "Blue is a primary colour." + tokenizer.eos_token


def test_full_supervises_every_predicted_token(tokenizer):
    example = encode(SINGLE, "full", tokenizer)
    assert example.labels[0] == IGNORE  # nothing predicts the first token
    assert example.labels[1:] == example.input_ids[1:]


def supervised_runs(example, tokenizer) -> list[str]:
    runs, current = [], []
    for label in example.labels:
        if label != IGNORE:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + [current] if run]


def test_multi_turn_it_masks_every_user_turn(tokenizer):
    """open-instruct's layout (Hewitt et al.): the newline after a non-final EOS is part of the assistant turn."""
    example = encode(MULTI, "it", tokenizer)
    eos = tokenizer.eos_token
    assert supervised_runs(example, tokenizer) == ["Seven." + eos + "\n", "Fourteen." + eos]
    unsupervised = tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l == IGNORE],
                                    skip_special_tokens=True)
    assert unsupervised == "<|user|>\nPick a number.\n<|assistant|>\n<|user|>\nDouble it.\n<|assistant|>\n"


@pytest.mark.parametrize("row", [SINGLE, MULTI], ids=["single", "multi"])
def test_eos_newline_every_supervises_a_newline_after_each_eos(tokenizer, row):
    """An et al.'s TULU template: `<|assistant|>\\n{response}</s>\\n` for every assistant turn, newline supervised,
    and (strip_content=false) message text kept as written."""
    template = TagTemplate(eos_newline="every", strip_content=False)
    example = encode(row, "it", tokenizer, template=template)
    eos = tokenizer.eos_token
    answers = [m.content for m in row.messages if m.role == "assistant"]
    assert supervised_runs(example, tokenizer) == [answer + eos + "\n" for answer in answers]
    assert tokenizer.decode(example.input_ids, skip_special_tokens=False).endswith(eos + "\n")
    rt = encode(row, "rt_drop", tokenizer, template=template)
    assert supervised_runs(rt, tokenizer) == [answer + eos + "\n" for answer in answers]


def test_eos_newline_names_its_choices():
    with pytest.raises(ValueError, match="template.eos_newline='always'"):
        TagTemplate(eos_newline="always")


def test_multi_turn_rt_blanks_every_user_turn(tokenizer):
    example = encode(MULTI, "rt", tokenizer)
    assert tokenizer.decode(example.input_ids, skip_special_tokens=True) == (
        "<|user|>\n\n<|assistant|>\nSeven.\n<|user|>\n\n<|assistant|>\nFourteen.")


def test_bos_follows_the_tokenizer_and_can_be_forced(tiny_tokenizer, smollm2_tokenizer):
    # The tiny tokenizer adds BOS like Llama's; SmolLM2's adds none.
    assert encode(SINGLE, "it", tiny_tokenizer).input_ids[0] == tiny_tokenizer.bos_token_id
    assert encode(SINGLE, "it", tiny_tokenizer, bos="never").input_ids[0] != tiny_tokenizer.bos_token_id
    assert encode(SINGLE, "it", smollm2_tokenizer).input_ids[0] != smollm2_tokenizer.bos_token_id
    forced = encode(SINGLE, "it", smollm2_tokenizer, bos="always")
    assert forced.input_ids[0] == smollm2_tokenizer.bos_token_id
    assert forced.labels[0] == IGNORE
    with_bos, without = encode(SINGLE, "it", tiny_tokenizer), encode(SINGLE, "it", tiny_tokenizer, bos="never")
    assert with_bos.input_ids[1:] == without.input_ids
    assert with_bos.labels[1:] == without.labels


def test_without_eos_the_response_ends_the_labels(tokenizer):
    example = encode(SINGLE, "it", tokenizer, template=TagTemplate(append_eos=False))
    assert tokenizer.eos_token_id not in example.input_ids
    assert tokenizer.decode([l for l in example.labels if l != IGNORE]) == "Blue is a primary colour."


def test_ab_tags(tokenizer):
    template = TagTemplate(user_tag="<|A|>\n", assistant_tag="<|B|>\n")
    example = encode(SINGLE, "it", tokenizer, template=template)
    assert tokenizer.decode(example.input_ids, skip_special_tokens=True).startswith("<|A|>\nName a primary colour.\n<|B|>\n")
    assert template.prompt("Hi", tokenizer) == "<|A|>\nHi\n<|B|>\n"


def test_inference_prompt_is_the_training_prefix(tokenizer):
    prompt = TAGS.prompt("Name a primary colour.", tokenizer)
    assert prompt == "<|user|>\nName a primary colour.\n<|assistant|>\n"
    rendered = TAGS.render(SINGLE.messages, tokenizer)
    assert rendered.text.startswith(prompt)
    assert rendered.assistant_spans == ((len(prompt), len(rendered.text)),)


def test_chat_template_supervises_the_assistant_turn_and_its_end(smollm2_tokenizer):
    template = ChatTemplate()
    example = encode(SINGLE, "it", smollm2_tokenizer, template=template)
    supervised = smollm2_tokenizer.decode([l for l in example.labels if l != IGNORE])
    assert supervised.startswith("Blue is a primary colour.<|im_end|>")
    assert "Name a primary" not in supervised
    prompt = template.prompt("Name a primary colour.", smollm2_tokenizer)
    assert smollm2_tokenizer.decode(example.input_ids).startswith(prompt)


def test_truncation_drops_rows_with_nothing_left_and_refuses_an_empty_set(tiny_tokenizer, caplog):
    prompt_tokens = len(tokenize(TAGS.prompt(SINGLE.messages[0].content, tiny_tokenizer), tiny_tokenizer, "auto")[0])
    assert encode(SINGLE, "it", tiny_tokenizer, max_length=prompt_tokens) is None
    cut = encode(SINGLE, "it", tiny_tokenizer, max_length=prompt_tokens + 2)
    assert len(cut.input_ids) == prompt_tokens + 2 and cut.num_supervised == 2
    short = make_row("short", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "t")
    kept = encode_rows([SINGLE, short], TAGS, tiny_tokenizer, "assistant", max_length=prompt_tokens)
    assert [e.id for e in kept] == ["short"]
    assert "dropped 1 of 2 rows" in caplog.text
    with pytest.raises(ValueError, match="nothing to train on"):
        encode_rows([SINGLE], TAGS, tiny_tokenizer, "assistant", max_length=prompt_tokens)


def test_unknown_strategies_are_named(tiny_tokenizer):
    with pytest.raises(KeyError, match="loss_on='prompt'"):
        encode_row(SINGLE, TAGS, tiny_tokenizer, "prompt", 100)
    with pytest.raises(KeyError, match="user_turns='hide'"):
        user_turns("hide")
