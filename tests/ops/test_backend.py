"""The forced backend of rspnet.ops._backend: override() and forced()."""
import pytest
import torch

from rspnet.ops import _backend, mixed_sum


def test_forced_sets_and_restores():
    before = _backend.override()
    with _backend.forced("reference"):
        assert _backend.override() == "reference"
        assert _backend.select("mixed_sum", torch.ones(2), None) == "reference"
        with _backend.forced(None):
            assert _backend.override() is None
        assert _backend.override() == "reference"
    assert _backend.override() == before


def test_forced_restores_after_an_error():
    before = _backend.override()
    with pytest.raises(KeyError):
        with _backend.forced("reference"):
            raise KeyError("inside")
    assert _backend.override() == before


def test_forced_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        with _backend.forced("tpu"):
            pass


def test_override_reads_the_current_setting():
    outside = _backend.override()
    with _backend.forced("reference"):
        assert _backend.override() == "reference"
    assert _backend.override() == outside


@pytest.mark.skipif(not _backend.has_kernel("mixed_sum", "CPU"), reason="rspnet._C not built")
def test_compiled_code_follows_forced_without_graph_breaks():
    """torch.compile guards the forced backend: a change recompiles (once),
    and the old graph is reused when the setting is back."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    f = torch.compile(lambda w, xs: mixed_sum(w, xs), backend=backend, fullgraph=True)
    w, xs = torch.randn(2, dtype=torch.float64), [torch.randn(5, dtype=torch.float64) for _ in range(2)]
    with _backend.forced(None):
        f(w, xs)
        with _backend.forced("reference"):
            torch.testing.assert_close(f(w, xs), w[0] * xs[0] + w[1] * xs[1])
        f(w, xs)
    assert len(graphs) == 2
    assert "rspnet.mixed_sum" in graphs[0] and "rspnet" not in graphs[1]


# ---------------------------------------------- the CUDA/Triton choice
# The decision runs on GPUs only; its logic (_decide) is driven here on CPU
# with runners that count their calls and a timer that reports set times.
class FakeClock:
    def __init__(self, times):
        self.times, self.calls = times, []

    def __call__(self, run):
        self.calls.append(run())
        return self.times[self.calls[-1]]


@pytest.fixture
def clean_choices(monkeypatch):
    monkeypatch.setattr(_backend, "_choices", {})
    monkeypatch.setattr(_backend, "_triton_broken", {})
    monkeypatch.setattr(_backend, "_tune", "measure")
    return _backend


def _runners(names=("cuda", "triton")):
    return lambda: {n: (lambda n=n: n) for n in names}


def test_choice_is_timed_once_per_signature_and_recorded(clean_choices, monkeypatch):
    clock = FakeClock({"cuda": 2.0, "triton": 1.0})
    monkeypatch.setattr(_backend, "_time_cuda", clock)
    dev = torch.device("cpu")
    pick = lambda key: _backend._decide("mixed_sum", dev, torch.float32, ["cuda", "triton"], key, _runners())
    assert pick(((8,), (1,))) == "triton"
    assert pick(((8,), (1,))) == "triton"
    assert clock.calls == ["cuda", "triton"]  # the second call reused the recorded choice
    clock.times = {"cuda": 1.0, "triton": 2.0}
    assert pick(lambda: ((8,), (1,), 3)) == "cuda"  # another signature (a lazy key) is timed again
    assert len(clock.calls) == 4
    assert set(_backend.choices().values()) == {"cuda", "triton"}


@pytest.mark.parametrize("refusal", ["tune_off", "deterministic"])
def test_choice_is_fixed_where_timing_is_refused(clean_choices, monkeypatch, refusal):
    clock = FakeClock({"cuda": 2.0, "triton": 1.0})
    monkeypatch.setattr(_backend, "_time_cuda", clock)
    if refusal == "tune_off":
        _backend.set_tuning("off")
    else:
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    dev = torch.device("cpu")
    assert _backend.measuring_refused(dev) in ("RSPNET_TUNE=off", "deterministic algorithms are on")
    assert _backend._decide("mixed_sum", dev, torch.float32, ["cuda", "triton"], (), _runners()) == "cuda"
    assert clock.calls == [] and _backend.choices() == {}


def test_choice_is_never_timed_while_compiling(clean_choices, monkeypatch):
    clock = FakeClock({"cuda": 2.0, "triton": 1.0})
    monkeypatch.setattr(_backend, "_time_cuda", clock)
    seen = []

    def f(x):
        seen.append(_backend.measuring_refused(x.device))
        return x + 1

    torch.compile(f, backend="eager", fullgraph=True)(torch.ones(2))
    assert seen == ["torch.compile is tracing"]
    assert clock.calls == []


def test_choice_is_timed_by_the_shared_clock(monkeypatch):
    """The CUDA/Triton timer is ``timing.best_ms`` on CUDA events: the best
    of 3 batches of 5 calls (tests/ops/test_timing.py checks its arithmetic)."""
    seen = []
    monkeypatch.setattr(_backend.timing, "best_ms", lambda run, **kw: seen.append((run, kw)) or 1.5)
    run = lambda: None  # noqa: E731
    assert _backend._time_cuda(run) == 1.5
    assert seen == [(run, {"batch": 5, "repeats": 3, "cuda": True})]


def test_set_tuning_rejects_unknown_mode():
    with pytest.raises(ValueError, match="tuning must be one of measure, off"):
        _backend.set_tuning("fast")


def test_failing_triton_is_left_out_of_the_timing(clean_choices, monkeypatch):
    def timer(run):
        return run()

    def broken():
        raise RuntimeError("PassManager::run failed\nlong details")

    with pytest.warns(RuntimeWarning, match="mixed_sum: the Triton kernel failed .RuntimeError: PassManager::run"):
        assert _backend._fastest("mixed_sum", {"cuda": lambda: 3.0, "triton": broken}, timer) == "cuda"
    assert "mixed_sum" in _backend._triton_broken


def test_automatic_triton_failure_falls_back_and_warns_once(clean_choices):
    x = torch.ones(3)
    calls = []

    def triton():
        calls.append("triton")
        raise RuntimeError("triton compile error")

    impls = {"triton": triton, "reference": lambda: calls.append("reference") or "ref"}
    with pytest.warns(RuntimeWarning, match="using the reference implementation instead"):
        assert _backend.call("path_fusion", "triton", True, impls, x) == "ref"
    assert calls == ["triton", "reference"]
    # A forced or requested Triton kernel that fails raises: the caller asked for it.
    with pytest.raises(RuntimeError, match="triton compile error"):
        _backend.call("path_fusion", "triton", False, impls, x)
    assert _backend.automatic(None) == (_backend.override() is None)
    assert not _backend.automatic("triton")


def test_status_reports_tuning_and_choices(clean_choices, monkeypatch):
    monkeypatch.setattr(_backend, "_time_cuda", FakeClock({"cuda": 1.0, "triton": 2.0}))
    _backend._decide("channel_merge", torch.device("cpu"), torch.float16, ["cuda", "triton"], ((1,), 2), _runners())
    st = _backend.status()
    assert st["tuning"] == "measure"
    assert st["choices"] == {"channel_merge cpu torch.float16 ((1,), 2)": "cuda"}


@pytest.mark.gpu
def test_gpu_choice_is_recorded_per_signature_and_never_timed_in_graph_capture(clean_choices):
    if not (_backend.can_run("cuda", "mixed_sum", torch.device("cuda"), torch.float32)[0]
            and _backend.can_run("triton", "mixed_sum", torch.device("cuda"), torch.float32)[0]):
        pytest.skip("needs both the CUDA and the Triton kernels")
    w = torch.randn(3, device="cuda")
    xs = [torch.randn(4, 5, device="cuda") for _ in range(3)]
    torch.testing.assert_close(mixed_sum(w, xs), sum(wi * x for wi, x in zip(w, xs)))
    keys = [k for k in _backend.choices() if k[0] == "mixed_sum"]
    assert len(keys) == 1 and keys[0][3] == _backend.signature(xs)
    # A new signature inside a CUDA graph capture: no timing (it would
    # synchronise and break the capture), the fixed default, nothing recorded.
    xs2 = [torch.randn(6, 7, device="cuda") for _ in range(3)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        mixed_sum(w, xs2, backend="cuda")  # warm-up outside the capture
        with torch.cuda.graph(graph, stream=stream):
            y = mixed_sum(w, xs2)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, sum(wi * x for wi, x in zip(w, xs2)))
    assert len([k for k in _backend.choices() if k[0] == "mixed_sum"]) == 1
