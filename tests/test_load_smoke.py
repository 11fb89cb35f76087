"""``bench.load`` in small: 2 gradio_client users × 3 requests on the overfit tiny engine, no error, no cross-talk."""

from __future__ import annotations

import pytest

from bench.load import ENDPOINTS, User, run, verdict


@pytest.fixture(scope="module")
def users(overfit_photo_files) -> list[User]:
    """User 0 sends the 'noise' photo first, user 1 the 'blur + low light' one (and both, swapped, to /compare)."""
    paths = overfit_photo_files
    known = ("noise", "blur + low light")
    return [User((paths[0], paths[1]), known), User((paths[1], paths[0]), known[::-1])]


def test_two_users_each_get_their_own_answers(trained_tiny, users, tmp_path):
    report = run(trained_tiny, "qground-tiny-overfit", users, requests=3, queue_size=4, deadline_s=300, folder=tmp_path)
    assert report.problems() == [] and len(report.records) == report.planned == 6
    assert {r.endpoint for r in report.records} == set(ENDPOINTS)
    ground = [ref["/ground"] for ref in report.references]
    assert [labels for _, labels, *_ in ground] == [("noise",), ("blur", "low light")]
    assert verdict(report.references, 0, "/ground", ground[1]).startswith("cross-talk: user 0 got user 1's")
    assert report.queue.endswith("the next request succeeded") and report.passed()
