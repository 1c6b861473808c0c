"""The kernel tests run the Triton kernels in Triton's CPU interpreter, on small CPU tensors.

TRITON_INTERPRET must be set before triton is first imported: ``@triton.jit`` reads
it when a kernel is defined, i.e. when our kernel modules are imported.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

from radixfair_engine.kernels.interpreter_compat import index_scalars_with_item  # noqa: E402

index_scalars_with_item()
