"""Model-state bytes per parameter, the published conventions for counting them, and pinned rounding.

Three conventions are in use, and they differ in what they count (all for mixed-precision Adam):

* ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", arXiv:1910.02054, §3.1 and Figure 1): ``(2 + 2 + K) Ψ`` with ``K = 12`` —
  16-bit weights, 16-bit gradients, and fp32 master weights, momentum and variance: 16 B/param.
  No fp32 copy of the gradients is counted. :func:`zero_paper_model_state_bytes`.
* DeepSpeed's estimators (``estimate_zero2_model_states_mem_needs`` in
  ``deepspeed/runtime/zero/stage_1_and_2.py`` and ``estimate_zero3_model_states_mem_needs`` in
  ``deepspeed/runtime/zero/stage3.py``, microsoft/DeepSpeed): without offload ZeRO-2 counts
  ``2 + 18/N`` B/param ("18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit +
  8_optimizer_states_32bit", the source comment): the fp32 gradient partition of the step *is*
  counted, so 20 B/param on one GPU. With CPU offload the host holds ``max(4 N, 16)`` B/param
  times an ``additional_buffer_factor`` (1.5 by default), the GPU the 16-bit weights (2 B/param).
  :func:`deepspeed_zero2_estimate`, :func:`deepspeed_zero3_estimate`.
* Megatron-LM (README, "Distributed Optimizer" table, NVIDIA/Megatron-LM): fp16 params with fp16
  grads 20 B/param (``4 + 16/d`` distributed), bf16 params with fp32 grads 18 (``6 + 12/d``), fp32
  16 (``8 + 8/d``). The "18" keeps the gradients in fp32 only (the main_grad buffer accumulates in
  fp32), with no 16-bit gradient. :func:`megatron_bytes_per_param`.

tierplan's own accounting (:class:`StateBytes`) names each term so that any of these is one
setting: ``fp32_grad_copy=False`` gives the ZeRO paper's 16, ``True`` DeepSpeed's and Megatron's
fp16 20.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from costmodel.errors import WorkloadError


class Precision(enum.StrEnum):
    """The dtype of the weights the forward and backward read, and of the activations."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


class OptimizerKind(enum.StrEnum):
    """``adamw``/``adam``: two moments; ``sgd-momentum``: one; ``sgd``: none."""

    ADAMW = "adamw"
    ADAM = "adam"
    SGD_MOMENTUM = "sgd-momentum"
    SGD = "sgd"


MOMENT_DTYPES = {"fp32": 4, "bf16": 2}
MOMENTS_PER_PARAM = {OptimizerKind.ADAMW: 2, OptimizerKind.ADAM: 2, OptimizerKind.SGD_MOMENTUM: 1,
                     OptimizerKind.SGD: 0}
# FLOPs per element of one optimizer update, counted from torch.optim's single-tensor implementations
# (_single_tensor_adamw / _single_tensor_adam / _single_tensor_sgd): one FLOP per multiply, add,
# divide and square root; AdamW adds the decoupled weight decay (param.mul_(1 - lr * wd)).
# A count of the algorithm, not a measurement: the step is memory-bound on every profile here.
OPTIMIZER_FLOP_PER_PARAM = {OptimizerKind.ADAMW: 14, OptimizerKind.ADAM: 13, OptimizerKind.SGD_MOMENTUM: 4,
                            OptimizerKind.SGD: 2}
FP32_BYTES = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class StateBytes:
    """Bytes per parameter of each model state (before any ZeRO partitioning).

    ``weights``: the copy the forward and backward read (2 for fp16/bf16, 4 for fp32).
    ``grads``: gradients as the backward writes them (the weights' dtype).
    ``grad32``: an fp32 copy of the gradients for the step (mixed precision with
    ``fp32_grad_copy``: DeepSpeed's fp32 partition ``.grad``, Megatron's ``main_grad``), else 0.
    ``master``: fp32 master weights (4 in mixed precision; 0 in fp32, where the weights are the
    master copy). ``moments``: optimizer state, moments per parameter x the moment dtype.

    Examples
    --------
    >>> sb = state_bytes(Precision.FP16, OptimizerKind.ADAMW, fp32_grad_copy=False)
    >>> sb.total  # the ZeRO paper's 2 + 2 + 12
    16.0
    >>> state_bytes(Precision.BF16, OptimizerKind.ADAMW, fp32_grad_copy=True).total  # DeepSpeed's 2 + 18
    20.0
    """

    weights: float
    grads: float
    grad32: float
    master: float
    moments: float
    moment_tensors: int  # separate tensors (allocations) the moments take: 2 for Adam

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.grad32 + self.master + self.moments

    @property
    def step_grad(self) -> float:
        """Bytes per parameter of the gradient the step reads: the fp32 copy, else the gradient itself."""
        return self.grad32 or (FP32_BYTES if self.master else self.grads)

    def optimizer_states(self) -> float:
        """Master weights and moments: what ZeRO stage 1 partitions and offload moves off the GPU."""
        return self.master + self.moments


def state_bytes(precision: Precision | str, optimizer: OptimizerKind | str, *, moments_dtype: str = "fp32",
                fp32_grad_copy: bool = True) -> StateBytes:
    """Per-parameter model-state bytes of a precision and optimizer (see :class:`StateBytes`)."""
    precision, optimizer = Precision(precision), OptimizerKind(optimizer)
    if moments_dtype not in MOMENT_DTYPES:
        raise WorkloadError(f"moments_dtype must be one of {', '.join(MOMENT_DTYPES)}, got {moments_dtype!r}")
    mixed = precision is not Precision.FP32
    w = 2.0 if mixed else float(FP32_BYTES)
    n = MOMENTS_PER_PARAM[optimizer]
    return StateBytes(weights=w, grads=w, grad32=float(FP32_BYTES) if mixed and fp32_grad_copy else 0.0,
                      master=float(FP32_BYTES) if mixed else 0.0, moments=float(n * MOMENT_DTYPES[moments_dtype]),
                      moment_tensors=n)


def step_bytes_per_param(sb: StateBytes, *, unscale: bool = False,
                         writes_weights_copy: bool = True) -> tuple[float, float]:
    """(read, written) bytes per parameter of one optimizer step, where the states live.

    The step is up to three passes over the partition, as DeepSpeed's ZeRO-1/2 ``step()`` runs them
    (deepspeed 0.19.8, ``deepspeed/runtime/zero/stage_1_and_2.py``, the ``if self.cpu_offload:``
    branch; the GPU branch runs the same three on the device):

    * **unscale** (``unscale=True``): ``unscale_and_clip_grads`` multiplies the step's gradient by
      ``1 / combined_scale`` in place (``grad.data.mul_(1. / combined_scale)``): it reads and writes
      ``step_grad``. The method returns early only ``if self.clip_grad == 0.0 and self.loss_scale
      == 1.0``, so fp16 (a dynamic loss scale) always pays it, and bf16/fp32 pay it when gradients
      are clipped (:attr:`costmodel.training_units.TrainWorkload.unscales`).
    * **update**: reads the master weights, the step's gradient and the moments; writes the master
      weights and the moments back (fp32 Adam: 16 B read, 12 B written).
    * **16-bit copy** (mixed precision, ``writes_weights_copy``): ``bit16_partition_buffer.data.
      copy_(fp32_partition.data)`` converts the updated master weights into the 16-bit copy the
      GPU computes with, a pass of its own after the update: it reads the master (4 B) and writes
      the weights (2 B). (DeepSpeedCPUAdam's fused fp16 write-back is disabled in that code:
      "Disabled, this is not currently working".)

    For fp32 Adam in mixed precision: update 28 B + copy 6 B = 34 B; with the unscale 42 B.

    Examples
    --------
    >>> step_bytes_per_param(state_bytes("fp16", "adamw"))
    (20.0, 14.0)
    >>> step_bytes_per_param(state_bytes("fp16", "adamw"), unscale=True)
    (24.0, 18.0)
    """
    master = sb.master or sb.weights  # fp32 training updates the weights themselves
    read = master + sb.step_grad + sb.moments
    written = master + sb.moments
    if unscale:
        read += sb.step_grad
        written += sb.step_grad
    if sb.master and writes_weights_copy:
        read += sb.master
        written += sb.weights
    return read, written


# ---------------------------------------------------------------------------------------------
# Published conventions, reproduced exactly
# ---------------------------------------------------------------------------------------------


def zero_paper_model_state_bytes(params: float, dp: int = 1, stage: int = 0, k: float = 12.0) -> float:
    """Model-state bytes per GPU in the ZeRO paper's accounting.

    Rajbhandari et al. 2020 (arXiv:1910.02054), §3.1 and Figure 1, with Ψ parameters, K bytes of
    optimizer state per parameter (12 for mixed-precision Adam) and N_d data-parallel GPUs:
    baseline ``(2 + 2 + K) Ψ``; P_os (stage 1) ``2Ψ + 2Ψ + KΨ/N_d``; P_os+g (stage 2)
    ``2Ψ + (2 + K)Ψ/N_d``; P_os+g+p (stage 3) ``(2 + 2 + K)Ψ/N_d``.

    Examples
    --------
    >>> zero_paper_model_state_bytes(7.5e9, dp=64, stage=1) / 1e9  # Figure 1: 31.4 GB
    31.40625
    >>> zero_paper_model_state_bytes(7.5e9) / 1e9  # Figure 1 baseline: 120 GB
    120.0
    """
    if stage not in (0, 1, 2, 3):
        raise WorkloadError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if stage == 0:
        return (4 + k) * params
    if stage == 1:
        return 4 * params + k * params / dp
    if stage == 2:
        return 2 * params + (2 + k) * params / dp
    return (4 + k) * params / dp


def megatron_bytes_per_param(param_dtype: str, grad_dtype: str, dp: int = 1, *, distributed: bool = False) -> float:
    """Theoretical model-state bytes per parameter of Megatron-LM (Adam), per its README table.

    NVIDIA/Megatron-LM README, "Distributed Optimizer": "fp16 param, fp16 grads | 20 | 4 + 16/d",
    "bf16 param, fp32 grads | 18 | 6 + 12/d", "fp32 param, fp32 grads | 16 | 8 + 8/d" (d = data
    parallel size). With fp16 grads there is also an fp32 main-grad copy (2 + 2 + 4 + 12 = 20);
    with bf16 params the fp32 main grads are the only gradient (2 + 4 + 12 = 18).

    Examples
    --------
    >>> megatron_bytes_per_param("bf16", "fp32"), megatron_bytes_per_param("bf16", "fp32", 8, distributed=True)
    (18.0, 7.5)
    """
    table = {("fp16", "fp16"): (20.0, 4.0, 16.0), ("bf16", "fp32"): (18.0, 6.0, 12.0),
             ("fp32", "fp32"): (16.0, 8.0, 8.0)}
    key = (param_dtype, grad_dtype)
    if key not in table:
        raise WorkloadError(f"(param_dtype, grad_dtype) must be one of {sorted(table)} (the Megatron-LM README "
                            f"table), got {key!r}")
    plain, fixed, shared = table[key]
    return fixed + shared / dp if distributed else plain


def deepspeed_zero2_estimate(total_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1,
                             cpu_offload: bool = True, additional_buffer_factor: float = 1.5) -> tuple[int, int]:
    """(cpu_mem, gpu_mem) bytes of DeepSpeed's ``estimate_zero2_model_states_mem_needs``, exactly.

    microsoft/DeepSpeed ``deepspeed/runtime/zero/stage_1_and_2.py`` (commit 022f2236):
    with offload ``gpu = 2 P`` and ``cpu = P * max(4 * total_gpus, 16) * factor``; without,
    ``gpu = 2 P + int(18 P / total_gpus)`` and ``cpu = P * 4 * num_gpus_per_node * factor``.
    (Older releases had ``4 P + int(16 P / total_gpus)``, the ZeRO paper's stage 2 with 16-bit
    weights and gradients unpartitioned.) The CPU figure is a per-node host estimate with a 1.5x
    safety factor, not an allocation count; tierplan's :class:`StateBytes` is the allocation count.

    Examples
    --------
    >>> deepspeed_zero2_estimate(1_000_000_000)
    (24000000000, 2000000000)
    """
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


def deepspeed_zero3_estimate(total_params: int, largest_layer_params: int, num_gpus_per_node: int = 1,
                             num_nodes: int = 1, cpu_offload: bool = True, cpu_offload_params: bool = True,
                             zero_init: bool = True, additional_buffer_factor: float = 1.5) -> tuple[int, int, int]:
    """(cpu_mem, gpu_mem, largest_layer_memory) of DeepSpeed's ``estimate_zero3_model_states_mem_needs``.

    microsoft/DeepSpeed ``deepspeed/runtime/zero/stage3.py`` (commit 0003660d), exactly:
    ``largest_layer_memory = 4 * largest_layer_params`` (the 16-bit gathered layer and its
    gradient); offloading params and optimizer: ``gpu = largest_layer_memory``, ``cpu = P * 18 *
    (1/num_nodes) * factor`` (zero_init) or ``P * max(4 * gpus_per_node, 18/num_nodes) * factor``;
    offloading the optimizer only: ``gpu = largest + int(2 P / total_gpus)``, cpu with 16 for 18;
    no offload: ``gpu = largest + int(18 P / total_gpus)``, ``cpu = largest_layer_params (zero_init;
    else P) * 4 * gpus_per_node * factor``.

    Examples
    --------
    >>> deepspeed_zero3_estimate(1_000_000_000, 50_000_000)
    (27000000000, 200000000, 200000000)
    """
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            if zero_init:
                cpu_mem = total_params * 18 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu_mem = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


# ---------------------------------------------------------------------------------------------
# Pinned host memory
# ---------------------------------------------------------------------------------------------


def pinned_allocation_bytes(nbytes: float) -> float:
    """Bytes PyTorch's pinned (caching host) allocator takes for one allocation of ``nbytes``.

    The allocator rounds every request up to the next power of two before ``cudaHostAlloc``:
    ``size_t roundSize = c10::llvm::PowerOf2Ceil(size);`` (pytorch/pytorch
    ``aten/src/ATen/core/CachingHostAllocator.h``, ``CachingHostAllocatorImpl::allocate``; before
    its move there, ``aten/src/ATen/cuda/CachingHostAllocator.cpp`` with "Round up the allocation to
    the nearest power of two to improve reuse"). An 805 MB fp32 layer takes 1 GiB.

    Examples
    --------
    >>> pinned_allocation_bytes(3 * 2**20), pinned_allocation_bytes(2**30), pinned_allocation_bytes(0)
    (4194304.0, 1073741824.0, 0.0)
    """
    if nbytes <= 0:
        return 0.0
    n = int(-(-nbytes // 1))  # ceil to whole bytes
    return float(1 << (n - 1).bit_length())


__all__ = [
    "MOMENT_DTYPES", "OPTIMIZER_FLOP_PER_PARAM", "OptimizerKind", "Precision", "StateBytes",
    "deepspeed_zero2_estimate", "deepspeed_zero3_estimate", "megatron_bytes_per_param", "pinned_allocation_bytes",
    "state_bytes", "step_bytes_per_param", "zero_paper_model_state_bytes",
]
