"""LoRA adapters on a causal LM's body (through `peft`), and the plain model a checkpoint saves.

Design decisions:
- The adapters are injected into the model in place (`peft.inject_adapter_in_model`), not
  wrapped in a `PeftModel`: the model stays its family's own class, so everything that calls
  it (the loss's `logits_to_keep`, packed rows' masks, `get_input_embeddings`, accelerate)
  works unchanged, and `model.model` / `model.lm_head` are what they are without adapters.
- Targets default to peft's "all-linear": every linear layer of the decoder (attention and
  MLP), never the output layer. The embeddings are not adapted: the rows dmlm adds and the
  kept text rows train fully as the plain parameter they are. Not peft's `modules_to_save`
  (a second copy of the embedding, which the save must then pick) nor
  `trainable_token_indices` (a delta on chosen rows only): a plain parameter keeps a tied head
  tied, needs nothing merged on save, and takes the per-row learning rates of
  `dmlm.training.trainable` directly.
- A checkpoint is a plain model folder: `merged(model)` is a copy with every adapter folded into
  its layer's weight (peft's own `merge`) and the adapter layer replaced by its base layer.
  Training goes on with the unmerged model: merging and unmerging in place would not give the
  same bits back.
- Exact resume: a merged weight W + s·BA cannot be split back into W and the adapter bit for bit,
  so the training state keeps the unmerged tensors of every adapted layer (`adapter_state`: its
  base weight and its adapter), and `load_adapter_state` puts them back into the merged
  checkpoint's model after adapters of the same shape are injected. That costs about the body's
  size again in `training_state/`, and needs nothing from the LLM's folder to resume.
"""

from __future__ import annotations

import copy
import sys

import torch
from transformers import PreTrainedModel

from dmlm.util.errors import UserError

ADAPTER_PREFIX = "lora_"  # peft's name for a LoRA layer's own weights (lora_A, lora_B, ...)
BASE_LAYER = "base_layer"  # peft's name for the wrapped layer inside an adapter


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("model.adapter=lora needs the peft package: pip install 'peft>=0.17'") from None
    return peft


def add_lora(model: PreTrainedModel, cfg) -> PreTrainedModel:
    """Inject LoRA adapters (`cfg`: a `ModelConfig` with adapter=lora) into `model` in place; the adapters'
    B starts at zero, so the model computes exactly what it did before."""
    peft = _peft()
    targets = cfg.lora_targets[0] if list(cfg.lora_targets) == ["all-linear"] else list(cfg.lora_targets)
    config = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets)
    embeddings = {id(m) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    try:
        peft.inject_adapter_in_model(config, model)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise UserError(f"model.lora_targets={cfg.lora_targets}: {e}") from None
    wrapped = [n for n, m in model.named_modules() if _is_adapter(m) and id(m.get_base_layer()) in embeddings]
    if wrapped:
        raise UserError(f"model.lora_targets={cfg.lora_targets} adapts {wrapped[0]}, an embedding or the output "
                        "layer: those train fully without adapters; name the body's linear layers only")
    return model


def _is_adapter(module: torch.nn.Module) -> bool:
    tuners = sys.modules.get("peft.tuners.tuners_utils")  # not imported: no model has adapters
    return tuners is not None and isinstance(module, tuners.BaseTunerLayer)


def has_adapters(model: torch.nn.Module) -> bool:
    """Whether peft adapters are injected into `model`."""
    return any(_is_adapter(m) for m in model.modules())


def is_adapter_weight(name: str) -> bool:
    """Whether parameter `name` belongs to an adapter itself (not to the layer it wraps)."""
    return any(part.startswith(ADAPTER_PREFIX) for part in name.split("."))


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """`model` as a plain model of its family: a copy with each adapter merged into its layer (the model
    itself if it has none). The copy costs the model's memory once more, for the time of a save."""
    if not has_adapters(model):
        return model
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if _is_adapter(module):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, module.get_base_layer())
    if "peft_config" in vars(plain):  # set by the injection; a plain model has none
        del plain.peft_config
    return plain


def _unmerged(name: str) -> bool:
    """Whether state-dict entry `name` is one that merging changes or removes: an adapter's or its base layer's."""
    return is_adapter_weight(name) or BASE_LAYER in name.split(".")


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the adapted layers that a merged checkpoint cannot give back: every adapter's weights
    and the base weights it wraps (unmerged), by parameter name (views of the model's: save them at once)."""
    return {n: t.detach().contiguous() for n, t in model.state_dict().items() if _unmerged(n)}


def load_adapter_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Put `adapter_state` tensors back into `model` (a merged checkpoint's model with the same adapters
    injected); every adapted tensor must be there, with its shape (`source` names the file for errors)."""
    want = {n for n in model.state_dict() if _unmerged(n)}
    missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or extra:
        raise UserError(f"{source}: the saved adapters do not match model.adapter and model.lora_* of this config "
                        f"(missing {missing[:2]}, unexpected {extra[:2]}); resume with the config the run started with")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in tensors.items():
            target = params.get(name, buffers.get(name))
            if target is None or target.shape != value.shape:
                raise UserError(f"{source}: {name} has shape {tuple(value.shape)}, the model's is "
                                f"{None if target is None else tuple(target.shape)}")
            target.copy_(value)
