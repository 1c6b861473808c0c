"""The two policy registries are the one home of the names; nothing else keeps a list that goes stale.

The worker's scheduler/registry.py and the router's policies/registry.py. Code reads them (the
evaluation lists, each router policy's pairing with a worker policy). Text that cannot import them
either points to its registry instead of listing names (the deploy config comments, the config
fields' comments) or, the CLI help of the torch-free shared package, lists exactly the registry's
names in its order: a policy added to a registry and not there fails here.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from bench.eval import eval_runs
from radixfair.cli import _parser
from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler import registry as scheduler_registry
from radixfair_router.config import PolicyConfig
from radixfair_router.policies import registry as routing_registry

REPO = Path(__file__).resolve().parents[2]
WORKER_NAMES = scheduler_registry.names()
ROUTING_NAMES = routing_registry.names()


def listed(text: str) -> tuple[str, ...]:
    """The names of a list written as ``[prefix: ]a, b, c or d[ (note)].``"""
    text = re.sub(r"\(.*?\)", "", text).strip().rstrip(".").strip()
    text = text.rsplit(":", 1)[-1]
    return tuple(name for name in re.split(r",\s*|\s+or\s+", text.strip()) if name)


def test_the_list_reader_reads_the_comment_forms_used():
    assert listed("Local fair scheduler: fcfs, lpm or dlpm.") == ("fcfs", "lpm", "dlpm")
    assert listed("round_robin, d2lpm or d2lpm_gated (see the registry).") == (
        "round_robin",
        "d2lpm",
        "d2lpm_gated",
    )
    assert listed("One of: fcfs, vtc, dlpm (see scheduler.registry).") == ("fcfs", "vtc", "dlpm")


@pytest.mark.parametrize(
    ("path", "key_line", "registry"),
    [
        ("deploy/config/worker.yaml", "policy: dlpm", scheduler_registry),
        ("deploy/helm/radixfair/values.yaml", "policy: dlpm", scheduler_registry),
        ("deploy/config/router.yaml", "name: d2lpm", routing_registry),
        ("deploy/helm/radixfair/values.yaml", "name: d2lpm", routing_registry),
    ],
)
def test_deploy_config_comments_point_to_their_registry_instead_of_listing_names(path, key_line, registry):
    # The comment ends on the line above the key; a two-line comment starts one line further up.
    lines = (REPO / path).read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == key_line)
    comment = " ".join(
        line.strip().lstrip("# ") for line in lines[index - 2 : index] if line.strip().startswith("#")
    )
    package_path = "/".join(registry.__name__.split(".")[1:]) + ".py"  # scheduler/registry.py
    assert package_path in comment, comment
    assert not set(registry.names()) & set(re.findall(r"[a-z0-9_]+", comment)), comment


@pytest.mark.parametrize(
    ("config", "field", "registry"),
    [(SchedulerConfig, "policy", scheduler_registry), (PolicyConfig, "name", routing_registry)],
)
def test_the_config_fields_that_take_a_name_point_to_their_registry(config, field, registry):
    lines = inspect.getsource(config).splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{field}: str"))
    comment = lines[index - 1].strip()
    assert comment.startswith("#") and "/".join(registry.__name__.split(".")[1:]) + ".py" in comment, comment
    assert not set(registry.names()) & set(re.findall(r"[a-z0-9_]+", comment)), comment


def test_the_cli_policy_help_lists_the_routing_registry():
    up = _parser()._subparsers._group_actions[0].choices["up"]  # type: ignore[union-attr]
    (policy,) = [action for action in up._actions if "--policy" in action.option_strings]
    assert listed(policy.help) == ROUTING_NAMES
    assert policy.default in ROUTING_NAMES


def test_each_routing_policy_pairs_with_a_registered_worker_policy():
    for name, cls in routing_registry.POLICIES.items():
        assert cls.local_policy in WORKER_NAMES, name


def test_the_evaluation_lists_are_the_registries():
    assert eval_runs.LOCAL_POLICIES == WORKER_NAMES
    # Every registered routing policy is evaluated: at its defaults, or under a variant label.
    assert set(eval_runs.ROUTING_POLICIES) | set(eval_runs.ROUTING_VARIANTS) >= set(ROUTING_NAMES)
    for label in (*eval_runs.ROUTING_POLICIES, *eval_runs.ROUTING_VARIANTS):
        policy, _ = eval_runs.routing_settings(label)
        assert policy in ROUTING_NAMES, label
        local, _ = eval_runs.LOCAL_VARIANTS.get(eval_runs.LOCAL_FOR_ROUTING[label], (None, None))
        assert (local or eval_runs.LOCAL_FOR_ROUTING[label]) in WORKER_NAMES, label
