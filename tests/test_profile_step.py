"""experiments/profile_step.py's breakdown of a profiler trace, on a hand-built trace whose
shares are known."""

import pytest

from experiments.profile_step import STEP_EVENT, op_kind, step_breakdown

DEVICE, HOST = (1, 7), (1, 1)


def _event(name, ts, dur, thread=DEVICE):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": thread[0], "tid": thread[1]}


def _trace():
    meta = [{"ph": "M", "name": "thread_name", "pid": 1, "tid": 7,
             "args": {"name": "tf_XLAEigen/123"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "python"}}]
    launches = [_event(STEP_EVENT, ts, 5, HOST) for ts in (0, 100, 200, 300)]
    ops = [_event("ynn_fusion.3", 50, 999)]  # during the skipped (compiling) launch
    for start in (100, 200):
        ops += [_event("ynn_fusion.3", start + 10, 30), _event("transpose_copy_fusion.2",
                                                               start + 50, 10),
                _event("add_divide_fusion", start + 70, 6), _event("all-reduce.1", start + 80, 4),
                _event("ThunkExecutor::Execute", start + 1, 90),
                _event("add_divide_fusion", start + 20, 500, HOST)]
    ops.append(_event("ynn_fusion.3", 310, 999))  # after the last launch: not a whole step
    return {"traceEvents": meta + launches + ops}


def test_the_ops_of_whole_steps_are_shared_by_kind():
    out = step_breakdown(_trace(), skip_steps=1)
    assert out["steps"] == 2
    assert out["ms_per_step"] == pytest.approx(0.05)  # 30 + 10 + 6 + 4 us
    shares = {kind: v["share"] for kind, v in out["kinds"].items()}
    assert shares == {"library conv/dot": 0.6, "transpose/copy": 0.2,
                      "elementwise/reduce": 0.12, "collectives": 0.08}
    assert out["top_ops"][0] == ["ynn_fusion.3", 0.03]


def test_op_kinds_by_hlo_name():
    assert [op_kind(n) for n in ("ynn_fusion.12", "dot.97", "convolution-base-dilated",
                                 "copy.3", "all-reduce.183", "add_multiply_fusion.4",
                                 "ThunkExecutor::Execute", "while")] == [
        "library conv/dot", "xla dot/conv", "xla dot/conv", "transpose/copy", "collectives",
        "elementwise/reduce", None, None]


def test_a_trace_without_enough_steps_is_refused():
    trace = {"traceEvents": [_event(STEP_EVENT, 0, 5)]}
    with pytest.raises(ValueError, match="1 train-step launches; need at least 3"):
        step_breakdown(trace)
