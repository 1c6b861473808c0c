"""The contract in protos/ follows buf's STANDARD lint rules, and the stubs built from it import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROTOS = Path(__file__).resolve().parent.parent / "protos"


def test_protos_pass_buf_lint():
    buf = shutil.which("buf", path=str(Path(sys.executable).parent))
    assert buf, "buf (the buf-bin wheel) is installed by scripts/setup_env.sh"
    result = subprocess.run([buf, "lint"], cwd=PROTOS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_stubs_carry_every_service():
    from radixfair.v1 import router_pb2, worker_pb2

    assert "WorkerService" in worker_pb2.DESCRIPTOR.services_by_name
    assert "RouterService" in router_pb2.DESCRIPTOR.services_by_name
