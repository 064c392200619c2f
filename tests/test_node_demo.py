"""The demo page's JSON, built by hand for speed, is what ``json.dumps`` of its fields gives, byte for byte."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sesh.node.demo import DemoView, demo_json


@pytest.mark.parametrize(
    "view",
    [
        DemoView("node1", "a", "0123456789ABCDEF0123456789ABCDEF-n1.a", 1764645000.123456, 7),
        DemoView("n\u0153d \"x\" \\ \n", "", "X", 0.0, 2**53),
        DemoView("a", "b-c", "c", 1e22, 0),
        DemoView("a", "b", "c", 1764645000.0, -1),
        DemoView("a", "b", "c", float("nan"), 1),  # not finite: the generic encoder's NaN
        DemoView("a", "b", "c", 5, True),  # not a float / not an int: the generic encoder too
    ],
)
def test_demo_json_is_json_dumps_of_the_view(view: DemoView) -> None:
    assert demo_json(view) == json.dumps(dataclasses.asdict(view)).encode()
