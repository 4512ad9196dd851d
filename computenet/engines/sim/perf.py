"""How long one engine step takes on a given GPU: a roofline with measured efficiencies.

A step runs every scheduled token through the model once. We cost it as two
operator groups, each limited by whichever of compute or memory is slower,
plus the fixed costs a real engine pays around the GPU:

    linear   = max(2 * P_active * (T + T0) + 2 * V * H * S_logits / (tp * F),
                   W_read                                      / (tp * B))
    attention= max(4 * L * heads * d_head * pairs              / (tp * F),
                   kv_bytes_per_token * kv_read                / (tp * B))
    comm     = 2 * L * (lat + 2 (tp-1)/tp * T * H * bytes / link)   (only when tp > 1)
    step     = overhead_step + overhead_seq * S + linear + attention + comm

T is the tokens computed this step (prefill chunks plus one per decoding
sequence), S the sequences in the batch, `pairs` the query-key pairs attention
evaluates (a chunk of n new tokens over c cached ones costs n*c + n(n+1)/2, a
decode over context c costs c+1), `kv_read` the cached tokens whose K and V are
read. F and B are the GPU's peak BF16 FLOP/s and memory bandwidth times the
efficiency constants below; T0 (`gemm_ramp_tokens`) models that a GEMM only a
few tokens tall cannot fill the GPU's tensor cores, so its efficiency is
T / (T + T0) of the peak share. Weights are read once per step: a dense model reads
all of them except the input embedding (a row lookup); a MoE reads its shared
weights plus the expected share of experts that T tokens route to,
1 - (1 - k/E)^T. The constants are calibrated against published vLLM
figures for Llama-3.1-8B on one H100 (docs/benchmarks.md, "sim fidelity").
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import GpuSpec, ModelArch


@dataclass(frozen=True)
class PerfConstants:
    """Efficiency factors and overheads; defaults are the H100 / vLLM-v1 calibration."""

    compute_efficiency: float = 0.70  # achieved share of peak tensor FLOP/s (MFU of GEMMs, attention)
    bandwidth_efficiency: float = 0.80  # achieved share of peak memory bandwidth
    step_overhead_s: float = 0.002  # scheduling, input preparation and launch, per step
    seq_overhead_s: float = 0.00002  # sampling and output processing, per sequence in the batch
    allreduce_latency_s: float = 10e-6  # fixed cost of one tensor-parallel all-reduce
    gemm_ramp_tokens: int = 128  # GEMMs this many tokens tall run at half efficiency (tile/wave fill)

    def __post_init__(self) -> None:
        for name in ("compute_efficiency", "bandwidth_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"PerfConstants.{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class StepShape:
    """What a step computes, summed over its batch."""

    tokens: int  # new tokens computed: prefill chunk tokens plus one per decoding sequence
    seqs: int  # sequences in the batch
    logits: int  # sequences that sample a token this step
    attention_pairs: float  # query-key pairs evaluated
    kv_read_tokens: int  # cached tokens whose K/V are read


class PerfModel:
    """Step times for one (model, GPU, tensor-parallel size)."""

    def __init__(
        self, model: ModelArch, gpu: GpuSpec, tp: int = 1, constants: PerfConstants | None = None
    ) -> None:
        if tp < 1:
            raise ValueError(f"tp must be at least 1, got {tp}")
        self.model, self.gpu, self.tp = model, gpu, tp
        self.constants = constants = constants or PerfConstants()
        flops = tp * gpu.bf16_tflops * 1e12 * constants.compute_efficiency
        bandwidth = tp * gpu.memory_t_bps * 1e12 * constants.bandwidth_efficiency
        embedding = model.embedding_parameters
        expert = model.expert_parameters_b * 1e9
        shared = model.parameters_b * 1e9 - expert  # everything outside routed experts
        routed_share = model.experts_per_token / model.experts if model.experts else 0.0
        body_active = shared - 2 * embedding + expert * routed_share
        # Seconds per unit, so a step is a handful of multiply-adds (the fleet runs millions).
        self._s_per_token_flop = 2 * body_active / flops
        self._s_per_logit = 2 * embedding / flops  # the LM head: vocab x hidden per sampled row
        self._s_per_pair = 4 * model.layers * model.heads * model.head_dim / flops
        self._s_per_kv_token = model.kv_bytes_per_token / bandwidth
        self._s_shared_weights = (shared - embedding) * model.dtype_bytes / bandwidth
        self._s_all_experts = expert * model.dtype_bytes / bandwidth
        self._miss_share = 1.0 - routed_share
        self._ramp = constants.gemm_ramp_tokens
        self._overhead_step = constants.step_overhead_s
        self._overhead_seq = constants.seq_overhead_s
        self._comm_fixed = 2 * model.layers * constants.allreduce_latency_s if tp > 1 else 0.0
        link = gpu.interconnect_g_bps * 1e9
        ring = 2 * (tp - 1) / tp
        self._comm_per_token = 2 * model.layers * ring * model.hidden * model.dtype_bytes / link

    def weight_read_s(self, tokens: int) -> float:
        """Time to stream the weights one step touches."""
        if not self._s_all_experts:
            return self._s_shared_weights
        touched = 1.0 - self._miss_share**tokens if tokens else 0.0
        return self._s_shared_weights + self._s_all_experts * touched

    def step_time(self, shape: StepShape) -> float:
        """Seconds one engine step of this shape takes."""
        if shape.tokens <= 0:
            return 0.0
        compute = (shape.tokens + self._ramp) * self._s_per_token_flop + shape.logits * self._s_per_logit
        linear = max(compute, self.weight_read_s(shape.tokens))
        attention = max(shape.attention_pairs * self._s_per_pair, shape.kv_read_tokens * self._s_per_kv_token)
        comm = self._comm_fixed + shape.tokens * self._comm_per_token if self._comm_fixed else 0.0
        return self._overhead_step + self._overhead_seq * shape.seqs + linear + attention + comm

    def decode_step_time(self, batch: int, context_tokens: int) -> float:
        """A pure decode step: `batch` sequences attending `context_tokens` cached tokens in total."""
        pairs = context_tokens + batch
        return self.step_time(StepShape(batch, batch, batch, pairs, context_tokens + batch))

    def prefill_step_time(self, tokens: int, cached: int = 0) -> float:
        """One sequence prefilling `tokens` new tokens on top of `cached` already in the KV cache."""
        pairs = tokens * cached + tokens * (tokens + 1) / 2
        return self.step_time(StepShape(tokens, 1, 1, pairs, cached + tokens))

    def kv_cache_blocks(self, gpu_memory_utilization: float, block_size: int) -> int:
        """KV blocks that fit: (memory x utilisation - weights / tp) over the KV bytes of a block."""
        per_gpu_memory = self.gpu.memory_bytes * gpu_memory_utilization
        per_gpu_weights = self.model.weight_bytes / self.tp
        kv_heads_per_gpu = max(1.0, self.model.kv_heads / self.tp)  # fewer heads than GPUs: replicated
        per_token = self.model.kv_bytes_per_token * kv_heads_per_gpu / self.model.kv_heads
        free = per_gpu_memory - per_gpu_weights
        return max(0, int(free // (per_token * block_size)))
