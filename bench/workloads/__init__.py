"""Multi-client workload traces for the DLPM evaluation: specs, patterns, JSONL traces, token ids."""

from bench.workloads.generate import generate_trace
from bench.workloads.patterns import PATTERNS, build_pattern
from bench.workloads.spec import WorkloadSpec
from bench.workloads.tokens import answer_tokens, prompt_token_ids
from bench.workloads.trace import Segment, Trace, TraceRequest, load_trace, save_trace

__all__ = [
    "PATTERNS",
    "Segment",
    "Trace",
    "TraceRequest",
    "WorkloadSpec",
    "answer_tokens",
    "build_pattern",
    "generate_trace",
    "load_trace",
    "prompt_token_ids",
    "save_trace",
]
