"""One interface over a text-to-image model, ToyWorld's or Stable Diffusion's.

Everything the editing method needs from a model goes through ``DiffusionModel``:
tokenise with offsets and find a subject's last token, encode prompts, capture the keys
and values of an MLP's ``fc2`` (docs/method.md, "Where a fact lives"), generate images
with classifier-free guidance from a seed, predict the U-Net's noise, and turn images into
the latents the U-Net works on (VAE for SD, identity in ToyWorld's pixel space).
Components stay plain attributes of the wrapped diffusers pipeline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import UserError
from common.hashing import directory_hash

PIPELINES = "freshen.pipelines"  # entry-point group: pipeline classes beyond diffusers' (ToyWorld's)
DEVICE_VARIABLE = "FRESHEN_DEVICE"  # where models run: auto (CUDA when present), cpu, cuda, cuda:N


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The device models run on: ``spec``, or ``FRESHEN_DEVICE``, or "auto" (the first CUDA
    device when torch sees one, else the CPU). A CUDA device this machine does not have is
    an error, not a silent fall back to the CPU."""
    spec = str(spec if spec is not None else os.environ.get(DEVICE_VARIABLE) or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ModelLoadError(f"{DEVICE_VARIABLE}={spec!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"{DEVICE_VARIABLE}={spec!r}: freshen runs on cpu or cuda (auto picks one)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"{DEVICE_VARIABLE}={spec!r}, but torch sees no CUDA device here "
                                 f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                                 "set it to cpu or auto")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ModelLoadError(f"{DEVICE_VARIABLE}={spec!r}: this machine has {torch.cuda.device_count()} "
                                 "CUDA device(s)")
    return device


def sampling_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype images are sampled in by default: float16 on CUDA (the U-Net and
    VAE allow it), none (float32) on the CPU."""
    return torch.float16 if device.type == "cuda" else None


def first_eos(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(n,) position of each row's first [EOS] (CLIP pads with [EOS] too, so the first)."""
    return (input_ids == eos_token_id).int().argmax(dim=1)


class ModelLoadError(UserError, RuntimeError):
    """A model could not be loaded; the message says which and how to provide it."""


@dataclass
class Encoding:
    hidden: torch.Tensor  # (n, L, d) final hidden states (after the final layer norm)
    pooled: torch.Tensor  # (n, d) the [EOS] embedding
    input_ids: torch.Tensor  # (n, L)
    eos_index: torch.Tensor  # (n,) position of the first [EOS]


class _Captured(Exception):
    """Stops a forward pass once a hook has what it needs."""


class ResidualStream:
    """The residual stream of a fixed batch of prompts entering layer ``at`` of the text
    encoder, with the arguments the encoder passes every layer (its causal mask). Stage II
    edits layers in ascending order, and an edit at layer l changes nothing below l, so it
    walks this stream up one layer per edited layer instead of re-encoding the prompts from
    the embeddings at every layer.

    A run that reads the keys of the layer the stream is at also keeps that layer's output,
    its fc2 inputs and fc2's weight: Stage II then changes only that weight, and fc2 is
    linear, so the stream steps past the edited layer as that output plus keys @ (W - W_run)^T
    (a third of the layer's work) instead of running the layer again."""

    def __init__(self, model: DiffusionModel, hidden: torch.Tensor, args: tuple, kwargs: dict):
        self.model, self.hidden, self._args, self._kwargs = model, hidden, args, kwargs
        self.at = 0
        # (layer, its output, its fc2 inputs, its fc2 weight) from the last run at ``at``
        self._ahead: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        out = self.model.layers[i](hidden, *self._args, **self._kwargs)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def advance_to(self, layer: int) -> None:
        """Move the stored stream up to the input of ``layer`` (through the layers as they
        are now; of a layer run since the stream reached it, only fc2's weight may have
        changed)."""
        while self.at < layer:
            if self._ahead is not None and self._ahead[0] == self.at:
                _, out, keys, weight = self._ahead
                self.hidden = out + keys @ (self.model.fc2(self.at).weight - weight).T
            else:
                self.hidden = self._layer(self.at, self.hidden)
            self._ahead = None
            self.at += 1

    @torch.no_grad()
    def run(self, key_layer: int | None, out_layer: int,
            each: Callable[[int, torch.Tensor], None] | None = None,
            keep: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """From the stored stream (``at <= key_layer <= out_layer``): the fc2 input of
        ``key_layer`` (n, L, d_k; None without a key layer) and the stream leaving
        ``out_layer`` (n, L, d), for every token; ``each(layer, output)`` sees the stream
        leaving every layer run. The stored stream does not move. ``keep=False``: the keys of
        the layer the stream is at are not held for stepping past it (the class docstring),
        which then runs the layer again: for a stream too large to hold its keys twice."""
        lowest = out_layer if key_layer is None else key_layer
        if not self.at <= lowest <= out_layer:
            raise ValueError(f"stream at layer {self.at} cannot give keys of {key_layer} and output of {out_layer}")
        hidden = self.hidden
        with self.model.capturing_fc2(key_layer) if key_layer is not None else nullcontext({}) as got:
            for i in range(self.at, out_layer + 1):
                hidden = self._layer(i, hidden)
                if each is not None:
                    each(i, hidden)
                if keep and i == key_layer == self.at:
                    self._ahead = (i, hidden, got["keys"], self.model.fc2(i).weight.detach().clone())
        return got.get("keys"), hidden


class DiffusionModel:
    """A text-to-image pipeline seen as the editing method sees it."""

    def __init__(self, pipe, source: str, family: str, sample_dtype: torch.dtype | None = None):
        self.pipe = pipe
        self.source = source  # local path or hub id it came from
        # sampling (``generate``) runs under autocast in this dtype (None: the weights' own);
        # the weights, Stage I's gradients and the edits stay in the dtype loaded (float32)
        self.sample_dtype = sample_dtype
        # the family of model, "toyworld" or "stable-diffusion": the key of the presets, the
        # judge and the caption corpus (a fact change's own ``kind`` is something else)
        self.family = family
        self._base_hash: str | None = None
        self.pipe.set_progress_bar_config(disable=True)
        self.text_encoder.requires_grad_(False)
        self.unet.requires_grad_(False)

    # -- components ----------------------------------------------------------
    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def text_encoder(self) -> nn.Module:
        return self.pipe.text_encoder

    @property
    def unet(self) -> nn.Module:
        return self.pipe.unet

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device

    @property
    def layers(self) -> nn.ModuleList:
        """The text encoder's transformer layers (CLIPTextModel keeps them under
        ``text_model`` in older transformers, directly in 5.x)."""
        te = getattr(self.text_encoder, "text_model", self.text_encoder)
        return te.encoder.layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def default_edit_layers(self) -> list[int]:
        """Every layer but the last (docs/method.md: its output feeds [EOS] directly)."""
        return list(range(self.n_layers - 1))

    def fc2(self, layer: int) -> nn.Linear:
        return self.layers[layer].mlp.fc2

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    # -- tokens --------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str], offsets: bool = False, pad_to_max: bool = True):
        """Token ids padded to the encoder's length (what the U-Net is conditioned on) or,
        with ``pad_to_max=False``, to the longest prompt: the text encoder is causal, so
        every state up to [EOS] is the same either way, and short batches are cheaper."""
        return self.tokenizer(list(prompts), padding="max_length" if pad_to_max else "longest",
                              truncation=True,
                              max_length=self.max_length, return_tensors="pt",
                              return_offsets_mapping=offsets)

    def span_tokens(self, prompts: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Token positions covering each character span ``[start, end)`` of its prompt, found
        through the fast tokenizer's offset mapping (never by searching ids)."""
        enc = self.tokenize(prompts, offsets=True)
        out = []
        for i, (start, end) in enumerate(spans):
            pos = [j for j, (a, b) in enumerate(enc["offset_mapping"][i].tolist())
                   if b > a and a < end and b > start]
            if not pos:
                raise ValueError(f"span {start}:{end} of prompt {prompts[i]!r} covers no token "
                                 f"(within the first {self.max_length} tokens)")
            out.append(pos)
        return out

    def subject_last_token(self, prompts: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[int]:
        """Position of the last token of each subject span."""
        return [pos[-1] for pos in self.span_tokens(prompts, spans)]

    # -- text encoder --------------------------------------------------------
    def encode(self, prompts: Sequence[str] | None = None, input_ids: torch.Tensor | None = None,
               pad_to_max: bool = True) -> Encoding:
        if input_ids is None:
            input_ids = self.tokenize(prompts, pad_to_max=pad_to_max)["input_ids"]
        input_ids = input_ids.to(self.device)
        out = self.text_encoder(input_ids)
        eos = first_eos(input_ids, self.tokenizer.eos_token_id)
        return Encoding(out.last_hidden_state, out.pooler_output, input_ids, eos)

    @contextmanager
    def capturing_fc2(self, layer: int) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, every forward of the text encoder records the input (keys,
        ``act(fc1(h))``) and output (values, ``W k``) of layer ``layer``'s fc2."""
        got: dict[str, torch.Tensor] = {}

        def hook(_module, inputs, output):
            got["keys"] = inputs[0].detach()
            got["values"] = output.detach()

        handle = self.fc2(layer).register_forward_hook(hook)
        try:
            yield got
        finally:
            handle.remove()

    @torch.no_grad()
    def capture_fc2(self, prompts: Sequence[str], layer: int,
                    positions: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """fc2 keys (n, L, d_k) and values (n, L, d) of ``layer`` for every token, or at one
        position per prompt ((n, d_k), (n, d)) when ``positions`` is given."""
        with self.capturing_fc2(layer) as got:
            self.encode(prompts, pad_to_max=False)
        keys, values = got["keys"], got["values"]
        if positions is not None:
            rows = torch.arange(len(prompts), device=keys.device)
            idx = torch.as_tensor(list(positions), device=keys.device)
            keys, values = keys[rows, idx], values[rows, idx]
        return keys, values

    @torch.no_grad()
    def residual_stream(self, prompts: Sequence[str] | None = None,
                        input_ids: torch.Tensor | None = None) -> ResidualStream:
        """The residual stream of ``prompts`` (or their token ids, padded to the longest)
        entering layer 0, to walk up layer by layer."""
        got: dict = {}

        def grab(_module, args, kwargs):
            got["args"], got["kwargs"] = args, kwargs
            raise _Captured

        handle = self.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.encode(prompts, input_ids=input_ids, pad_to_max=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        hidden, *rest = got["args"]
        return ResidualStream(self, hidden, tuple(rest), got["kwargs"])

    # -- image side ----------------------------------------------------------
    def conditioning_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The U-Net's attention mask over a prompt's tokens: None (every token, as Stable
        Diffusion) unless the pipeline conditions on content tokens only (ToyWorld's)."""
        mask_of = getattr(self.pipe, "conditioning_mask", None)
        return mask_of(input_ids.to(self.device)) if mask_of is not None else None

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | None = None, seed: int = 0,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 prompt_embeds: torch.Tensor | None = None,
                 prompt_mask: torch.Tensor | None = None) -> np.ndarray:
        """Images (n, h, w, 3) uint8 from prompts (or their embeddings with their
        ``conditioning_mask``), seeded. Sampling steps and guidance default to the pipeline's
        own (ToyWorld: 30 DDPM steps, scale 3; SD: 50 steps, 7.5)."""
        g = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
        kw = {k: v for k, v in (("num_inference_steps", num_inference_steps),
                                ("guidance_scale", guidance_scale)) if v is not None}
        with self.sampling():
            if self.family == "toyworld":
                return self.pipe(list(prompts) if prompts is not None else None, generator=g,
                                 prompt_embeds=prompt_embeds, prompt_mask=prompt_mask, **kw)
            if prompt_embeds is None:
                prompt_embeds = self.encode(prompts).hidden
            negative = self.encode([""]).hidden.expand_as(prompt_embeds)
            images = self.pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative,
                               generator=g, output_type="np", **kw).images
        return (np.clip(np.asarray(images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)

    def sampling(self):
        """The autocast context images are drawn in (``sample_dtype``; none: a no-op)."""
        if self.sample_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.sample_dtype)

    def generate_many(self, prompts: Sequence[str], seed: int = 0, batch_size: int = 48,
                      progress: bool = False, **kw) -> np.ndarray:
        """``generate`` in fixed chunks; chunk i is seeded with (seed, i), so the same call
        always gives the same images whatever else runs."""
        from tqdm.auto import tqdm

        out = [self.generate(prompts[i:i + batch_size], seed=seed * 100_003 + i // batch_size, **kw)
               for i in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch",
                             disable=not progress)]
        return np.concatenate(out) if out else np.zeros((0, 16, 16, 3), np.uint8)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net's noise prediction from prompt embeddings and their
        ``conditioning_mask`` (gradients flow through when the caller allows)."""
        return self.unet(latents, timesteps, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample

    @torch.no_grad()
    def images_to_latents(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (n, h, w, 3) or float (n, 3, h, w) in [-1, 1] -> U-Net latents."""
        if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
            x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        else:
            x = images.float()
        x = x.to(self.device)
        vae = getattr(self.pipe, "vae", None)
        if vae is None:  # ToyWorld: pixel space
            return x
        return vae.encode(x.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, t)

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    # -- identity ------------------------------------------------------------
    @property
    def base_hash(self) -> str:
        """Content hash of the weights this model was loaded from (before any edit)."""
        if self._base_hash is None:
            self._base_hash = directory_hash(self.local_dir)
        return self._base_hash

    @property
    def local_dir(self) -> Path:
        """The pipeline directory this model was loaded from."""
        return resolve_local(self.source)

    def save(self, path: Path) -> None:
        self.pipe.save_pretrained(path, safe_serialization=True)


def resolve_local(path_or_id: str) -> Path:
    """A local directory for a model given as a path or as a hub id already in the local
    hub cache (nothing is downloaded)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_id, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        raise ModelLoadError(
            f"model {path_or_id!r} is neither a local directory nor in the local Hugging Face "
            f"cache. Download it where the hub is reachable (huggingface-cli download "
            f"{path_or_id}) or pass the path of a saved pipeline (save_pretrained layout)."
        ) from exc


def load_tokenizer(path_or_id: str | Path):
    """Only the tokenizer of a pipeline (to measure prompts against its token limit)."""
    from transformers import AutoTokenizer

    local = resolve_local(str(path_or_id))
    sub = local / "tokenizer"
    if not sub.is_dir():
        raise ModelLoadError(f"{local} has no tokenizer/ folder: not a diffusers pipeline directory")
    return AutoTokenizer.from_pretrained(sub)


_DEFAULT = object()


def load_model(path_or_id: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, sample_dtype=_DEFAULT) -> DiffusionModel:
    """Load a ToyWorld pipeline or a Stable Diffusion pipeline from a local path or hub id,
    on ``device`` (``resolve_device``: by default ``FRESHEN_DEVICE``, else CUDA when present),
    its images sampled under autocast in ``sample_dtype`` (default ``sampling_dtype``:
    float16 on CUDA; None: float32). The weights stay ``dtype``: the edits write them."""
    device = resolve_device(device)
    half = sampling_dtype(device) if sample_dtype is _DEFAULT else sample_dtype
    local = resolve_local(str(path_or_id))
    index = local / "model_index.json"
    if not index.exists():
        raise ModelLoadError(f"{local} has no model_index.json: not a diffusers pipeline directory")
    class_name = json.loads(index.read_text()).get("_class_name")
    custom = pipeline_class(class_name)
    with quiet_loading():
        if custom is not None:  # a pipeline registered by an installed package (ToyWorld's)
            pipe = custom.from_pretrained(local, dtype=dtype, low_cpu_mem_usage=False)
            return DiffusionModel(owned(pipe.to(device)), str(path_or_id), custom.model_family, half)
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(local, dtype=dtype, low_cpu_mem_usage=False,
                                                       safety_checker=None, requires_safety_checker=False)
    return DiffusionModel(owned(pipe.to(device)), str(path_or_id), "stable-diffusion", half)


def owned(pipe):
    """``pipe`` with every weight copied out of its file: safetensors loads weights memory-mapped,
    so a weights file rewritten in place (``cp`` over it) would otherwise change a loaded model,
    and with it the base an edit is solved and measured against. Only weights on the CPU can
    still be mapped: moving to another device has copied the rest already."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for t in [*component.parameters(), *component.buffers()]:
                if t.device.type == "cpu":
                    t.data = t.data.clone()
    return pipe


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars from diffusers and transformers while a model loads: a load takes
    well under a second here, and the benchmarks and the service load models many times."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


def pipeline_class(name: str | None) -> type | None:
    """The pipeline class an installed package registers under ``name`` in the
    ``freshen.pipelines`` entry-point group (ToyWorld's: pyproject.toml), or None; its
    ``model_family`` names the family of model (the presets' and the gate's key)."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=PIPELINES) if ep.name == name]
    return found[0].load() if found else None
