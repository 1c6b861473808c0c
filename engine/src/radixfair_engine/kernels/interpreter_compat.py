"""A fix for Triton's CPU interpreter (TRITON_INTERPRET=1), used by the kernel tests and smoke runs."""

from __future__ import annotations


def index_scalars_with_item() -> None:
    """Lets the interpreter run loops whose bounds are loaded values (``range(start, end)``).

    Triton 3.6's interpreter keeps a scalar as a one-element array and converts it
    with ``int(array)``, which NumPy 2.4 refuses for arrays of one dimension;
    ``.item()`` is the same value. Only the interpreter is touched, never a GPU run.
    Idempotent; does nothing without triton.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter._patch_lang_tensor
    if getattr(original, "_indexes_with_item", False):
        return

    def patch(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch._indexes_with_item = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patch
