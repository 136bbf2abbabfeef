"""The ``transformers`` sampler: a causal code LM (StarCoder2 in the reference) sampling
candidate bodies, loaded once per worker process and kept warm across tasks.

Config (``funsearch.sampler``)::

    type: transformers
    model: bigcode/starcoder2-15b     # a local folder or a hub name (offline use respected)
    device: auto                      # auto (cuda when there is one, else cpu) | cpu | cuda | cuda:N
    dtype: auto                       # auto (float16 on GPU, float32 on CPU) | float16 | bfloat16 | float32
    temperature: 0.944                # the reference's sampling parameters
    top_p: 0.778
    repetition_penalty: 1.222
    max_new_tokens: 246
    batch_window_s: 0.05              # prompts arriving this close together share one generate()
    max_batch: 8                      # most prompts per generate() (x samples_per_prompt sequences)
    torch_threads: null               # CPU threads for torch (null: torch's default)

Batching needs concurrent callers: a sampler pool runs its ``sample`` tasks in threads
(``threads: true``, ``workers: max_batch``), and the threads' prompts meet here. Each task gets its
own ``samples`` completions (``num_return_sequences``), with its tokens in and out and its share of
the generate call's GPU seconds.

Offline: ``local_files_only`` (default: true when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set
or ``model`` is a local folder) means nothing is fetched. Needs ``pip install 'eqflow[ml]'``.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqflow.funsearch.samplers import SampleRequest, SampleResult, register

log = logging.getLogger("eqflow.funsearch.transformers")

DEFAULTS: dict[str, Any] = {
    "temperature": 0.944,
    "top_p": 0.778,
    "repetition_penalty": 1.222,
    "max_new_tokens": 246,
}
_GEN_KEYS = frozenset(DEFAULTS) | {"top_k", "do_sample", "min_new_tokens"}
ML_EXTRA_HINT = ("the transformers sampler needs torch and transformers: pip install 'eqflow[ml]' "
                 "(CPU-only torch: pip install torch==2.13.0)")
# A completion is over once a new top-level statement starts (a line at column 0 after the body).
_END_OF_FUNCTION = re.compile(r"\S[^\n]*\n[A-Za-z_@]", re.S)


class MissingExtra(ImportError):
    """torch or transformers is not installed."""


def _import_ml() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingExtra(f"{ML_EXTRA_HINT} ({exc})") from None
    return torch, transformers


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@dataclass
class _Pending:
    request: SampleRequest
    queued_at: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: SampleResult | None = None
    error: BaseException | None = None


class TransformersSampler:
    name = "transformers"

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto",
                 batch_window_s: float = 0.05, max_batch: int = 8, local_files_only: bool | None = None,
                 trust_remote_code: bool = False, stop_at_function_end: bool = True,
                 samples_per_prompt: int | None = None, torch_threads: int | None = None,
                 **generation: Any) -> None:
        unknown = set(generation) - _GEN_KEYS
        if unknown:
            raise ValueError(f"transformers sampler: unknown parameter(s) {sorted(unknown)}; "
                             f"known: model, device, dtype, batch_window_s, max_batch, local_files_only, "
                             f"trust_remote_code, stop_at_function_end, torch_threads, {', '.join(sorted(_GEN_KEYS))}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        torch, transformers = _import_ml()
        self.torch = torch
        if torch_threads:
            torch.set_num_threads(int(torch_threads))  # CPU: fewer threads than cores beats contention
        self.model_name = str(model)
        self.generation = {**DEFAULTS, **generation}
        self.samples_per_prompt = samples_per_prompt
        self.batch_window_s = float(batch_window_s)
        self.max_batch = int(max_batch)
        self.stop_at_function_end = stop_at_function_end
        if local_files_only is None:
            local_files_only = _offline() or Path(self.model_name).is_dir()
        self.device = self._pick_device(device)
        self.dtype = self._pick_dtype(dtype)
        loading = time.perf_counter()
        common = {"local_files_only": local_files_only, "trust_remote_code": trust_remote_code}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_name, **common)
        self.tokenizer.padding_side = "left"  # generation continues the prompt's last token
        self.tokenizer.truncation_side = "left"  # a prompt too long keeps its end (the header)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        load: dict[str, Any] = dict(common, dtype=self.dtype)
        several = self.device == "cuda" and torch.cuda.device_count() > 1
        spread = several and _has_accelerate()
        if several and not spread:
            log.warning("several GPUs visible but accelerate is not installed: the model goes on the first one "
                        "only (pip install accelerate to spread it)", extra={"gpus": torch.cuda.device_count()})
        if spread:
            load["device_map"] = "auto"  # a model too large for one GPU, over the GPUs this pool was given
        self.model = transformers.AutoModelForCausalLM.from_pretrained(self.model_name, **load)
        if not spread:
            self.model.to(self.device)
        self.model.eval()
        log.info("model loaded", extra={"model": self.model_name, "device": str(self.device),
                                        "dtype": str(self.dtype).replace("torch.", ""), "spread": spread,
                                        "seconds": round(time.perf_counter() - loading, 1)})
        self.input_device = next(self.model.parameters()).device
        self.stopping = self._stopping_criteria(transformers) if stop_at_function_end else None
        self._lock = threading.Lock()  # one generate() at a time
        self._start_lock = threading.Lock()
        self._inbox: queue_mod.Queue[_Pending] = queue_mod.Queue()
        self._batcher: threading.Thread | None = None
        self.batches: list[int] = []  # prompts per generate() call, for the benchmark and tests

    # -- setup --------------------------------------------------------------------------------
    def _pick_device(self, device: str) -> str:
        if device == "auto":
            return "cuda" if self.torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not self.torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device visible to this process")
        return device

    def _pick_dtype(self, dtype: str) -> Any:
        if dtype == "auto":
            return self.torch.float32 if self.device == "cpu" else self.torch.float16
        if dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype must be auto, float16, bfloat16 or float32, got {dtype!r}")
        return getattr(self.torch, dtype)

    def _stopping_criteria(self, transformers: Any) -> Any:
        tokenizer, torch = self.tokenizer, self.torch

        class EndOfFunction(transformers.StoppingCriteria):  # type: ignore[misc]
            """True for each sequence whose new text has left the function's body (the text is
            kept per sequence and grown by one decoded token per step)."""

            def __init__(self) -> None:
                self.texts: list[str] = []

            def reset(self) -> None:
                self.texts = []

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                if len(self.texts) != input_ids.shape[0]:
                    self.texts = [""] * input_ids.shape[0]
                pieces = tokenizer.batch_decode(input_ids[:, -1:], skip_special_tokens=True)
                done = []
                for i, piece in enumerate(pieces):
                    self.texts[i] = text = self.texts[i] + piece
                    done.append(bool(_END_OF_FUNCTION.search(text, max(0, len(text) - len(piece) - 400))))
                return torch.tensor(done, device=input_ids.device)

        return EndOfFunction()

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, request: SampleRequest) -> SampleResult:
        pending = _Pending(request)
        if self.max_batch == 1 or self.batch_window_s <= 0:
            with self._lock:
                self._generate([pending])
        else:
            self._ensure_batcher()
            self._inbox.put(pending)
            pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _ensure_batcher(self) -> None:
        with self._start_lock:
            if self._batcher is None or not self._batcher.is_alive():
                self._batcher = threading.Thread(target=self._batch_loop, name="eqflow-sampler-batcher",
                                                 daemon=True)
                self._batcher.start()

    def _batch_loop(self) -> None:
        while True:
            batch = [self._inbox.get()]
            deadline = time.monotonic() + self.batch_window_s
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._inbox.get(timeout=left))
                except queue_mod.Empty:
                    break
            groups: dict[str, list[_Pending]] = {}
            for pending in batch:  # one generate() per sample count and parameters
                groups.setdefault(self._group_key(pending.request), []).append(pending)
            for group in groups.values():
                with self._lock:
                    self._generate(group)

    def _samples(self, request: SampleRequest) -> int:
        return max(1, int(request.samples or self.samples_per_prompt or 2))

    def _params(self, request: SampleRequest) -> dict[str, Any]:
        extra = {k: v for k, v in request.params.items() if k in _GEN_KEYS}
        return {**self.generation, **extra}

    def _group_key(self, request: SampleRequest) -> str:
        return repr((self._samples(request), sorted(self._params(request).items())))

    def _generate(self, group: list[_Pending]) -> None:
        try:
            self._generate_or_raise(group)
        except BaseException as exc:  # every waiting task hears of it
            for pending in group:
                pending.error = exc
        finally:
            for pending in group:
                pending.done.set()

    def _generate_or_raise(self, group: list[_Pending]) -> None:
        torch = self.torch
        first = group[0].request
        samples = self._samples(first)
        params = self._params(first)
        encoded = self.tokenizer([p.request.prompt for p in group], return_tensors="pt", padding=True,
                                 **self._truncation(params))
        encoded = {k: v.to(self.input_device) for k, v in encoded.items()}
        prompt_len = encoded["input_ids"].shape[1]
        kwargs: dict[str, Any] = {"do_sample": True, "num_return_sequences": samples,
                                  "pad_token_id": self.tokenizer.pad_token_id, **params}
        if not kwargs["do_sample"]:
            kwargs.pop("temperature", None)
            kwargs.pop("top_p", None)
        if self.stopping is not None:
            self.stopping.reset()
            kwargs["stopping_criteria"] = [self.stopping]
        torch.manual_seed(int(first.seed))
        on_gpu = self.input_device.type == "cuda"
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(**encoded, **kwargs)
        if on_gpu:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        new = output[:, prompt_len:]
        lengths = self._generated_lengths(new)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        prompt_tokens = encoded["attention_mask"].sum(dim=1).tolist()
        finished = time.perf_counter()
        self.batches.append(len(group))
        for i, pending in enumerate(group):
            rows = range(i * samples, (i + 1) * samples)
            pending.result = SampleResult(
                bodies=[texts[r] for r in rows], tokens_in=int(prompt_tokens[i]),
                tokens_out=int(sum(lengths[r] for r in rows)), seconds=finished - pending.queued_at,
                gpu_seconds=elapsed / len(group) if on_gpu else 0.0, model=self.model_name)

    def _truncation(self, params: dict[str, Any]) -> dict[str, Any]:
        """Prompts longer than the model's context (less the new tokens) lose their beginning."""
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)
        if not limit:
            return {}
        return {"truncation": True, "max_length": max(1, int(limit) - int(params["max_new_tokens"]))}

    def _generated_lengths(self, new: Any) -> list[int]:
        """Tokens each sequence generated: up to and including its end-of-sequence token (what
        follows is padding for the batch's longer sequences)."""
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        ends = {t for t in (eos, pad) if t is not None}
        out = []
        for row in new.tolist():
            n = len(row)
            for j, token in enumerate(row):
                if token in ends:
                    n = j + 1 if token == eos else j
                    break
            out.append(n)
        return out


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


_instances: dict[str, TransformersSampler] = {}
_instances_lock = threading.Lock()


@register("transformers")
def make_transformers_sampler(config: dict[str, Any]) -> TransformersSampler:
    """One sampler (one copy of the weights) per process and config, whichever thread asks first."""
    if "model" not in config:
        raise ValueError("the transformers sampler needs 'model' (a local folder or a model name)")
    key = repr(sorted(config.items()))
    with _instances_lock:
        sampler = _instances.get(key)
        if sampler is None:
            sampler = _instances[key] = TransformersSampler(**config)
        return sampler
