"""One end-of-response policy for every backend: the tokenizer's EOS and the model's generation-config EOS ids
stop a response, and the stop token's text is not part of it (as vLLM reports responses)."""

from __future__ import annotations

import json
import shutil

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, GenerationConfig

from rt_lab.data.templates import TagTemplate
from rt_lab.generate.decode import encode_prompt, hf_batch_generator, in_prompt_order
from rt_lab.generate.stopping import model_generation_config, stop_token_ids, until_stop

GREEDY = OmegaConf.create({"max_new_tokens": 12, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                           "device": "cpu"})


def with_model_eos(tiny_path, folder, eos):
    """A copy of the tiny model whose generation_config.json lists `eos` (None: no generation_config.json)."""
    shutil.copytree(tiny_path, folder)
    config = folder / "generation_config.json"
    if eos is None:
        config.unlink()
    else:
        config.write_text(json.dumps({**json.loads(config.read_text()), "eos_token_id": eos}))
    return folder


def test_stop_tokens_are_the_tokenizers_eos_then_the_models_own(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    assert stop_token_ids(tiny_tokenizer, GenerationConfig(eos_token_id=[40, eos, 9, 40])) == [eos, 40, 9]
    assert stop_token_ids(tiny_tokenizer, GenerationConfig(eos_token_id=9)) == [eos, 9]
    assert stop_token_ids(tiny_tokenizer, GenerationConfig()) == [eos]
    assert until_stop([5, 6, 9, 7, eos], [eos, 9]) == [5, 6]
    assert until_stop([5, 6], [eos]) == [5, 6]


def test_the_models_eos_ids_come_from_generation_config_json_else_config_json(tiny_path, tiny_tokenizer, tmp_path):
    listed = with_model_eos(tiny_path, tmp_path / "listed", [tiny_tokenizer.eos_token_id, 40])
    derived = with_model_eos(tiny_path, tmp_path / "derived", None)
    assert model_generation_config(listed).eos_token_id == [tiny_tokenizer.eos_token_id, 40]
    assert model_generation_config(derived).eos_token_id == tiny_tokenizer.eos_token_id
    # what the vLLM backend reads from the folder is what transformers gives the loaded model
    for folder in (listed, derived):
        assert model_generation_config(folder).eos_token_id == \
            AutoModelForCausalLM.from_pretrained(folder).generation_config.eos_token_id


def test_hf_generation_stops_at_any_model_eos_without_its_text(tiny_path, tiny_tokenizer, tmp_path):
    """The tiny model's greedy answer, then the same model with a token of that answer listed as an EOS id in
    its generation_config.json: the answer ends just before that token, as vLLM's would."""
    prompt = encode_prompt("Tell me a story.", TagTemplate(), tiny_tokenizer, "auto")
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    plain = model.generate(input_ids=torch.tensor([prompt.ids]), max_new_tokens=12, do_sample=False,
                           eos_token_id=tiny_tokenizer.eos_token_id)[0, len(prompt.ids):].tolist()
    special = set(tiny_tokenizer.all_special_ids)
    cut = next(k for k in range(2, len(plain)) if plain[k] not in special and plain[k] not in plain[:k])
    assert in_prompt_order(hf_batch_generator(model, tiny_tokenizer, GREEDY)([prompt]), 1) == \
        [tiny_tokenizer.decode(until_stop(plain, [tiny_tokenizer.eos_token_id]), skip_special_tokens=True)]
    stopping = AutoModelForCausalLM.from_pretrained(
        with_model_eos(tiny_path, tmp_path / "stops", [tiny_tokenizer.eos_token_id, plain[cut]]))
    (answer,) = in_prompt_order(hf_batch_generator(stopping, tiny_tokenizer, GREEDY)([prompt]), 1)
    assert answer == tiny_tokenizer.decode(plain[:cut], skip_special_tokens=True)
    assert tiny_tokenizer.decode(plain[:cut + 1], skip_special_tokens=True) != answer
