"""The real built-in models: SmolLM2-135M-Instruct (Llama) and Gemma 3 270M (sliding + full layers)."""

from threading import Thread

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer, pipeline

import slerpmerge
from slerpmerge.data import long_document

PROMPTS = ["The capital of France is", "Write one sentence about the sea.", "List three colours:"]


def chat_ids(tokenizer, texts):
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                           add_generation_prompt=True) for t in texts]
    tokenizer.padding_side = "left"
    return tokenizer(chats, return_tensors="pt", padding=True)


@torch.no_grad()
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_cutoff_at_last_layer_generates_like_the_base_model(name, request):
    model, tokenizer = request.getfixturevalue(name)
    inputs = tokenizer(PROMPTS[0] + " " + long_document()[:600], return_tensors="pt")
    base = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    with slerpmerge.merging(model, layer_cutoff=model.config.num_hidden_layers - 1):
        merged = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(merged, base)


@torch.no_grad()
def test_merged_prefill_logits_at_last_layer_match(gemma3):
    model, tokenizer = gemma3
    ids = tokenizer(long_document()[:3000], return_tensors="pt").input_ids  # longer than the 512-token window
    assert ids.shape[1] > model.config.sliding_window
    base = model(ids).logits[:, -1]
    with slerpmerge.merging(model, layer_cutoff=model.config.num_hidden_layers - 1):
        merged = model(ids).logits
    assert merged.shape[1] <= ids.shape[1] // 2 + 2
    torch.testing.assert_close(merged[:, -1], base, atol=1e-4, rtol=1e-4)
    with slerpmerge.merging(model, layer_cutoff=2, keep_start=ids.shape[1]):  # nothing merged: rebuilt sliding
        kept = model(ids).logits[:, -1]                                        # and full masks must be the model's
    torch.testing.assert_close(kept, base, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_chat_batch_rows_generate_like_prompts_alone(smollm2):
    model, tokenizer = smollm2
    batch = chat_ids(tokenizer, PROMPTS)
    with slerpmerge.merging(model, layer_cutoff=20, keep_end=4):
        together = model.generate(**batch, max_new_tokens=10, do_sample=False)
        for row, text in enumerate(PROMPTS):
            inputs = chat_ids(tokenizer, [text])
            alone = model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs.input_ids.shape[1]:]
            got = together[row, batch.input_ids.shape[1]:][: len(alone)]
            assert torch.equal(got, alone), row


def test_pipeline_streamers_and_stop_strings(smollm2, capsys):
    model, tokenizer = smollm2
    prompt = "Once upon a time, in a small village by the sea,"
    with slerpmerge.merging(model, layer_cutoff=16):
        generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
        text = generator(prompt, max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"]
        assert len(text.strip()) > 0

        inputs = tokenizer(prompt, return_tensors="pt")
        direct = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        assert tokenizer.decode(direct[0, inputs.input_ids.shape[1]:], skip_special_tokens=True) == text

        model.generate(**inputs, max_new_tokens=16, do_sample=False,
                       streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
        assert capsys.readouterr().out.strip() == text.strip()

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = Thread(target=model.generate, kwargs=dict(**inputs, max_new_tokens=16, do_sample=False,
                                                           streamer=streamer))
        thread.start()
        streamed = "".join(streamer)
        thread.join()
        assert streamed.strip() == text.strip()

        stopped = model.generate(**inputs, max_new_tokens=40, do_sample=False, stop_strings=[","],
                                 tokenizer=tokenizer)
        new = tokenizer.decode(stopped[0, inputs.input_ids.shape[1]:])
        assert new.endswith(",") and new.count(",") == 1


@torch.no_grad()
def test_generation_stops_at_the_end_token(smollm2):
    model, tokenizer = smollm2
    inputs = chat_ids(tokenizer, ["Say yes."])
    start = inputs.input_ids.shape[1]
    with slerpmerge.merging(model, layer_cutoff=24):
        free = model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, start:]
        stop_at = next(i for i in range(1, 10) if free[i] not in free[:i])  # first token not seen before
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False, eos_token_id=int(free[stop_at]))
    assert torch.equal(out[0, start:], free[:stop_at + 1])
