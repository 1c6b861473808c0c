"""An engine process whose serving front is gone before the engine is built ends quietly.

Stopping ``radixfair up`` (or a worker) while a worker is still loading its model closes the front's
end of the pipe first; the engine process used to die on its EngineReady with a BrokenPipeError
traceback in the worker's log. Real engine process (spawn), real tiny model.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp, sys
    from pathlib import Path
    from radixfair_engine.config import EngineConfig
    from radixfair_worker.engine_loop import run_engine_process
    from radixfair_worker.engine_protocol import EngineSpec

    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        commands_reader, commands_writer = ctx.Pipe(duplex=False)
        outputs_reader, outputs_writer = ctx.Pipe(duplex=False)
        spec = EngineSpec(EngineConfig(num_pages=64), Path(sys.argv[1]), torch_threads=1)
        engine = ctx.Process(target=run_engine_process, args=(spec, commands_reader, outputs_writer))
        engine.start()
        # The front goes away at once: its ends close, as when it is stopped during the model load.
        outputs_reader.close()
        outputs_writer.close()
        commands_reader.close()
        engine.join(timeout=240)
        print("exitcode", engine.exitcode)
    """
)


def test_an_engine_whose_front_is_gone_ends_without_a_traceback(tiny_model_dir, tmp_path):
    script = tmp_path / "front_gone.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir)], capture_output=True, text=True, timeout=300
    )
    assert "exitcode 0" in result.stdout, (result.stdout, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "the serving front is gone" in result.stderr
