"""Concerns shared by every attack, kept in one place (as torchattacks' ``Attack`` base).

- :func:`attack_mode`: eval mode and frozen parameters while crafting, restored afterwards;
- :func:`input_gradient`: ∇ₓ Σᵢ objective(x)ᵢ via ``torch.autograd.grad`` (never ``.backward()``),
  the one input gradient of attacks, probes, recipes and checks;
- :func:`forward_context`: the forward's numeric precision (fp32, or bf16 autocast);
- :func:`run_attack` / :func:`run_steps`: input copies, memory layout, CUDA-graph replay;
- the geometry of the ε-ball: :func:`project`, :func:`perturbation_norm`,
  :func:`random_perturbation`, :func:`random_start`, :func:`default_alpha` (the α rule).

The ascent loop itself (steps, projection, restarts) is :mod:`workbench.attacks.ascent`.

Speed (none of it changes the attack): no host-device synchronisation anywhere in an
attack; the iterate is updated in place; 4-D inputs to conv nets are attacked in
``channels_last`` layout (oneDNN and cuDNN run it markedly faster); on CUDA the step is
captured once as a CUDA graph and replayed. ``CHANNELS_LAST_DEVICES`` and
``CUDA_GRAPHS`` switch the last two off.

Units: inputs live in [0, 1] and every ε / α is in the same pixel units (8/255 means
8/255 of the range); normalisation belongs inside the model. Shapes: inputs are (N, ...)
with the batch first; per-example quantities are (N,).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from typing import Union

import torch
from torch import nn
from torch.nn.modules import module as _torch_module  # its global hook registries (CUDA-graph replay skips hooks)

from ..registry import Registry
from ..types import Labels, Tensor
from .l1 import project_l1_ball, project_l1_box

#: Attacks by name; each entry is called as ``ATTACKS.get(name)(model, x, y, eps, **options)``.
ATTACKS: Registry[Callable[..., Tensor]] = Registry("attack")

NORMS = ("linf", "l2", "l1")
PRECISIONS = ("fp32", "bf16")

#: Devices where 4-D inputs to conv nets are attacked in channels_last (measured faster:
#: about 0.7x the time on CPU/oneDNN, up to 0.8x on an H200 with cuDNN at batch 512).
CHANNELS_LAST_DEVICES = ("cpu", "cuda")
#: On CUDA, capture one attack step as a CUDA graph and replay it for the remaining steps.
#: Small models at research batch sizes are bound by kernel-launch and Python overhead,
#: which replay removes; the kernels, and so the iterates, are those of the eager step.
CUDA_GRAPHS = True
#: Eager steps before capture (real attack steps: they warm up cuDNN and the allocator).
GRAPH_WARMUP_STEPS = 2

LossFn = Callable[[Tensor, Labels], Tensor]
Eps = Union[float, Tensor]


# --------------------------------------------------------------------------- validation
def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    return norm


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}"
        )
    return precision


def check_eps(eps: float) -> float:
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0 (pixel units), got {eps!r}")
    return eps


def check_batch(x: Tensor, y: Labels) -> None:
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor with values in [0, 1], got {x.dtype}")
    if x.dim() < 1 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"expected x of shape (N, ...) and y of shape (N,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )


def working_copy(x: Tensor, memory_format: torch.memory_format = torch.preserve_format) -> Tensor:
    """A detached copy of ``x`` in the dtype the attack computes in (float32 or float64).

    Half-precision inputs are upcast: δ and every update stay at least float32 whatever
    the forward's precision; the attack casts its result back to ``x.dtype``.
    """
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return x.detach().to(dtype=dtype, memory_format=memory_format, copy=True)


def default_alpha(eps: float, steps: int) -> float:
    """Step size rule α = 2.5·ε/steps (Madry et al. 2018; docs/methods.md)."""
    return 2.5 * eps / max(int(steps), 1)


# --------------------------------------------------------------------------- model state
@contextlib.contextmanager
def attack_mode(model: nn.Module, keep_mode: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with every parameter frozen while an attack runs.

    ``keep_mode=True`` freezes the parameters only and leaves train/eval mode alone (fast
    adversarial training takes its FGSM step in train mode, as Wong et al. do).

    BatchNorm uses (and does not update) its running statistics, dropout is off, and no
    parameter gradient is computed or stored. On exit, even on an exception, each module's
    ``training`` flag and each parameter's ``requires_grad`` are restored exactly (per
    module, so a train-mode model with a frozen BatchNorm comes back the same way). Safe
    to nest, and to call from inside a training loop.
    """
    # Only what needs changing is touched: on an eval-mode, frozen model (every evaluation)
    # nothing is set at all. Setting every flag unconditionally took 0.27 ms per call on the
    # quickstart's small CNN, 6% of an FGSM attack.
    modules = list(model.modules())
    modes = [m.training for m in modules]
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        if any(modes) and not keep_mode:
            model.eval()
        for p in trainable:
            p.requires_grad_(False)
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for m, mode in zip(modules, modes):
            if m.training != mode:
                m.training = mode


@contextlib.contextmanager
def crafting() -> Iterator[None]:
    """Gradients on, inference mode off: attacks work when called under ``no_grad``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def forward_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Precision of the model's forward while crafting.

    ``"bf16"`` runs the forward under ``torch.autocast(device.type, dtype=torch.bfloat16)``
    (meant for CUDA; on CPU this is CPU autocast). ``"fp32"`` explicitly *disables*
    autocast, so an attack called inside a trainer's mixed-precision region still computes
    its gradient in float32 (docs/methods.md: attack in float32 unless shown harmless).
    """
    if device.type not in ("cpu", "cuda"):
        if precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if not _autocast_on(device.type):
        return contextlib.nullcontext()  # already float32: skip the context's cost per step
    return torch.autocast(device_type=device.type, enabled=False)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type: assume on, keep the explicit disable
        return True


def input_gradient(
    objective: Callable[[Tensor], Union[Tensor, tuple[Tensor, ...]]], x_adv: Tensor, precision: str = "fp32"
) -> tuple[Tensor, Union[Tensor, tuple[Tensor, ...]]]:
    """(∇ over ``x_adv`` of Σᵢ objective(x_adv)ᵢ, the objective's output): the one input
    gradient of the workbench (attacks, the ascent engine, probes, recipes, checks).

    ``objective(x) -> (N,)``, or a tuple whose first entry is the (N,) values (the rest is
    returned untouched, e.g. a score from the same forward). It runs under the forward
    ``precision`` (:func:`forward_context`) with gradients on. The *sum* of per-example
    values, so an example's gradient does not depend on the batch size. ``x_adv`` must be a
    leaf that does not require grad; it is returned to that state, so callers may update it
    in place (the iterate of the engine is). Only ``x_adv``'s gradient is computed
    (``torch.autograd.grad``, never ``.backward()``): no parameter ``.grad`` is written.
    """
    x_adv.requires_grad_(True)
    try:
        with torch.enable_grad(), forward_context(x_adv.device, precision):
            out = objective(x_adv)
        values = out[0] if isinstance(out, tuple) else out
        (grad,) = torch.autograd.grad(values.sum(), x_adv)
    finally:
        x_adv.requires_grad_(False)
    return grad, out


def loss_objective(model: nn.Module, y: Labels, loss_fn: LossFn) -> Callable[[Tensor], Tensor]:
    """``x -> ℓ(f(x), y)`` per example, on float32 logits: what the attacks ascend."""
    return lambda x_adv: loss_fn(model(x_adv).float(), y)


def compile_for_attacks(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` for crafting attacks (the study option ``evaluation.compile``).

    Inductor fuses the memory-bound work around the convolutions (eval-mode BatchNorm and
    ReLU, forward and backward) into fewer kernels; the convolutions themselves are
    unchanged, so iterates equal the eager model's up to float rounding. The attack
    functions take the wrapper like any model (:func:`attack_mode` reaches the wrapped
    modules). Compilation happens at the first attack and again for each new batch shape
    (``dynamic=False``: static shapes give the fastest kernels). Meant for CUDA: on a CPU
    the compiled small CNN of the quickstart attacked 1.6x *slower* than eager (measured),
    and compiling needs a C++ compiler.
    """
    return torch.compile(model, dynamic=False)


# --------------------------------------------------------------------------- running
def run_attack(
    model: nn.Module,
    x: Tensor,
    y: Labels,
    craft: Callable[[Tensor, Labels], Tensor],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run ``craft(x0, y0)`` with the model in :func:`attack_mode`; return a result like x.

    ``x0`` is a detached float32 (or float64) copy of ``x`` and ``y0`` a copy of ``y``
    (copies, so inputs made under ``torch.inference_mode`` work too). Layout: for 4-D
    inputs to a convolutional model ``x0`` is handed over in ``channels_last`` memory format, which
    oneDNN/cuDNN convolutions run markedly faster (same values, same maths; only the
    summation order inside a convolution may differ at the last bit). A model that cannot
    take that layout (e.g. one calling ``.view`` on a conv output) raises a RuntimeError at
    its first forward; the attack is then rerun in the input's own layout, from the same
    ``generator`` state. The result is copied back into ``x``'s dtype and memory layout.
    """
    with crafting(), attack_mode(model):
        y0 = y.detach().clone()
        if _channels_last_helps(model, x):
            rng_state = generator.get_state() if generator is not None else None
            try:
                out = craft(working_copy(x, torch.channels_last), y0)
            except RuntimeError:
                if rng_state is not None:
                    generator.set_state(rng_state)
                out = craft(working_copy(x), y0)
        else:
            out = craft(working_copy(x), y0)
    out = out.detach()
    if out.dtype == x.dtype and out.is_contiguous() and x.is_contiguous():
        return out  # already a fresh copy in x's dtype and layout
    return torch.empty_like(x, requires_grad=False).copy_(out)


def _channels_last_helps(model: nn.Module, x: Tensor) -> bool:
    if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
        return False
    return x.device.type in CHANNELS_LAST_DEVICES and any(
        isinstance(m, nn.Conv2d) for m in model.modules()
    )


def run_steps(step: Callable[[], None], steps: int, model: nn.Module, like: Tensor) -> None:
    """Run ``step()`` (which updates the iterate in place) ``steps`` times.

    On CUDA, with more than ``GRAPH_WARMUP_STEPS + 1`` steps and a model without hooks
    (which replay would not call) or DataParallel wrapper, the first steps run eagerly,
    the next is captured on a side stream (capture_error_mode="thread_local", so other
    threads, e.g. a DataLoader's pin-memory thread, are unaffected) and replayed for the
    rest; no host synchronisation.
    If capture fails (a model that syncs with the host, say), the remaining steps run
    eagerly; capture executes nothing, so no step is lost or repeated. Memory: the graph
    keeps its own pool, so about one extra step's activations stay reserved meanwhile.
    """
    warm = GRAPH_WARMUP_STEPS
    if not (CUDA_GRAPHS and like.is_cuda and steps > warm + 1 and _graph_safe(model)):
        for _ in range(steps):
            step()
        return
    for _ in range(warm):
        step()
    current = torch.cuda.current_stream(like.device)
    side = torch.cuda.Stream(like.device)
    side.wait_stream(current)
    graph, captured = torch.cuda.CUDAGraph(), False
    with torch.cuda.stream(side):
        try:
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                step()
            finally:
                graph.capture_end()
            captured = True
        except Exception:  # replaying eagerly re-raises any genuine error of the model
            _reset_after_failed_capture(like.device)
        if captured:
            for _ in range(steps - warm):
                graph.replay()
    current.wait_stream(side)
    if not captured:
        for _ in range(steps - warm):
            step()


def _reset_after_failed_capture(device: torch.device) -> None:
    """Clear the CUDA RNG's capture state after a failed capture.

    ``capture_begin`` puts the default CUDA generator in capture mode and only a
    successful ``capture_end`` takes it out; after a failed one, the next random draw
    outside a graph raises ("Offset increment outside graph capture"). A trivial capture
    that succeeds restores it, using public API only.
    """
    scratch = torch.zeros(1, device=device)
    graph = torch.cuda.CUDAGraph()
    graph.capture_begin(capture_error_mode="thread_local")
    scratch.add_(1.0)
    graph.capture_end()


def _graph_safe(model: nn.Module) -> bool:
    """No module hooks (replay would skip them) and no (Distributed)DataParallel wrapper
    (whose forward scatters or broadcasts buffers)."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return False
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(_torch_module, "_global" + name, None) for name in hook_dicts):
        return False
    return not any(getattr(m, name, None) for m in model.modules() for name in hook_dicts)


# --------------------------------------------------------------------------- geometry
def _per_example(v: Tensor, like: Tensor) -> Tensor:
    """Reshape an (N,) tensor to broadcast against ``like`` of shape (N, ...)."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _as_eps(eps: Eps, like: Tensor) -> Eps:
    if isinstance(eps, Tensor) and eps.dim() > 0:
        return _per_example(eps.to(device=like.device, dtype=like.dtype), like)
    return eps


def perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-example norm of ``delta`` (N, ...) -> (N,): linf = max|δ|, l2 = ‖δ‖₂, l1 = Σ|δᵢ|."""
    check_norm(norm)
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l1":
        return flat.abs().sum(dim=1)
    return torch.linalg.vector_norm(flat, ord=2, dim=1)


def project(delta: Tensor, eps: Eps, norm: str) -> Tensor:
    """Euclidean projection of each example's ``delta`` onto the ε-ball of ``norm``.

    L∞ clamps each coordinate to [−ε, ε]; L2 rescales δ to ‖δ‖₂ ≤ ε (unchanged inside the
    ball; δ = 0 stays 0); L1 soft-thresholds (Duchi et al. 2008, :mod:`workbench.attacks.l1`,
    whose ``project_l1_box`` also respects x + δ ∈ [0, 1]). ``eps`` is a float or a per-example (N,) tensor, in pixel units.
    Returns a new tensor of ``delta``'s shape; it does not clip x+δ to [0, 1].
    """
    check_norm(norm)
    if norm == "l1":
        return project_l1_ball(delta, eps)
    eps_b = _as_eps(eps, delta)
    if norm == "linf":
        if isinstance(eps_b, Tensor):
            return torch.max(torch.min(delta, eps_b), -eps_b)
        return delta.clamp(-eps_b, eps_b)
    n = _per_example(perturbation_norm(delta, "l2"), delta)
    tiny = torch.finfo(delta.dtype).tiny
    return delta * (eps_b / n.clamp_min(tiny)).clamp(max=1.0)


def _generator_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


#: (this process's first row, its rows, the global batch's rows) while a data-parallel rank
#: trains on its share of a batch (:func:`global_batch_rows`)
_BATCH_ROWS: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar("batch_rows", default=None)


@contextlib.contextmanager
def global_batch_rows(offset: int, rows: int, total: int) -> Iterator[None]:
    """Inside, the random draws of torch's global generator made for a tensor of ``rows``
    examples (the random starts of PGD, FGSM-RS and TRADES; :func:`uniform_like`,
    :func:`normal_like`, :func:`rand_like`, :func:`randn_like`) are drawn for the whole global
    batch of ``total`` rows and rows ``offset … offset + rows − 1`` are kept. Every rank
    seeds the global generator alike, so a rank's share of a batch gets the random numbers
    one process training on the whole batch gives those rows (and DistributedDataParallel
    trains the model one process trains)."""
    token = _BATCH_ROWS.set((offset, rows, total))
    try:
        yield
    finally:
        _BATCH_ROWS.reset(token)


def _global_rows(x: Tensor, generator: torch.Generator | None) -> tuple[int, int] | None:
    """(offset, total) when a draw for ``x`` is to be taken from the global batch's."""
    rows = _BATCH_ROWS.get()
    if rows is None or generator is not None or x.dim() == 0 or x.shape[0] != rows[1]:
        return None
    return rows[0], rows[2]


def _draw_rows(x: Tensor, generator: torch.Generator | None, fill: Callable[[Tensor], Tensor],
               layout: torch.memory_format = torch.contiguous_format) -> Tensor:
    """``fill(empty)`` of ``x``'s shape (in ``layout``), or under :func:`global_batch_rows`
    this process's rows of ``fill`` on the global batch's shape: the rows of a batch occupy
    consecutive memory in both layouts, so they get the same numbers."""
    dev = _generator_device(generator, x.device)
    shard = _global_rows(x, generator)
    if shard is None:
        return fill(torch.empty(x.shape, dtype=x.dtype, device=dev, memory_format=layout)).to(x.device)
    offset, total = shard
    full = fill(torch.empty((total, *x.shape[1:]), dtype=x.dtype, device=dev, memory_format=layout))
    return full[offset:offset + x.shape[0]].to(x.device)


def _layout(x: Tensor) -> torch.memory_format:
    """The memory format ``torch.*_like(x)`` gives (for the draws that follow x's layout)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def uniform_like(x: Tensor, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """U[low, high) of ``x``'s shape/dtype/device, drawn on the generator's device."""
    return _draw_rows(x, generator, lambda t: t.uniform_(low, high, generator=generator))


def normal_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) of ``x``'s shape/dtype/device, drawn on the generator's device."""
    return _draw_rows(x, generator, lambda t: t.normal_(generator=generator))


def _like(x: Tensor, torch_like: Callable[[Tensor], Tensor], fill: Callable[[Tensor], Tensor]) -> Tensor:
    """``torch_like(x)`` itself outside :func:`global_batch_rows` (the draws stay bit for bit
    what they were), else this process's rows of ``fill`` on the global batch in x's layout."""
    if _global_rows(x, None) is None:
        return torch_like(x)
    return _draw_rows(x, None, fill, _layout(x))


def rand_like(x: Tensor) -> Tensor:
    """``torch.rand_like(x)`` (U[0, 1), x's layout), global-batch rows under :func:`global_batch_rows`."""
    return _like(x, torch.rand_like, lambda t: t.uniform_(0, 1))


def randn_like(x: Tensor) -> Tensor:
    """``torch.randn_like(x)`` (N(0, I), x's layout), global-batch rows under :func:`global_batch_rows`."""
    return _like(x, torch.randn_like, lambda t: t.normal_())


def random_start(
    x: Tensor, eps: float, norm: str, generator: torch.Generator | None = None
) -> Tensor:
    """PGD's random start, x + δ₀ clipped to [0, 1] (a new tensor).

    L∞: δ₀ ~ U[−ε, ε] per coordinate (Madry et al. 2018). L2: a Gaussian direction at a
    radius ε·U, U ~ U[0, 1] (torchattacks' PGDL2). Not uniform in the ball: that puts the
    radius at ε·U^{1/d} (median 0.989ε in 64 dimensions): nearly every start would sit on the
    sphere, where a step along the gradient is soon cut by the projection.
    L1: likewise a Gaussian direction at L1 radius ε·U, projected onto the L1 ball ∩ [0, 1].
    """
    # Random numbers are drawn in logical (contiguous) order, so a seed gives the same start
    # whatever x's memory layout; ``out=empty_like(x)`` keeps x's layout for the iterates.
    if norm == "linf":
        u = uniform_like(x, -eps, eps, generator)
    else:
        u = normal_like(x, generator)
        n = _per_example(perturbation_norm(u, norm), x).clamp_min(torch.finfo(x.dtype).tiny)
        radius = uniform_like(x.new_empty(x.shape[0]), 0.0, 1.0, generator)
        u.mul_(_per_example(radius.mul_(eps), x) / n)
        if norm == "l1":
            # the exact projection onto the L1 ball ∩ [0, 1]: the clip below alone would
            # throw away the budget spent on saturated pixels
            u = project_l1_box(u, x, eps)
    return torch.add(x, u, out=torch.empty_like(x)).clamp_(0.0, 1.0)


def random_perturbation(
    x: Tensor, eps: Eps, norm: str, generator: torch.Generator | None = None
) -> Tensor:
    """A random direction at the attack's budget, returned as x + δ clipped to [0, 1].

    L∞: δ = ε·sign(u), u ~ N(0, I) (a vertex of the box); L2: δ = ε·u/‖u‖₂ per example
    (docs/methods.md, δ_rand); L1: δ = ε·u/‖u‖₁ (a dense direction of L1 size ε). ``eps``
    is a float or a per-example (N,) tensor (e.g. the norms
    of PGD perturbations, to draw a random δ of the same size). Measure ‖δ‖ after the clip
    with :func:`perturbation_norm` (x_rand − x), since clipping can shorten it.
    """
    check_norm(norm)
    u = normal_like(x.detach(), generator)
    eps_b = _as_eps(eps, u)
    if norm == "linf":
        delta = u.sign_().mul_(eps_b)
    else:
        n = _per_example(perturbation_norm(u, norm), u).clamp_min(torch.finfo(u.dtype).tiny)
        delta = u.mul_(eps_b / n)
    return delta.add_(x.detach()).clamp_(0.0, 1.0)
