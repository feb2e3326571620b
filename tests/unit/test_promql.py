"""vllm_fleet.promql: the selectors and inner vectors the monitoring tests
evaluate on live data, for the shapes the role's rules use."""
from __future__ import annotations

import pytest

from vllm_fleet.promql import inner_vectors, selectors, split_set_operators, strip_threshold


@pytest.mark.parametrize("expr, inner", [
    ('up{job="vllm"} == 0', ['up{job="vllm"}']),
    ('time() - m{job="node"} > 93600', ['time() - m{job="node"}']),
    ('sum by (v) (m{job="node"}) < 1', ['sum by (v) (m{job="node"})']),
    ('up{job="node"} == 1 unless on (instance) b{job="node"}', ['up{job="node"}', 'b{job="node"}']),
    ('(sum by (n) (r{job="vllm"}) > 0) and on (n) (sum by (n) (rate(g[1m])) == 0)',
     ['sum by (n) (r{job="vllm"})', 'sum by (n) (rate(g[1m]))']),
    ('(a / b) > 0.05 and on (node) sum by (node) (rate(c[1m])) > 0.1', ['a / b', 'sum by (node) (rate(c[1m]))']),
    ('x / max by (c) (q{job="gateway"} > 0) >= 0.9', ['x / max by (c) (q{job="gateway"} > 0)']),
    ('m{job!="a", path=~"x>y"} >= 2', ['m{job!="a", path=~"x>y"}']),
    ('histogram_quantile(0.95, sum by (le) (rate(h[1m]))) > 2', ['histogram_quantile(0.95, sum by (le) (rate(h[1m])))']),
    ('m{handler="/x"} > 0 or vector(0)', ['m{handler="/x"}', 'vector(0)']),
])
def test_inner_vectors(expr, inner):
    assert inner_vectors(expr) == inner


def test_words_containing_set_operators_are_not_split():
    assert split_set_operators('candor_total{mode="unless"} > 1') == ['candor_total{mode="unless"} > 1']
    assert strip_threshold("(a) + (b)") == "(a) + (b)"


def test_selectors():
    assert selectors('sum by (node) (rate(a{job="x"}[5m])) / on (node) group_left b > 0.5') == ['a{job="x"}', "b"]
    assert selectors('count by (model) ({__name__=~"vllm:.*"})') == ['{__name__=~"vllm:.*"}']
