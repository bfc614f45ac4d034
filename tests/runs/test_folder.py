"""The run folder's metrics: means over rounds skip what a resumed round could not time."""

import json

import pytest

from hero.runs.folder import RunFolder, mean_seconds


def test_mean_seconds_leaves_out_rounds_that_did_not_time_it(tmp_path):
    run = RunFolder(tmp_path)
    for r, sampling in enumerate([10.0, None, 20.0]):  # round 1 resumed with its images already sampled
        run.append_metrics({"round": r, "seconds_sampling": sampling, "seconds_update": 3.0})
    assert [json.loads(line)["seconds_sampling"] for line in run.metrics_path.read_text().splitlines()] == \
        [10.0, None, 20.0]
    assert mean_seconds(run.metrics(), "seconds_sampling") == pytest.approx(15.0)  # not 10: the null is not a 0
    assert mean_seconds(run.metrics(), "seconds_update") == pytest.approx(3.0)
    assert mean_seconds([], "seconds_update") == 0.0 and mean_seconds(run.metrics(), "seconds_representation") == 0.0
