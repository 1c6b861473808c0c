"""The kernel registry is the one list of kernels: both backends and every per-kernel file follow it."""

import importlib
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("triton")

from radixfair_engine.kernels import reference  # noqa: E402
from radixfair_engine.kernels.registry import (  # noqa: E402
    KERNELS,
    Kernel,
    declared_kernels,
    distinct_names,
    kernel,
    modules,
)
from radixfair_engine.model.backend import KernelBackend  # noqa: E402
from radixfair_engine.model.torch_backend import TorchBackend  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KERNEL_DIR = ROOT / "engine" / "src" / "radixfair_engine" / "kernels"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ is a package at the repository root, as in tests/bench
# The backends' plain operations; the fused ones (step_fusion) are methods that decide per call.
BACKEND_OPS = [k.name for k in KERNELS if hasattr(KernelBackend, k.name) and not k.step_fusion]


@pytest.mark.parametrize("name", BACKEND_OPS)
def test_each_backend_op_runs_the_registry_launcher_or_its_reference(name: str) -> None:
    entry = kernel(name)

    assert getattr(TritonBackend, name) is entry.launcher()
    assert getattr(TorchBackend, name) is entry.reference


def test_every_backend_operation_is_a_registry_kernel_or_a_dispatching_method() -> None:
    # attention picks decode, cascade or extend; linear and norm_lm_head choose a launcher per call;
    # quantized_linear picks the int8 or fp8 launcher (or none, above its row limit).
    dispatching = {"attention", "linear", "norm_lm_head", "norm_qkv_rope_write_kv", "norm_gate_up_silu"}
    dispatching |= {"quantized_linear"}
    operations = {name for name in vars(KernelBackend) if not name.startswith("_")} - {"name"}
    operations -= {"reads_shared_prefixes"}

    assert operations - dispatching == set(BACKEND_OPS)
    assert {"norm_qkv_rope_write_kv", "norm_gate_up_silu"} <= {k.name for k in KERNELS}


@pytest.mark.parametrize("module", modules())
def test_each_kernel_module_has_its_test_and_benchmark(module: str) -> None:
    assert (KERNEL_DIR / f"{module}.py").is_file()
    assert (ROOT / "tests" / "kernels" / f"test_{module}.py").is_file()
    assert (ROOT / "bench" / "kernels" / f"{module}.py").is_file()


def test_every_kernel_module_is_registered() -> None:
    helpers = {"__init__", "_launch", "accuracy", "interpreter_compat", "paged_fixtures", "prefix_groups"}
    helpers |= {"reference", "registry"}
    on_disk = {path.stem for path in KERNEL_DIR.glob("*.py")} - helpers

    assert on_disk == set(modules())


def test_the_step_fusion_kernels_are_the_fused_modules() -> None:
    assert modules(step_fusion=True) == ["norm_matmul", "norm_qkv_rope"]
    assert {k.name for k in KERNELS if k.step_fusion} == {
        "norm_matmul",
        "norm_gate_up_silu",
        "norm_qkv_rope_write_kv",
    }


def test_an_unknown_kernel_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="rms_norm"):
        kernel("layer_norm")


@pytest.mark.parametrize("module", modules())
def test_each_kernel_benchmark_checks_compiles_and_is_timed_somewhere(module: str) -> None:
    bench = importlib.import_module(f"bench.kernels.{module}")

    assert callable(bench.check) and callable(bench.launches)
    if hasattr(bench, "cases"):
        assert bench.SIZES
    else:
        assert (ROOT / bench.TIMED_BY).is_file()


def test_the_table_refuses_two_kernels_of_one_name_naming_both_modules() -> None:
    first = Kernel("rms_norm", "rms_norm", reference.rms_norm_reference)
    second = Kernel("rms_norm", "norm_matmul", reference.norm_matmul_reference)

    with pytest.raises(ValueError, match="two kernels are named 'rms_norm'.*'rms_norm'.*'norm_matmul'"):
        distinct_names((first, second))
    assert distinct_names(KERNELS) is KERNELS


def test_the_table_is_the_references_declarations_in_definition_order() -> None:
    @reference.reference_of("first_launcher", "shared_module")
    @reference.reference_of("second_launcher", "shared_module", step_fusion=True)
    def shared(x: object) -> object:
        return x

    @reference.reference_of("third")
    def third(x: object) -> object:
        return x

    def undeclared(x: object) -> object:
        return x

    namespace = types.ModuleType("references")
    namespace.shared, namespace.undeclared, namespace.third = shared, undeclared, third

    assert declared_kernels(namespace) == (
        Kernel("first_launcher", "shared_module", shared),
        Kernel("second_launcher", "shared_module", shared, step_fusion=True),
        Kernel("third", "third", third),
    )


def test_one_reference_judges_both_paged_attention_launchers() -> None:
    assert kernel("paged_decode_attention").reference is reference.paged_attention_reference
    assert kernel("extend_attention").reference is reference.paged_attention_reference
