"""The kill campaign's fast subset (benchmarks/kills.py runs 20 kills of each with figures):
`kill -9` of the learner inside a cycle's narrow windows, and of the server under 4 clients."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kills

pytestmark = pytest.mark.campaign


@pytest.fixture(scope="module")
def launcher():
    return kills.Launcher(fork=True)  # one forkserver: each start skips the imports


def _quiet(*_a, **_k) -> None:
    pass


def test_learner_killed_in_a_candidate_and_inside_pruning_loses_nothing(tmp_path, tiny_model_dir, embedder, launcher):
    data = tmp_path / "data"
    data.mkdir()
    verifier = kills.Verifier(data, tiny_model_dir, embedder)
    # a never-evaluated candidate is left, then a prune is cut between deleting a directory and
    # settling its row; each restart must clean up and offer neither
    plan = [("point", "version.policy.recorded", 0.0), ("point", "delete.policy.pruned", 0.0)]
    rep = kills.learner_campaign(len(plan), data, tiny_model_dir, launcher, verifier, plan=plan,
                                 extra_args=("--keep-versions", "1"), say=_quiet)
    assert rep.not_reached == [] and rep.kills == 2
    assert rep.faults == [] and rep.write_errors == [] and rep.survived == 2
    assert rep.acked > 10 and rep.present == rep.acked
    assert rep.published >= 2  # a policy and a reward model were checked to load


def test_server_killed_under_four_clients_loses_no_acknowledged_rating(tmp_path, tiny_model_dir, embedder, launcher):
    data = tmp_path / "data"
    data.mkdir()
    verifier = kills.Verifier(data, tiny_model_dir, embedder)
    rep = kills.server_campaign(2, data, tiny_model_dir, launcher, verifier, clients=4, seed=3, say=_quiet)
    assert rep.kills == 2 and rep.survived == 2
    assert rep.faults == [] and rep.write_errors == []
    assert rep.acked > 4 and rep.present == rep.acked and rep.served > rep.acked
