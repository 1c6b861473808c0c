"""The kernel tests run the Triton kernels in Triton's CPU interpreter, on small CPU tensors.

TRITON_INTERPRET must be set before triton is first imported: ``@triton.jit`` reads
it when a kernel is defined, i.e. when our kernel modules are imported.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"


def _index_scalars_with_item() -> None:
    """Lets the interpreter run loops whose bounds are loaded values (``range(start, end)``).

    Triton 3.6's interpreter keeps a scalar as a one-element array and converts it
    with ``int(array)``, which NumPy 2.4 refuses for arrays of one dimension;
    ``.item()`` is the same value. Only the interpreter is touched, never a GPU run.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:  # no triton: the test modules skip themselves
        return
    original = interpreter._patch_lang_tensor

    def patch(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch


_index_scalars_with_item()
